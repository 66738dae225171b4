#include "engine/guest/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu {

namespace {

// Validates sizes/alignment and sorts; rejects overlap and 64-bit wrap.
Status validate(std::vector<GuestMemory::Region>& regions) {
    if (regions.empty()) return make_error(EINVAL, "guest memory: no regions");
    for (const auto& r : regions) {
        if (r.size == 0) return make_error(EINVAL, "guest memory: zero-sized region");
        if (!page_aligned(r.base) || !page_aligned(r.size) || !page_aligned(r.fd_offset)) {
            return make_error(EINVAL, fmt::format("guest memory: region gpa {:#x} size {:#x} not 4 KiB aligned",
                                                  raw(r.base), r.size));
        }
        // The last byte must be addressable: base + size may equal 2^64 only if we could
        // represent the end, which we cannot; refuse it like an overflow.
        if (!checked_add(r.base, r.size)) {
            return make_error(EOVERFLOW,
                              fmt::format("guest memory: region gpa {:#x} size {:#x} overflows", raw(r.base), r.size));
        }
    }
    std::sort(regions.begin(), regions.end(), [](const auto& a, const auto& b) { return raw(a.base) < raw(b.base); });
    for (size_t i = 1; i < regions.size(); ++i) {
        const auto& prev = regions[i - 1];
        if (raw(prev.base) + prev.size > raw(regions[i].base)) {
            return make_error(EINVAL, fmt::format("guest memory: regions at {:#x} and {:#x} overlap", raw(prev.base),
                                                  raw(regions[i].base)));
        }
    }
    return ok();
}

}  // namespace

Result<GuestMemory> GuestMemory::create(std::span<const RegionSpec> specs) {
    std::vector<Region> regions;
    regions.reserve(specs.size());
    for (const auto& s : specs) regions.push_back(Region{s.base, s.size, nullptr, UniqueFd(), 0});
    COIOMMU_TRY(validate(regions));

    for (auto& r : regions) {
        const std::string name = fmt::format("coiommu-guest-{:x}", raw(r.base));
        const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) return make_error(errno, "memfd_create");
        r.fd.reset(fd);
        if (::ftruncate(fd, static_cast<off_t>(r.size)) < 0) return make_error(errno, "ftruncate guest memfd");
        // Nobody may shrink the file under a mapping (that would turn guest accesses into SIGBUS).
        if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
            return make_error(errno, "seal guest memfd");
        }
    }
    return map_all(std::move(regions));
}

Result<GuestMemory> GuestMemory::adopt(std::vector<AdoptedRegion> adopted) {
    std::vector<Region> regions;
    regions.reserve(adopted.size());
    for (auto& a : adopted) {
        if (!a.fd.valid()) return make_error(EBADF, "guest memory: invalid region fd");
        regions.push_back(Region{a.base, a.size, nullptr, std::move(a.fd), a.fd_offset});
    }
    COIOMMU_TRY(validate(regions));
    for (auto& r : regions) {
        struct stat sb {};
        if (::fstat(r.fd.get(), &sb) < 0) return make_error(errno, "fstat guest region fd");
        uint64_t need = 0;
        if (__builtin_add_overflow(r.fd_offset, r.size, &need) || static_cast<uint64_t>(sb.st_size) < need) {
            return make_error(EINVAL, fmt::format("guest memory: fd of region {:#x} is {} bytes, need {}", raw(r.base),
                                                  sb.st_size, need));
        }
        // A peer that shrinks the file later would make our accesses fault with SIGBUS. Seal it
        // when the fd allows; otherwise say so (the daemon may refuse such regions).
        if (::fcntl(r.fd.get(), F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
            const int err = errno;
            const int seals = ::fcntl(r.fd.get(), F_GET_SEALS);
            if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
                CLOG_WARN("guest",
                          "region {:#x}: cannot seal against shrinking ({}); a peer that shrinks it "
                          "could crash this process",
                          raw(r.base), err);
            }
        }
    }
    return map_all(std::move(regions));
}

