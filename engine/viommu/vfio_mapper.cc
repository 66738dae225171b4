#include "engine/viommu/vfio_mapper.h"

#include <fmt/format.h>

#include <cerrno>

namespace coiommu::viommu {

Result<AddMapResult> VfioMapper::add_map(const MappingInfo& map) {
    auto hva = memory_.translate(map.gpa, map.size);
    if (!hva) return coiommu::unexpected(with_context(hva.error(), "failed to find host address"));
    return do_map(map.iova, *hva, map.size, map.prot);
}

Result<AddMapResult> VfioMapper::vfio_dma_map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    return do_map(iova, hva, size, prot);
}

Result<AddMapResult> VfioMapper::do_map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    // crosvm passes only "write allowed"; VFIO always maps readable.
    const Prot effective = dma::has_write(prot) ? Prot::ReadWrite : Prot::Read;
    auto outcome = backend_.map(iova, hva, size, effective);
    if (!outcome) return coiommu::unexpected(with_context(outcome.error(), "vfio mapping error"));
    switch (*outcome) {
        case dma::MapOutcome::Mapped: return AddMapResult::Ok;
        case dma::MapOutcome::AlreadyMapped:
            // EEXIST: a mapping already exists in the requested range.
            return AddMapResult::OverlapFailure;
        case dma::MapOutcome::NoSpace:
            // The container hit dma_entry_limit. crosvm's VfioWrapper treats every errno but
            // EEXIST as a failure, so the MAP request fails (used length 0) instead of getting
            // a status; the guest's DMA map then fails, which is the honest answer when the
            // host cannot pin more. It is not an overlap, so it must not read as one.
            return make_error(ENOSPC, fmt::format("vfio mapping error: iova {:#x} size {:#x}: "
                                                  "container entry limit reached",
                                                  raw(iova), size));
    }
    return make_error(EIO, "vfio mapping error: unknown map outcome");
}

Result<RemoveMapResult> VfioMapper::remove_map(Iova iova, uint64_t size) {
    if (!checked_add(iova, size)) return make_error(EOVERFLOW, "iova overflow");
    auto removed = backend_.unmap(iova, size);
    if (!removed) return coiommu::unexpected(with_context(removed.error(), "vfio unmapping error"));
    return RemoveMapResult::success();
}

Result<uint64_t> VfioMapper::get_mask() const {
    auto info = backend_.info();
    if (!info) return coiommu::unexpected(with_context(info.error(), "vfio get mask error"));
    return info->iova_pgsizes;
}

}  // namespace coiommu::viommu
