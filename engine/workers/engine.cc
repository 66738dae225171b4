#include "engine/workers/engine.h"

#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"

#include "engine/workers/fast_engine.h"
#include "engine/workers/seed_pinner.h"

namespace coiommu::workers {

Result<std::unique_ptr<Engine>> Engine::create(const EngineConfig& cfg, const EngineDeps& deps) {
    COIOMMU_TRY(cfg.validate());
    if (deps.mem == nullptr || deps.backend == nullptr) return make_error(EINVAL, "engine: no guest memory or backend");
    auto stats = std::make_unique<telemetry::StatsRegistry>(deps.trigger_fds.size());
    std::unique_ptr<Engine> e(new Engine(cfg, *deps.backend, std::move(stats)));
    if (cfg.variant == Variant::Fast) {
        COIOMMU_ASSIGN_OR_RETURN(e->variant_, FastEngine::create(cfg, deps, *e->stats_, e->gate_));
    } else {
        COIOMMU_ASSIGN_OR_RETURN(e->variant_, SeedPinner::create(cfg, deps, *e->stats_, e->gate_));
    }
    auto& g = e->stats_->gauges();
    g.vcpus.set(deps.trigger_fds.size());
    g.guest_ram_bytes.set(deps.mem->total_bytes());
    g.dma_entry_limit.set(deps.backend->entry_limit());
    g.dma_entries.set(deps.backend->live_entries());
    return e;
}

Engine::~Engine() { stop(); }

Status Engine::inherit(std::vector<GfnRange> extents) {
    std::lock_guard lock(lifecycle_mu_);
    if (stopped_) return make_error(ECANCELED, "engine stopped");
    if (prepared_ || inherited_) return make_error(EALREADY, "engine: inherit after activate or twice");
    inherited_ = true;
    inherit_ = std::move(extents);
    return ok();
}

Status Engine::activate(Gpa dtt_root, uint64_t dtt_level) {
    std::lock_guard lock(lifecycle_mu_);
    if (stopped_) return make_error(ECANCELED, "engine stopped");
    if (active_ || prepared_) return make_error(EALREADY, "engine already active");
    prepared_ = true;
    COIOMMU_ASSIGN_OR_RETURN(UnpinStrategy * strategy, variant_->prepare(dtt_root, dtt_level));
    if (!inherit_.empty()) {
        // A refused adopt leaves the extents with stop() (unmapped there) and the engine inactive.
        COIOMMU_TRY(variant_->adopt(inherit_), "resume");
        uint64_t pages = 0;
        for (const GfnRange& r : inherit_) pages += r.count;
        stats_->gauges().pinned_pages.add(pages);
        CLOG_INFO("engine", "resumed: adopted {} extents, {} pages", inherit_.size(), pages);
        inherit_.clear();
    }
    COIOMMU_ASSIGN_OR_RETURN(unpin_service_,
                             UnpinService::start(*strategy, gate_, {cfg_.unpin_policy, cfg_.unpin_interval}));
    // The unpin service runs before the first pin: every extent a worker hands off has a consumer.
    if (auto st = variant_->start_pinning(); !st) {
        unpin_service_->stop();
        return st;
    }
    active_ = true;
    return ok();
}

void Engine::park_unpin() {
    gate_.park();
    stats_->gauges().unpin_worker_parked.set(1);
}

void Engine::unpark_unpin() {
    gate_.unpark();
    stats_->gauges().unpin_worker_parked.set(0);
}

Result<UnpinService*> Engine::active_service(std::string_view what) {
    std::lock_guard lock(lifecycle_mu_);
    if (!active_ || stopped_) return make_error(EAGAIN, fmt::format("{}: engine not active", what));
    return unpin_service_.get();
}

// The service outlives the call: stop() takes lifecycle_mu_ only to stop it, and a request in
// flight is cancelled (ECANCELED) rather than left on a destroyed service.
Result<telemetry::BalloonResult> Engine::balloon_unpin(std::span<const GfnRange> ranges) {
    COIOMMU_ASSIGN_OR_RETURN(UnpinService * svc, active_service("balloon unpin"));
    return svc->balloon(ranges);
}

Result<telemetry::BalloonResult> Engine::balloon_unpin(std::span<const GfnRange> ranges,
                                                       std::span<telemetry::BalloonResult> per_range) {
    if (per_range.size() != ranges.size()) return make_error(EINVAL, "balloon unpin: one result per range");
    COIOMMU_ASSIGN_OR_RETURN(UnpinService * svc, active_service("balloon unpin"));
    return svc->balloon(ranges, per_range);
}

Status Engine::run_unpin_tick() {
    COIOMMU_ASSIGN_OR_RETURN(UnpinService * svc, active_service("unpin tick"));
    return svc->tick_now();
}

uint64_t Engine::stop() { return halt(Teardown::UnmapAll); }

uint64_t Engine::detach() { return halt(Teardown::KeepMappings); }

uint64_t Engine::halt(Teardown how) {
    std::lock_guard lock(lifecycle_mu_);
    if (stopped_ || !variant_) return 0;
    stopped_ = true;
    // Order: no new requests (every slot taken completes), then no unpinning, then unmap all.
    variant_->stop_pinning();
    if (unpin_service_) unpin_service_->stop();
    uint64_t pages = 0;
    if (how == Teardown::KeepMappings) {
        pages = variant_->recorded_pages();
        for (const GfnRange& r : inherit_) pages += r.count;
        CLOG_INFO("engine", "detached: {} pages left mapped for the next daemon", pages);
        active_ = false;
        return pages;
    }
    // Inherited extents the variant never adopted are still ours to unmap.
    for (const GfnRange& r : inherit_) {
        if (auto st = backend_.unmap_exact(Iova{raw(r.start) << kPageShift}, r.count << kPageShift); !st) {
            CLOG_ERROR("engine", "teardown: cannot unmap inherited extent {:#x}+{}: {}", raw(r.start), r.count,
                       st.error().message());
            continue;
        }
        pages += r.count;
    }
    inherit_.clear();
    if (prepared_) {
        pages += variant_->teardown();
        CLOG_INFO("engine", "stopped: {} pages unmapped at teardown, {} still recorded", pages,
                  variant_->recorded_pages());
    }
    active_ = false;
    return pages;
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
