// VfioMapper: a virtio-iommu domain backed by a DMA backend (port of crosvm's VfioWrapper).
//
// Strict mode: every guest MAP becomes one backend (VFIO_IOMMU_MAP_DMA) mapping of the guest
// RAM behind the GPA range, every UNMAP one backend unmap. There is no export support and no
// detach (VFIO cannot detach one device from a group's container).
//
// Thread-safety: holds no mutable state of its own; every method may be called from any
// thread (DmaBackend and GuestMemory are thread-safe).
// Lifetime: `memory` and `backend` are borrowed and must outlive the mapper.
#pragma once

#include <cstdint>

#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/viommu/memory_mapper.h"

namespace coiommu::viommu {

class VfioMapper final : public MemoryMapper {
public:
    // `id` names the mapper (crosvm: the VFIO group id); the virtio-iommu device refuses to put
    // one mapper (same type and id) into two domains at once.
    VfioMapper(const GuestMemory& memory, dma::DmaBackend& backend, uint32_t id)
        : memory_(memory), backend_(backend), id_(id) {}

    // Translates [gpa, gpa + size) to host memory (EFAULT unless it lies inside one guest RAM
    // region) and maps it, writable iff prot has Write. Outcomes: AlreadyMapped (EEXIST) ->
    // OverlapFailure. Errors: ENOSPC when the container's entry limit is reached (see .cc);
    // every other backend error.
    [[nodiscard]] Result<AddMapResult> add_map(const MappingInfo& map) override;

    // Maps external host memory (a dma-buf): same outcomes and errors as add_map.
    [[nodiscard]] Result<AddMapResult> vfio_dma_map(Iova iova, Hva hva, uint64_t size, Prot prot) override;

    // EOVERFLOW when iova + size exceeds 2^64 - 1, else one backend unmap of the whole range;
    // always Success without an event. Backend errors (e.g. EINVAL for a range that bisects a
    // mapping) are errors, not OverlapFailure, as in crosvm.
    [[nodiscard]] Result<RemoveMapResult> remove_map(Iova iova, uint64_t size) override;

    // The container's IOMMU page-size bitmap (iova_pgsizes). An ioctl for vfio: not hot.
    [[nodiscard]] Result<uint64_t> get_mask() const override;
    [[nodiscard]] bool supports_detach() const override { return false; }
    [[nodiscard]] uint32_t id() const override { return id_; }

private:
    [[nodiscard]] Result<AddMapResult> do_map(Iova iova, Hva hva, uint64_t size, Prot prot);

    const GuestMemory& memory_;
    dma::DmaBackend& backend_;
    const uint32_t id_;
};

}  // namespace coiommu::viommu
