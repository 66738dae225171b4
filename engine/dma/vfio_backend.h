// VfioBackend: a real VFIO type1v2 container (<linux/vfio.h>, included only by vfio_backend.cc).
//
// Two ways in:
//  - open_group(): opens /dev/vfio/vfio, checks the API version and the TYPE1v2 extension,
//    attaches one IOMMU group (which must be viable and not in a container yet), sets TYPE1v2
//    and reads VFIO_IOMMU_GET_INFO. The backend owns both fds; destroying it closes the group
//    first (detaching it), then the container.
//  - adopt(): takes a container fd that a VMM has already set up (groups attached, IOMMU type
//    set) and checks it with GET_INFO. The VMM keeps its groups.
//
// map/unmap are one MAP_DMA / UNMAP_DMA ioctl each; errno is taken on the line of the ioctl.
// EEXIST and ENOSPC become the AlreadyMapped / NoSpace outcomes; unmap returns the kernel's
// `size` (bytes actually unmapped). The kernel serialises the calls on its container mutex.
//
// Capacity: the kernel samples vfio_iommu_type1.dma_entry_limit when the container gets its
// IOMMU and reports what is left as the DMA_AVAIL capability (kernel >= 5.10). entry_limit() is
// cached at open (DMA_AVAIL of the fresh container); live_entries() = entry_limit - DMA_AVAIL
// and costs one GET_INFO ioctl: not for hot paths.
//
// Thread-safety: every method may be called from any thread concurrently.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/dma/backend.h"

namespace coiommu::dma {

// ---- VFIO_IOMMU_GET_INFO reply parsing (pure; unit-tested with crafted buffers) ----------------
// Layout of the reply (uapi; vfio_backend.cc static_asserts these against <linux/vfio.h>):
//   struct vfio_iommu_type1_info { u32 argsz; u32 flags; u64 iova_pgsizes; u32 cap_offset; u32 pad; }
//   capability header { u16 id; u16 version; u32 next; }   next/cap_offset: from the reply start
//   IOVA_RANGE (id 1): header, u32 nr_iovas, u32 reserved, { u64 start; u64 end; }[nr_iovas]
//   DMA_AVAIL  (id 3): header, u32 avail
inline constexpr size_t kIommuInfoSize = 24;
inline constexpr size_t kInfoCapHeaderSize = 8;
inline constexpr uint32_t kIommuInfoFlagPgsizes = 1u << 0;
inline constexpr uint32_t kIommuInfoFlagCaps = 1u << 1;
inline constexpr uint16_t kInfoCapIovaRange = 1;
inline constexpr uint16_t kInfoCapDmaAvail = 3;
// A chain longer than this is malformed (the kernel emits at most a handful).
inline constexpr uint32_t kMaxInfoCaps = 64;

struct InfoCaps {
    std::vector<IovaRange> iova_ranges;  // empty when the capability is absent
    std::optional<uint64_t> dma_avail;   // nullopt when the capability is absent
};

struct IommuInfo {
    uint32_t argsz = 0;  // as returned: the size the kernel needs for the whole reply
    uint32_t flags = 0;
    uint64_t iova_pgsizes = 0;
    InfoCaps caps;
};

// Walks the capability chain starting at `first_offset` inside `reply` (offsets count from the
// start of the reply). Unknown capability ids are skipped. Bounded: every capability must lie
// inside `reply` and after the info header, each `next` must point strictly forward (so no
// loop), at most kMaxInfoCaps entries, nr_iovas must fit in the buffer, start <= end.
// Errors: EPROTO for any violation.
[[nodiscard]] Result<InfoCaps> parse_info_caps(std::span<const std::byte> reply, uint32_t first_offset);

// Parses a whole reply: header, then the chain when flags has kIommuInfoFlagCaps and
// cap_offset != 0 (bounded by min(argsz, reply.size())). A reply whose argsz exceeds
// reply.size() is a truncated one and its caps are not parsed (the caller retries with argsz).
// Errors: EPROTO when reply is shorter than the header, or from parse_info_caps().
[[nodiscard]] Result<IommuInfo> parse_iommu_info(std::span<const std::byte> reply);

// Parses the text of the dma_entry_limit module parameter ("65535\n"). nullopt if malformed.
[[nodiscard]] std::optional<uint64_t> parse_entry_limit(std::string_view text);

class VfioBackend final : public DmaBackend {
public:
    static constexpr const char* kEntryLimitParam = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit";

    // Opens `container_path`, checks API version (EPROTONOSUPPORT) and TYPE1v2 (ENOTSUP), opens
    // the group at group_path (e.g. /dev/vfio/1; EBUSY when it already is in a container, EPERM
    // when it is not viable, i.e. not all its devices are bound to vfio), attaches it, sets
    // TYPE1v2 and reads GET_INFO. Other errors: the errno of the failing open/ioctl.
    [[nodiscard]] static Result<std::unique_ptr<VfioBackend>> open_group(
        const std::string& group_path, const std::string& container_path = "/dev/vfio/vfio");

    // Adopts a container fd already configured by a VMM (IOMMU type set). Validates with
    // GET_INFO (a container without an IOMMU fails with the kernel's EINVAL). entry_limit: the
    // given one, else the module parameter now, else DMA_AVAIL now (never below DMA_AVAIL).
    // EBADF for an invalid fd.
    [[nodiscard]] static Result<std::unique_ptr<VfioBackend>> adopt(UniqueFd container,
                                                                    std::optional<uint64_t> entry_limit = std::nullopt);

    VfioBackend(const VfioBackend&) = delete;
    VfioBackend& operator=(const VfioBackend&) = delete;
    ~VfioBackend() override;

    [[nodiscard]] int container_fd() const { return container_.get(); }
    [[nodiscard]] int group_fd() const { return group_.get(); }  // -1 when adopted

    // Reads the dma_entry_limit module parameter (nullopt when absent or unreadable).
    [[nodiscard]] static std::optional<uint64_t> module_entry_limit(const std::string& param_path = kEntryLimitParam);
    // Writes it (root). Only containers that get their IOMMU afterwards see the new value.
    [[nodiscard]] static Status set_module_entry_limit(uint64_t limit,
                                                       const std::string& param_path = kEntryLimitParam);

    // One GET_INFO ioctl (retried with the kernel's argsz when the caps did not fit), parsed.
    [[nodiscard]] Result<IommuInfo> query_info() const;

    [[nodiscard]] Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) override;
    [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t size) override;
    // GET_INFO; entries_available is DMA_AVAIL (entry_limit - live_entries() if the kernel has
    // no DMA_AVAIL).
    [[nodiscard]] Result<ContainerInfo> info() const override;
    // entry_limit - DMA_AVAIL from a fresh GET_INFO; the last known value if that ioctl fails;
    // 0 on kernels without DMA_AVAIL.
    [[nodiscard]] uint64_t live_entries() const override;
    [[nodiscard]] uint64_t entry_limit() const override { return entry_limit_; }
    [[nodiscard]] std::string_view name() const override { return "vfio"; }

private:
    VfioBackend(UniqueFd container, UniqueFd group);

    // Declared in this order so the group is closed (detached) before the container.
    UniqueFd container_;
    UniqueFd group_;
    uint64_t entry_limit_ = 0;  // set once by open_group()/adopt() before the object is handed out
    mutable std::atomic<uint64_t> last_live_{0};
};

}  // namespace coiommu::dma
