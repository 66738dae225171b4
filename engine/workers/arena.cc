#include "engine/workers/arena.h"

namespace coiommu::workers {

Result<std::unique_ptr<VcpuArena>> VcpuArena::create(uint32_t vcpu, GuestAtomicU64 slot, int trigger_fd,
                                                     uint64_t max_batch_pages, telemetry::StatsShard& stats) {
    auto gfns = FlatArray<uint64_t>::create(max_batch_pages);
    if (!gfns) return coiommu::unexpected(with_context(gfns.error(), "arena gfn buffer"));
    auto work = FlatArray<WorkPage>::create(max_batch_pages);
    if (!work) return coiommu::unexpected(with_context(work.error(), "arena work buffer"));
    auto run_starts = FlatArray<uint32_t>::create(max_batch_pages);
    if (!run_starts) return coiommu::unexpected(with_context(run_starts.error(), "arena run buffer"));
    auto a = std::make_unique<VcpuArena>();
    a->vcpu = vcpu;
    a->slot = slot;
    a->trigger_fd = trigger_fd;
    a->gfns = std::move(*gfns);
    a->work = std::move(*work);
    a->run_starts = std::move(*run_starts);
    a->stats = &stats;
    return a;
}

}  // namespace coiommu::workers
