#include "engine/dma/iommufd_backend.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <utility>

#include <fmt/format.h>

namespace coiommu::dma {
namespace {

// ---- the uAPI, from the kernel ABI (<linux/iommufd.h>, 6.2+; VFIO cdev ioctls, 6.6+) ----------
// Every iommufd ioctl is _IO(';', 0x80 + n) with the struct's size in its first u32; the VFIO
// cdev ones are VFIO_BASE + 18 / + 19 with argsz first.
constexpr unsigned kIommufdType = ';';
constexpr unsigned long kIoasAlloc = _IO(kIommufdType, 0x81);
constexpr unsigned long kIoasIovaRanges = _IO(kIommufdType, 0x84);
constexpr unsigned long kIoasMap = _IO(kIommufdType, 0x85);
constexpr unsigned long kIoasUnmap = _IO(kIommufdType, 0x86);
constexpr unsigned long kDeviceBindIommufd = _IO(VFIO_TYPE, VFIO_BASE + 18);
constexpr unsigned long kDeviceAttachPt = _IO(VFIO_TYPE, VFIO_BASE + 19);

constexpr uint32_t kMapFixedIova = 1u << 0;
constexpr uint32_t kMapWriteable = 1u << 1;
constexpr uint32_t kMapReadable = 1u << 2;

struct IoasAlloc {
    uint32_t size = sizeof(IoasAlloc);
    uint32_t flags = 0;
    uint32_t out_ioas_id = 0;
};
struct IovaRangeWire {
    uint64_t start = 0;
    uint64_t last = 0;  // inclusive
};
struct IoasIovaRanges {
    uint32_t size = sizeof(IoasIovaRanges);
    uint32_t ioas_id = 0;
    uint32_t num_iovas = 0;
    uint32_t reserved = 0;
    uint64_t allowed_iovas = 0;  // user pointer to IovaRangeWire[num_iovas]
    uint64_t out_iova_alignment = 0;
};
struct IoasMap {
    uint32_t size = sizeof(IoasMap);
    uint32_t flags = 0;
    uint32_t ioas_id = 0;
    uint32_t reserved = 0;
    uint64_t user_va = 0;
    uint64_t length = 0;
    uint64_t iova = 0;
};
struct IoasUnmap {
    uint32_t size = sizeof(IoasUnmap);
    uint32_t ioas_id = 0;
    uint64_t iova = 0;
    uint64_t length = 0;  // in: bytes to unmap; out: bytes unmapped
};
struct DeviceBindIommufd {
    uint32_t argsz = sizeof(DeviceBindIommufd);
    uint32_t flags = 0;
    int32_t iommufd = -1;
    uint32_t out_devid = 0;
};
struct DeviceAttachPt {
    uint32_t argsz = sizeof(DeviceAttachPt);
    uint32_t flags = 0;
    uint32_t pt_id = 0;
};
static_assert(sizeof(IoasAlloc) == 12 && offsetof(IoasAlloc, out_ioas_id) == 8);
static_assert(sizeof(IovaRangeWire) == 16);
static_assert(sizeof(IoasIovaRanges) == 32 && offsetof(IoasIovaRanges, allowed_iovas) == 16 &&
              offsetof(IoasIovaRanges, out_iova_alignment) == 24);
static_assert(sizeof(IoasMap) == 40 && offsetof(IoasMap, user_va) == 16 && offsetof(IoasMap, iova) == 32);
static_assert(sizeof(IoasUnmap) == 24 && offsetof(IoasUnmap, iova) == 8 && offsetof(IoasUnmap, length) == 16);
static_assert(sizeof(DeviceBindIommufd) == 16 && offsetof(DeviceBindIommufd, out_devid) == 12);
static_assert(sizeof(DeviceAttachPt) == 12 && offsetof(DeviceAttachPt, pt_id) == 8);

// A chain of more ranges than this is not a real IOMMU's (VT-d reports a handful).
constexpr uint32_t kMaxRanges = 64;

}  // namespace

IommufdBackend::IommufdBackend(UniqueFd iommufd, UniqueFd device, uint32_t ioas_id, uint32_t device_id)
    : iommufd_(std::move(iommufd)), device_(std::move(device)), ioas_id_(ioas_id), device_id_(device_id) {}

IommufdBackend::~IommufdBackend() = default;

Result<std::unique_ptr<IommufdBackend>> IommufdBackend::open_device(const std::string& cdev_path,
                                                                    const std::string& iommu_path) {
    const std::string ctx = "iommufd open_device " + cdev_path;
    UniqueFd iommufd(::open(iommu_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!iommufd) return make_error(errno, fmt::format("{}: open {} (a kernel with iommufd?)", ctx, iommu_path));
    UniqueFd device(::open(cdev_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!device) return make_error(errno, ctx + ": open");

    DeviceBindIommufd bind;
    bind.iommufd = iommufd.get();
    if (::ioctl(device.get(), kDeviceBindIommufd, &bind) < 0)
        return make_error(errno, ctx + ": VFIO_DEVICE_BIND_IOMMUFD");
    IoasAlloc alloc;
    if (::ioctl(iommufd.get(), kIoasAlloc, &alloc) < 0) return make_error(errno, ctx + ": IOMMU_IOAS_ALLOC");
    DeviceAttachPt attach;
    attach.pt_id = alloc.out_ioas_id;
    if (::ioctl(device.get(), kDeviceAttachPt, &attach) < 0) {
        return make_error(errno, ctx + ": VFIO_DEVICE_ATTACH_IOMMUFD_PT");
    }
    std::unique_ptr<IommufdBackend> b(
        new IommufdBackend(std::move(iommufd), std::move(device), alloc.out_ioas_id, bind.out_devid));
    // The attach narrowed the IOAS to what the device's IOMMU can reach: check it answers.
    if (auto r = b->iova_ranges(); !r) return coiommu::unexpected(with_context(r.error(), ctx));
    return b;
}

Result<std::unique_ptr<IommufdBackend>> IommufdBackend::adopt(UniqueFd iommufd, uint32_t ioas_id) {
    if (!iommufd) return make_error(EBADF, "iommufd adopt: invalid fd");
    std::unique_ptr<IommufdBackend> b(new IommufdBackend(std::move(iommufd), UniqueFd{}, ioas_id, 0));
    if (auto r = b->iova_ranges(); !r) {
        return coiommu::unexpected(with_context(r.error(), fmt::format("iommufd adopt (IOAS {})", ioas_id)));
    }
    return b;
}

Result<std::vector<IovaRange>> IommufdBackend::iova_ranges(uint64_t* alignment) const {
    std::vector<IovaRangeWire> wire(8);
    for (int attempt = 0; attempt < 3; ++attempt) {
        IoasIovaRanges q;
        q.ioas_id = ioas_id_;
        q.num_iovas = static_cast<uint32_t>(wire.size());
        q.allowed_iovas = reinterpret_cast<uintptr_t>(wire.data());
        if (::ioctl(iommufd_.get(), kIoasIovaRanges, &q) < 0) {
            const int err = errno;
            // EMSGSIZE: the array was too small; num_iovas says how many there are.
            if (err == EMSGSIZE && q.num_iovas > wire.size() && q.num_iovas <= kMaxRanges) {
                wire.resize(q.num_iovas);
                continue;
            }
            return make_error(err, fmt::format("iommufd IOMMU_IOAS_IOVA_RANGES (IOAS {})", ioas_id_));
        }
        if (q.num_iovas > wire.size()) return make_error(EPROTO, "iommufd IOMMU_IOAS_IOVA_RANGES: bad range count");
        if (alignment != nullptr) *alignment = q.out_iova_alignment;
        std::vector<IovaRange> out;
        out.reserve(q.num_iovas);
        for (uint32_t i = 0; i < q.num_iovas; ++i) out.push_back(IovaRange{wire[i].start, wire[i].last});
        return out;
    }
    return make_error(EPROTO, "iommufd IOMMU_IOAS_IOVA_RANGES: the range count keeps growing");
}

Result<MapOutcome> IommufdBackend::map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    const auto prot_bits = static_cast<uint32_t>(prot);
    if ((prot_bits & ~static_cast<uint32_t>(Prot::ReadWrite)) != 0) return finish_map(EINVAL, iova, size, "bad prot");
    IoasMap m;
    m.flags = kMapFixedIova | (has_read(prot) ? kMapReadable : 0u) | (has_write(prot) ? kMapWriteable : 0u);
    m.ioas_id = ioas_id_;
    m.user_va = raw(hva);
    m.length = size;
    m.iova = raw(iova);
    int err = ::ioctl(iommufd_.get(), kIoasMap, &m) < 0 ? errno : 0;
    // iommufd has no entry limit: its capacity ends where the pinned pages exceed the locked-memory
    // accounting, which it reports as ENOMEM. That is the container being full: NoSpace.
    if (err == ENOMEM) err = ENOSPC;
    if (err == 0) live_.fetch_add(1, std::memory_order_relaxed);
    return finish_map(err, iova, size);
}

Result<uint64_t> IommufdBackend::unmap(Iova iova, uint64_t size) {
    IoasUnmap u;
    u.ioas_id = ioas_id_;
    u.iova = raw(iova);
    u.length = size;
    int err = ::ioctl(iommufd_.get(), kIoasUnmap, &u) < 0 ? errno : 0;
    uint64_t bytes = err == 0 ? u.length : 0;
    // ENOENT: nothing mapped in the range, or the range would split a mapping. Either way nothing
    // was removed (type1 answers 0 bytes and EINVAL): 0 bytes.
    if (err == ENOENT) err = 0;
    if (bytes != 0) {
        // Best effort: the engine removes one mapping per unmap (never below 0).
        uint64_t cur = live_.load(std::memory_order_relaxed);
        while (cur != 0 && !live_.compare_exchange_weak(cur, cur - 1, std::memory_order_relaxed)) {}
    }
    return finish_unmap(err, iova, size, bytes);
}

Result<ContainerInfo> IommufdBackend::info() const {
    uint64_t alignment = 0;
    auto ranges = iova_ranges(&alignment);
    if (!ranges) return coiommu::unexpected(ranges.error());
    ContainerInfo out;
    out.iova_pgsizes = alignment <= 1 ? kPageSize : alignment;
    out.iova_ranges = std::move(*ranges);
    out.entry_limit = kNoEntryLimit;
    const uint64_t live = live_entries();
    out.entries_available = live < kNoEntryLimit ? kNoEntryLimit - live : 0;
    return out;
}

}  // namespace coiommu::dma
