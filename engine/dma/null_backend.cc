#include "engine/dma/null_backend.h"

namespace coiommu::dma {

Result<MapOutcome> NullBackend::map(Iova iova, Hva /*hva*/, uint64_t size, Prot /*prot*/) {
    live_.fetch_add(1, std::memory_order_relaxed);
    return finish_map(0, iova, size);
}

Result<uint64_t> NullBackend::unmap(Iova iova, uint64_t size) {
    // One entry per unmap call, saturating at zero (an unmap of nothing removes nothing).
    uint64_t live = live_.load(std::memory_order_relaxed);
    while (live != 0 && !live_.compare_exchange_weak(live, live - 1, std::memory_order_relaxed)) {}
    return finish_unmap(0, iova, size, size);
}

Result<ContainerInfo> NullBackend::info() const {
    ContainerInfo out;
    out.iova_pgsizes = 0x40201000;  // 4K|2M|1G, as VT-d (and the fake's default) reports
    out.iova_ranges = {IovaRange{0, ~uint64_t{0}}};
    out.entry_limit = entry_limit_;
    const uint64_t live = live_entries();
    out.entries_available = live >= entry_limit_ ? 0 : entry_limit_ - live;
    return out;
}

}  // namespace coiommu::dma
