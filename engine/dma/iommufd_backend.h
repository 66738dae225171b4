// IommufdBackend: an IOAS of the kernel's iommufd (/dev/iommu, Linux >= 6.2; the VFIO device cdev
// and its BIND/ATTACH ioctls from 6.6), the successor of the type1 container. No 65535-entry
// limit: capacity is bounded by the locked-memory accounting.
//
// Two ways in:
//  - open_device(): opens /dev/iommu and the VFIO device cdev (/dev/vfio/devices/vfioN), binds the
//    device to the iommufd (VFIO_DEVICE_BIND_IOMMUFD), allocates an IOAS (IOMMU_IOAS_ALLOC),
//    attaches the device to it (VFIO_DEVICE_ATTACH_IOMMUFD_PT) and reads the usable IOVA ranges.
//    The backend owns both fds (device first closed, then the iommufd).
//  - adopt(): takes a VMM's iommufd and the id of an IOAS it set up (devices attached), and checks
//    the id with IOMMU_IOAS_IOVA_RANGES. The VMM keeps its devices.
//
// The DmaBackend semantics (backend.h), mapped from iommufd's native answers:
//  - map: IOMMU_IOAS_MAP with FIXED_IOVA. EEXIST -> AlreadyMapped. Capacity ends with ENOMEM (the
//    pinned pages exceed RLIMIT_MEMLOCK / the memcg), which becomes NoSpace, as ENOSPC does on type1.
//  - unmap: IOMMU_IOAS_UNMAP returns the bytes removed. The kernel answers ENOENT both when nothing
//    is mapped in the range (type1: 0 bytes) and when the range would split a mapping (type1:
//    EINVAL); in both cases nothing was removed, so ENOENT is "0 bytes removed" here, and
//    unmap_exact() reports it as a short unmap (EIO) like any other.
//  - There is no DMA_AVAIL: entry_limit() is kNoEntryLimit (what the kernel's type1 compatibility
//    reports) and live_entries() counts the mappings made through this object minus the unmaps
//    that removed something (exact for the engine, which maps and unmaps whole extents; mappings
//    a VMM made in an adopted IOAS are not seen). It costs no ioctl.
//
// The uAPI structs are declared here from the kernel ABI (Debian 12's linux-libc-dev is 6.1 and
// has no <linux/iommufd.h>); iommufd_backend.cc static_asserts their layout. On a kernel without
// iommufd, open_device() fails with ENOENT (no /dev/iommu) and the caller uses type1.
//
// Thread-safety: every method may be called from any thread concurrently (the kernel serialises
// per IOAS).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/dma/backend.h"

namespace coiommu::dma {

class IommufdBackend final : public DmaBackend {
public:
    static constexpr uint64_t kNoEntryLimit = 4294967295u;
    static constexpr const char* kIommuPath = "/dev/iommu";

    // Errors: the errno of the failing open/ioctl (ENOENT: no /dev/iommu, the kernel has no
    // iommufd; EBUSY: the device is already bound or its group is in a type1 container).
    [[nodiscard]] static Result<std::unique_ptr<IommufdBackend>> open_device(
        const std::string& cdev_path, const std::string& iommu_path = kIommuPath);
    // Errors: EBADF for an invalid fd; the kernel's ENOENT for an id that is not an IOAS of it.
    [[nodiscard]] static Result<std::unique_ptr<IommufdBackend>> adopt(UniqueFd iommufd, uint32_t ioas_id);

    IommufdBackend(const IommufdBackend&) = delete;
    IommufdBackend& operator=(const IommufdBackend&) = delete;
    ~IommufdBackend() override;

    [[nodiscard]] int iommufd() const { return iommufd_.get(); }
    [[nodiscard]] uint32_t ioas_id() const { return ioas_id_; }
    [[nodiscard]] int device_fd() const { return device_.get(); }  // -1 when adopted
    [[nodiscard]] uint32_t device_id() const { return device_id_; }

    // IOMMU_IOAS_IOVA_RANGES: the usable ranges (they narrow with every attached device) and the
    // IOVA alignment. One ioctl: not for hot paths.
    [[nodiscard]] Result<std::vector<IovaRange>> iova_ranges(uint64_t* alignment = nullptr) const;

    [[nodiscard]] Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) override;
    [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t size) override;
    [[nodiscard]] Result<ContainerInfo> info() const override;
    [[nodiscard]] uint64_t live_entries() const override { return live_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint64_t entry_limit() const override { return kNoEntryLimit; }
    [[nodiscard]] std::string_view name() const override { return "iommufd"; }

private:
    IommufdBackend(UniqueFd iommufd, UniqueFd device, uint32_t ioas_id, uint32_t device_id);

    // Declared in this order so the device is closed (detached) before the iommufd.
    UniqueFd iommufd_;
    UniqueFd device_;
    uint32_t ioas_id_ = 0;
    uint32_t device_id_ = 0;
    std::atomic<uint64_t> live_{0};
};

}  // namespace coiommu::dma
