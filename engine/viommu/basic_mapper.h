// BasicMemoryMapper: the in-memory IOMMU domain of virtio-iommu (port of crosvm's
// BasicMemoryMapper; behaviour in engine/README.md, "virtio-iommu memory mappers").
//
// Mappings live in an ordered map keyed by IOVA start (SortedChunkMap, sorted_chunks.h: a
// two-level sorted-array B-tree); they never overlap and are never merged. Costs: add_map /
// remove_map O(log n + removed) comparisons plus a memmove within one chunk, export of a range
// spanning k mappings O(log n + k), release O(exports outstanding). At 10^6 live mappings a
// lookup costs a few cache misses, not one per tree level.
//
// Thread-safety: every public method may be called from any thread; one mutex per instance
// serialises them (the virtio-iommu queue thread and an export client share a mapper).
// The mutex is never held while anyone waits on an event.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "engine/viommu/memory_mapper.h"
#include "engine/viommu/sorted_chunks.h"

namespace coiommu::viommu {

class BasicMemoryMapper final : public MemoryMapper {
public:
    // Default bound on live mappings (150-210 MB of chunks at 70-50 % fill, 420 MB if every
    // chunk sat at its minimum fill). crosvm has no bound; a guest issuing MAPs of single pages
    // must not be able to grow host memory without limit.
    static constexpr size_t kDefaultMaxMappings = size_t{1} << 21;

    // `mask` is what get_mask() reports (crosvm passes ~0). Takes the next id from a
    // process-wide counter starting at 0.
    explicit BasicMemoryMapper(uint64_t mask, size_t max_mappings = kDefaultMaxMappings);

    // Errors: EINVAL for size 0 ("can't map 0 sized region"), EOVERFLOW for iova or gpa
    // overflow. OverlapFailure when the mapping with the greatest start below the new end
    // reaches past the new start. Touching ranges are fine. ENOSPC when max_mappings are live
    // (checked after the overlap test, like VFIO's dma_entry_limit).
    [[nodiscard]] Result<AddMapResult> add_map(const MappingInfo& map) override;

    // Errors: EINVAL for size 0, EOVERFLOW when iova + size exceeds 2^64 - 1. Checks every
    // affected mapping is wholly inside the range before removing anything. If an export
    // session has an exported range overlapping the removed range, this is an IOMMU fault:
    // the first fault of the session returns Success(event); later ones Success(no event).
    [[nodiscard]] Result<RemoveMapResult> remove_map(Iova iova, uint64_t size) override;

    [[nodiscard]] Result<uint64_t> get_mask() const override { return mask_; }
    [[nodiscard]] bool supports_detach() const override { return true; }
    // Clears every mapping; faults (first fault: returns an event) when exports are outstanding.
    [[nodiscard]] EventFd reset_domain() override;
    [[nodiscard]] uint32_t id() const override { return id_; }

    // Errors: EBUSY ("previous export session still active") while the current session has
    // exported ranges; errno of eventfd creation. Returns the client's fault event.
    [[nodiscard]] Result<EventFd> start_export_session() override;

    // Errors, in this order: ENOENT no session ("no export state"), EPIPE the session has
    // faulted ("broken export state"), EINVAL size 0, EOVERFLOW iova + size overflow, EFAULT
    // when [iova, iova + size) is not covered by IOVA-contiguous mappings ("invalid iova").
    // On success records [iova, iova + size - 1] as exported (duplicates allowed). ENOMEM when
    // an allocation fails (nothing recorded).
    [[nodiscard]] Result<std::vector<MemRegion>> export_range(Iova iova, uint64_t size) override;

    // Errors, in this order: EOVERFLOW when iova + size - 1 overflows, ENOENT no session.
    // Removes one exported range equal to [iova, iova + size - 1]; an unknown range (size 0
    // included) logs a warning and succeeds. When the last export of a faulted session is
    // released, signals the fault-resolved event.
    [[nodiscard]] Status release(Iova iova, uint64_t size) override;

    // Inspection (tests, bench, stats).
    [[nodiscard]] size_t size() const;
    [[nodiscard]] bool empty() const { return size() == 0; }
    [[nodiscard]] size_t exported_count() const;

private:
    // Mappings per chunk of maps_: a lookup's cost at 10^6 mappings against the memmove an
    // insert or erase makes (tests/bench/viommu/README.md).
    static constexpr uint32_t kChunkEntries = 64;

    struct ExportedRange {
        uint64_t first = 0;  // inclusive
        uint64_t last = 0;   // inclusive
        friend bool operator==(const ExportedRange&, const ExportedRange&) = default;
    };
    struct ExportState {
        std::vector<ExportedRange> exported;  // may overlap; order not kept
        EventFd fault_event;                  // signaled on a fault; the client holds a dup
        EventFd resolved_internal;            // signaled when the last export is released
        EventFd resolved_external;            // dup of the above, handed out (moved out) on the first fault
    };

    [[nodiscard]] Result<std::vector<MemRegion>> export_impl(Iova iova, uint64_t size);
    // Signals the client and hands out the resolved event, the first time only.
    // Returns an invalid EventFd on later faults.
    [[nodiscard]] static EventFd on_fault(ExportState& state);

    mutable std::mutex mu_;
    SortedChunkMap<MappingInfo, kChunkEntries> maps_;  // key = iova start, tag = iova end (exclusive)
    std::optional<ExportState> export_;
    const uint64_t mask_;
    const size_t max_mappings_;
    const uint32_t id_;
};

}  // namespace coiommu::viommu
