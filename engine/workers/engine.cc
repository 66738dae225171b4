#include "engine/workers/engine.h"

#include <cerrno>

#include "engine/workers/fast_engine.h"
#include "engine/workers/seed_pinner.h"

namespace coiommu::workers {

Result<std::unique_ptr<Engine>> Engine::create(const EngineConfig& cfg, const EngineDeps& deps) {
    COIOMMU_TRY(cfg.validate());
    if (deps.mem == nullptr || deps.backend == nullptr) return make_error(EINVAL, "engine: no guest memory or backend");
    auto stats = std::make_unique<telemetry::StatsRegistry>(deps.trigger_fds.size());
    std::unique_ptr<Engine> e(new Engine(cfg, *deps.backend, std::move(stats)));
    if (cfg.variant == Variant::Fast) {
        auto v = FastEngine::create(cfg, deps, *e->stats_);
        if (!v) return coiommu::unexpected(v.error());
        e->variant_ = std::move(*v);
    } else {
        auto v = SeedPinner::create(cfg, deps, *e->stats_);
        if (!v) return coiommu::unexpected(v.error());
        e->variant_ = std::move(*v);
    }
    auto& g = e->stats_->gauges();
    g.vcpus.set(deps.trigger_fds.size());
    g.guest_ram_bytes.set(deps.mem->total_bytes());
    g.dma_entry_limit.set(deps.backend->entry_limit());
    g.dma_entries.set(deps.backend->live_entries());
    return e;
}

Engine::~Engine() { stop(); }

Status Engine::activate(Gpa dtt_root, uint64_t dtt_level) { return variant_->activate(dtt_root, dtt_level); }
void Engine::park_unpin() { variant_->park_unpin(); }
void Engine::unpark_unpin() { variant_->unpark_unpin(); }

Result<telemetry::BalloonResult> Engine::balloon_unpin(std::span<const GfnRange> ranges) {
    return variant_->balloon_unpin(ranges);
}

Status Engine::run_unpin_tick() { return variant_->run_unpin_tick(); }

void Engine::stop() {
    if (variant_) variant_->stop();
}

telemetry::StatsSnapshot Engine::stats() const {
    auto& g = stats_->gauges();
    g.dma_entries.set(backend_.live_entries());
    g.dma_entry_limit.set(backend_.entry_limit());
    return stats_->snapshot();
}

EngineDeps device_deps(const device::CoiommuDevice& dev, const GuestMemory& mem, dma::DmaBackend& backend) {
    EngineDeps d;
    d.mem = &mem;
    d.backend = &backend;
    d.endpoints.assign(dev.endpoints().begin(), dev.endpoints().end());
    d.notify_slots = dev.notify_slots();
    for (uint32_t i = 0; i < dev.vcpus(); ++i) d.trigger_fds.push_back(dev.trigger_fd(i));
    return d;
}

}  // namespace coiommu::workers
