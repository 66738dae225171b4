#include "engine/dma/host_record.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace coiommu::dma {
namespace {

// 2^40 gfns is a 4 PiB guest: far beyond any policy, and keeps the record's size arithmetic exact.
constexpr uint64_t kMaxRecordGfns = uint64_t{1} << 40;
constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW;

constexpr uint32_t kStateShift = 30;
constexpr uint32_t kPagesMask = (uint32_t{1} << kStateShift) - 1;

[[nodiscard]] constexpr uint32_t encode(RecordState s, uint64_t pages) {
    return (static_cast<uint32_t>(s) << kStateShift) | static_cast<uint32_t>(pages & kPagesMask);
}

Result<void*> map_shared(int fd, uint64_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return make_error(errno, fmt::format("mmap host record ({} bytes)", bytes));
    return p;
}

bool valid_device_gen(uint64_t gen) { return gen < (uint64_t{1} << 62); }

}  // namespace

uint64_t record_bytes(uint64_t gfn_count) {
    return (kRecordHeaderBytes + gfn_count * sizeof(uint32_t) + kPageMask) & ~kPageMask;
}

Result<HostRecord> HostRecord::create(uint64_t gfn_count) {
    if (gfn_count == 0 || gfn_count > kMaxRecordGfns) {
        return make_error(EINVAL, fmt::format("host record: {} gfns (1..2^40)", gfn_count));
    }
    UniqueFd fd(::memfd_create("coiommu-record", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return make_error(errno, "memfd_create host record");
    const uint64_t bytes = record_bytes(gfn_count);
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return make_error(errno, "ftruncate host record");
    if (::fcntl(fd.get(), F_ADD_SEALS, kSeals) != 0) return make_error(errno, "seal host record");
    COIOMMU_ASSIGN_OR_RETURN(void* base, map_shared(fd.get(), bytes));
    HostRecord r(std::move(fd), base, bytes, gfn_count);
    // The header is written once, before the fd is handed to anyone.
    RecordHeader h;
    h.gfn_count = gfn_count;
    std::memcpy(r.header(), &h, sizeof h);
    return r;
}

Result<HostRecord> HostRecord::adopt(UniqueFd fd, uint64_t gfn_count) {
    if (!fd) return make_error(EBADF, "host record: no fd");
    if (gfn_count == 0 || gfn_count > kMaxRecordGfns) {
        return make_error(EINVAL, fmt::format("host record: {} gfns (1..2^40)", gfn_count));
    }
    const int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (seals < 0 || (seals & kSeals) != kSeals) {
        return make_error(EINVAL, "host record: not a memfd sealed against shrinking and growing");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return make_error(errno, "fstat host record");
    const uint64_t bytes = record_bytes(gfn_count);
    if (static_cast<uint64_t>(st.st_size) != bytes) {
        return make_error(
            EINVAL, fmt::format("host record: {} bytes, a guest of {} gfns needs {}", st.st_size, gfn_count, bytes));
    }
    COIOMMU_ASSIGN_OR_RETURN(void* base, map_shared(fd.get(), bytes));
    HostRecord r(std::move(fd), base, bytes, gfn_count);
    RecordHeader h;
    std::memcpy(&h, r.header(), sizeof h);
    if (h.magic != kRecordMagic || h.version != kRecordVersion || h.entry_bytes != sizeof(uint32_t)) {
        return make_error(EINVAL, fmt::format("host record: bad header (magic {:#x}, version {}, entry {} bytes)",
                                              h.magic, h.version, h.entry_bytes));
    }
    if (h.gfn_count != gfn_count) {
        return make_error(EINVAL,
                          fmt::format("host record: made for {} gfns, this guest has {}", h.gfn_count, gfn_count));
    }
    if (!valid_device_gen(h.device_gen)) return make_error(EINVAL, "host record: bad device generation");
    return r;
}

HostRecord::~HostRecord() {
    if (base_ != nullptr) ::munmap(base_, bytes_);
}

HostRecord::HostRecord(HostRecord&& other) noexcept
    : fd_(std::move(other.fd_)),
      base_(std::exchange(other.base_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      gfn_count_(std::exchange(other.gfn_count_, 0)) {}

HostRecord& HostRecord::operator=(HostRecord&& other) noexcept {
    if (this != &other) {
        if (base_ != nullptr) ::munmap(base_, bytes_);
        fd_ = std::move(other.fd_);
        base_ = std::exchange(other.base_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
        gfn_count_ = std::exchange(other.gfn_count_, 0);
    }
    return *this;
}

void HostRecord::set(Gfn head, RecordState state, uint64_t pages) {
    // Release: the stores before this one (the previous state of the protocol) are in the page
    // cache first; a process killed after it leaves exactly this word for its successor. The
    // memfd page is shared with the VMM, which only ever hands it back.
    std::atomic_ref<uint32_t>(entries()[raw(head)])
        .store(state == RecordState::Free ? 0 : encode(state, pages), std::memory_order_release);
}

RecordState HostRecord::state(Gfn head) const {
    const uint32_t w = std::atomic_ref<uint32_t>(entries()[raw(head)]).load(std::memory_order_acquire);
    return static_cast<RecordState>(w >> kStateShift);
}

Result<std::vector<RecordedExtent>> HostRecord::extents(std::span<const GfnRange> ram) const {
    std::vector<GfnRange> sorted(ram.begin(), ram.end());
    std::sort(sorted.begin(), sorted.end(), [](const GfnRange& a, const GfnRange& b) { return a.start < b.start; });
    auto in_ram = [&](uint64_t first, uint64_t count) {
        // The region with the greatest start <= first must hold the whole extent (never across a hole).
        auto it = std::upper_bound(sorted.begin(), sorted.end(), first,
                                   [](uint64_t g, const GfnRange& r) { return g < raw(r.start); });
        if (it == sorted.begin()) return false;
        --it;
        return first - raw(it->start) < it->count && count <= it->count - (first - raw(it->start));
    };
    std::vector<RecordedExtent> out;
    const uint64_t first_byte = kRecordHeaderBytes;
    const uint64_t end_byte = kRecordHeaderBytes + gfn_count_ * sizeof(uint32_t);
    uint64_t covered_end = 0;  // first gfn after the last extent accepted
    uint64_t pos = first_byte;
    while (pos < end_byte) {
        // Only the pages the daemon ever wrote hold data; skip the holes without faulting them in.
        const off_t data = ::lseek(fd_.get(), static_cast<off_t>(pos), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // no data after pos
            return make_error(errno, "lseek(SEEK_DATA) host record");
        }
        off_t hole = ::lseek(fd_.get(), data, SEEK_HOLE);
        if (hole < 0) return make_error(errno, "lseek(SEEK_HOLE) host record");
        const uint64_t lo = std::max<uint64_t>(static_cast<uint64_t>(data), first_byte);
        const uint64_t hi = std::min<uint64_t>(static_cast<uint64_t>(hole), end_byte);
        for (uint64_t b = (lo + 3) & ~uint64_t{3}; b + sizeof(uint32_t) <= hi; b += sizeof(uint32_t)) {
            const uint64_t gfn = (b - first_byte) / sizeof(uint32_t);
            // Acquire, once per word: the record's writer is dead (or this is a fuzzer), and each
            // word is judged from this single read.
            const uint32_t w = std::atomic_ref<uint32_t>(entries()[gfn]).load(std::memory_order_acquire);
            if (w == 0) continue;
            const auto state = static_cast<RecordState>(w >> kStateShift);
            const uint64_t pages = w & kPagesMask;
            // The writer stores a free entry as 0 (set()): a free state with pages is forged.
            if (state == RecordState::Free) {
                return make_error(EINVAL,
                                  fmt::format("host record: entry at gfn {:#x} is free but has {} pages", gfn, pages));
            }
            if (pages == 0 || pages > gfn_count_ - gfn) {
                return make_error(EINVAL, fmt::format("host record: entry at gfn {:#x} has {} pages", gfn, pages));
            }
            if (gfn < covered_end) {
                return make_error(EINVAL,
                                  fmt::format("host record: entry at gfn {:#x} overlaps the extent before it", gfn));
            }
            if (!in_ram(gfn, pages)) {
                return make_error(EINVAL,
                                  fmt::format("host record: extent {:#x}+{} is not inside guest RAM", gfn, pages));
            }
            covered_end = gfn + pages;
            out.push_back(RecordedExtent{Gfn{gfn}, pages, state});
        }
        pos = std::max<uint64_t>(static_cast<uint64_t>(hole), pos + 1);
    }
    return out;
}

RecordedDevice HostRecord::device() const {
    // Acquire pairs with set_device's release: the copy it names was written whole before.
    const uint64_t gen = std::atomic_ref<uint64_t>(header()->device_gen).load(std::memory_order_acquire);
    RecordedDevice d;
    if (gen == 0) return d;
    std::memcpy(&d, &header()->device[gen & 1], sizeof d);
    return d;
}

void HostRecord::set_device(const RecordedDevice& d) {
    auto gen_ref = std::atomic_ref<uint64_t>(header()->device_gen);
    const uint64_t next = gen_ref.load(std::memory_order_relaxed) + 1;
    // The copy `next` selects is not the current one, so a kill mid-copy leaves the current intact.
    std::memcpy(&header()->device[next & 1], &d, sizeof d);
    gen_ref.store(next, std::memory_order_release);
}

Status RecordingBackend::check(Iova iova, uint64_t size) const {
    if (size == 0 || ((raw(iova) | size) & kPageMask) != 0) {
        return make_error(EINVAL, fmt::format("recorded DMA call {:#x}+{:#x}: not page aligned", raw(iova), size));
    }
    const uint64_t head = raw(iova) >> kPageShift;
    const uint64_t pages = size >> kPageShift;
    if (pages > kRecordMaxPages || head >= record_.gfn_count() || pages > record_.gfn_count() - head) {
        return make_error(EINVAL,
                          fmt::format("recorded DMA call {:#x}+{:#x}: outside the host record", raw(iova), size));
    }
    return ok();
}

Result<MapOutcome> RecordingBackend::map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    COIOMMU_TRY(check(iova, size));
    const Gfn head{raw(iova) >> kPageShift};
    const uint64_t pages = size >> kPageShift;
    record_.set(head, RecordState::Mapping, pages);
    auto r = inner_.map(iova, hva, size, prot);
    const bool mapped = r && *r == MapOutcome::Mapped;
    record_.set(head, mapped ? RecordState::Mapped : RecordState::Free, pages);
    return r;
}

Result<uint64_t> RecordingBackend::unmap(Iova iova, uint64_t size) {
    COIOMMU_TRY(check(iova, size));
    const Gfn head{raw(iova) >> kPageShift};
    const uint64_t pages = size >> kPageShift;
    record_.set(head, RecordState::Unmapping, pages);
    auto r = inner_.unmap(iova, size);
    // A failed unmap left the mapping where it was (type1 and iommufd unmap all or nothing of an
    // exact extent), and the engine keeps it recorded as mapped: so does the record.
    record_.set(head, r ? RecordState::Free : RecordState::Mapped, pages);
    return r;
}

Result<ReconcileReport> reconcile(HostRecord& record, DmaBackend& backend, std::span<const GfnRange> ram) {
    COIOMMU_ASSIGN_OR_RETURN(auto all, record.extents(ram), "resume");
    ReconcileReport rep;
    for (const RecordedExtent& e : all) {
        if (e.state == RecordState::Mapped) {
            rep.adopted.push_back(e);
            continue;
        }
        // Mapping or Unmapping: the call may or may not have happened. An exact unmap of the range
        // answers both: the whole size (it had) or 0 (it had not). The engine never maps over or
        // bisects an extent, so anything else means the record does not describe this container.
        const uint64_t size = e.pages << kPageShift;
        COIOMMU_ASSIGN_OR_RETURN(const uint64_t removed, backend.unmap(Iova{raw(e.head) << kPageShift}, size),
                                 "resume: settle extent {:#x}+{}", raw(e.head), e.pages);
        if (removed != 0 && removed != size) {
            return make_error(EIO, fmt::format("resume: settling extent {:#x}+{} removed {:#x} of {:#x} bytes",
                                               raw(e.head), e.pages, removed, size));
        }
        record.set(e.head, RecordState::Free, e.pages);
        ++rep.rolled_back;
        rep.rolled_back_bytes += removed;
    }
    return rep;
}

Result<RecordAudit> audit(const HostRecord& record, std::span<const GfnRange> ram, std::span<const LiveMapping> live) {
    COIOMMU_ASSIGN_OR_RETURN(std::vector<RecordedExtent> entries, record.extents(ram));
    // Both lists ascending by head (extents() sorts; the backend's may not be): a merge.
    std::vector<LiveMapping> maps(live.begin(), live.end());
    std::sort(maps.begin(), maps.end(),
              [](const LiveMapping& a, const LiveMapping& b) { return raw(a.iova) < raw(b.iova); });
    RecordAudit a;
    std::size_t m = 0;
    for (const RecordedExtent& e : entries) {
        const uint64_t head = raw(e.head) << kPageShift;
        for (; m < maps.size() && raw(maps[m].iova) < head; ++m) ++a.orphans;
        const bool held = m < maps.size() && raw(maps[m].iova) == head && maps[m].size == e.pages << kPageShift;
        if (e.state == RecordState::Mapped) {
            ++a.mapped_extents;
            a.mapped_pages += e.pages;
            if (!held) ++a.missing;
        } else {
            ++a.in_progress;
        }
        if (m < maps.size() && raw(maps[m].iova) == head) {
            if (!held) ++a.orphans;  // a mapping at the head, but not of the recorded length
            ++m;
        }
    }
    a.orphans += maps.size() - m;
    return a;
}

}  // namespace coiommu::dma