Result<GuestMemory> GuestMemory::map_all(std::vector<Region> regions) {
    GuestMemory mem;
    for (auto& r : regions) {
        void* p =
            ::mmap(nullptr, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd.get(), static_cast<off_t>(r.fd_offset));
        if (p == MAP_FAILED) return make_error(errno, fmt::format("mmap guest region {:#x}", raw(r.base)));
        r.host = static_cast<std::byte*>(p);
        mem.total_bytes_ += r.size;
        mem.end_ = Gpa{std::max(raw(mem.end_), raw(r.base) + r.size)};
        mem.regions_.push_back(std::move(r));  // owned from here: unmapped by the destructor
    }
    return mem;
}

GuestMemory::~GuestMemory() { unmap_all(); }

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : regions_(std::move(other.regions_)), total_bytes_(other.total_bytes_), end_(other.end_) {
    other.regions_.clear();
    other.total_bytes_ = 0;
    other.end_ = Gpa{};
}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
    if (this != &other) {
        unmap_all();
        regions_ = std::move(other.regions_);
        total_bytes_ = other.total_bytes_;
        end_ = other.end_;
        other.regions_.clear();
        other.total_bytes_ = 0;
        other.end_ = Gpa{};
    }
    return *this;
}

void GuestMemory::unmap_all() {
    for (auto& r : regions_) {
        if (r.host != nullptr) ::munmap(r.host, r.size);
        r.host = nullptr;
    }
    regions_.clear();
}

const GuestMemory::Region* GuestMemory::find(Gpa gpa) const {
    // Regions are sorted and few (usually 1-3); a binary search keeps large tables cheap too.
    auto it = std::upper_bound(regions_.begin(), regions_.end(), raw(gpa),
                               [](uint64_t g, const Region& r) { return g < raw(r.base); });
    if (it == regions_.begin()) return nullptr;
    --it;
    if (raw(gpa) - raw(it->base) >= it->size) return nullptr;
    return &*it;
}

bool GuestMemory::contains(Gpa gpa, uint64_t len) const {
    const Region* r = find(gpa);
    if (r == nullptr) return false;
    const uint64_t off = raw(gpa) - raw(r->base);
    return len <= r->size - off;
}

Result<std::byte*> GuestMemory::host_ptr(Gpa gpa, uint64_t len) const {
    const Region* r = find(gpa);
    if (r == nullptr || len > r->size - (raw(gpa) - raw(r->base))) {
        return make_error(EFAULT, fmt::format("gpa {:#x} len {:#x} outside guest RAM", raw(gpa), len));
    }
    return r->host + (raw(gpa) - raw(r->base));
}

Result<Hva> GuestMemory::translate(Gpa gpa, uint64_t len) const {
    auto p = host_ptr(gpa, len);
    if (!p) return coiommu::unexpected(p.error());
    return Hva{reinterpret_cast<uintptr_t>(*p)};
}

Result<GuestAtomicU32> GuestMemory::atomic_u32(Gpa gpa) const {
    if ((raw(gpa) & 3u) != 0) return make_error(EINVAL, fmt::format("unaligned 32-bit guest word at {:#x}", raw(gpa)));
    auto p = host_ptr(gpa, sizeof(uint32_t));
    if (!p) return coiommu::unexpected(p.error());
    // Safety: the region base is page aligned and gpa is 4-aligned, so the host address is too.
    return GuestAtomicU32(reinterpret_cast<uint32_t*>(*p));
}

Result<GuestAtomicU64> GuestMemory::atomic_u64(Gpa gpa) const {
    if ((raw(gpa) & 7u) != 0) return make_error(EINVAL, fmt::format("unaligned 64-bit guest word at {:#x}", raw(gpa)));
    auto p = host_ptr(gpa, sizeof(uint64_t));
    if (!p) return coiommu::unexpected(p.error());
    return GuestAtomicU64(reinterpret_cast<uint64_t*>(*p));
}

std::vector<RegionLayout> GuestMemory::layout() const {
    std::vector<RegionLayout> out;
    out.reserve(regions_.size());
    for (const auto& r : regions_) out.push_back(RegionLayout{r.base, r.size, r.fd.get(), r.fd_offset});
    return out;
}

std::vector<GfnRange> GuestMemory::ram_ranges() const {
    std::vector<GfnRange> out;
    out.reserve(regions_.size());
    for (const Region& r : regions_) out.push_back(GfnRange{to_gfn(r.base), r.size >> kPageShift});
    return out;
}

}  // namespace coiommu
