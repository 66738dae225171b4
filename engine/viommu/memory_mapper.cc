#include "engine/viommu/memory_mapper.h"

#include <cerrno>

namespace coiommu::viommu {

Result<MappingInfo> MappingInfo::create(Iova iova, Gpa gpa, uint64_t size, Prot prot) {
    if (size == 0) return make_error(EINVAL, "can't create 0 sized region");
    if (!checked_add(iova, size)) return make_error(EOVERFLOW, "iova overflow");
    if (!checked_add(gpa, size)) return make_error(EOVERFLOW, "gpa overflow");
    return MappingInfo{iova, gpa, size, prot};
}

Result<EventFd> MemoryMapper::start_export_session() {
    return make_error(ENOTSUP, "start_export_session: not supported");
}

Result<AddMapResult> MemoryMapper::vfio_dma_map(Iova, Hva, uint64_t, Prot) {
    return make_error(ENOTSUP, "vfio_dma_map: not supported");
}

Result<std::vector<MemRegion>> MemoryMapper::export_range(Iova, uint64_t) {
    return make_error(ENOTSUP, "export: not supported");
}

Status MemoryMapper::release(Iova, uint64_t) { return make_error(ENOTSUP, "release: not supported"); }

}  // namespace coiommu::viommu
