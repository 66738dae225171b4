#include "bpf/loader/tracing.h"

#include <cerrno>

#include "engine/base/log.h"

namespace coiommu::bpf {

Result<Tracing> Tracing::start(const TracingOptions& options) {
    Tracing t;
    t.pin_ = options.pin;
    if (options.run_time == CollectRunTime::Yes) {
        auto stats = StatsGuard::enable();
        if (!stats) return coiommu::unexpected(stats.error());
        t.stats_.emplace(std::move(*stats));
    }

    auto vfio = VfioDmaTracer::start(options.vfio_dma);
    if (!vfio) return coiommu::unexpected(vfio.error());
    t.vfio_dma_.emplace(std::move(*vfio));
    if (t.pin_) {
        COIOMMU_TRY(t.vfio_dma_->pin(*t.pin_));
    }

    if (options.engine) {
        COIOMMU_TRY(t.attach_engine(*options.engine));
    }

    if (options.kernel_hooks == TryKernelHooks::Yes) {
        auto kern = VfioKernTracer::start();
        if (kern) {
            t.kern_.emplace(std::move(*kern));
            t.kern_status_ = "attached";
        } else {
            t.kern_status_ = kern.error().context;
            CLOG_INFO("bpf", "vfio_kern hooks {}", t.kern_status_);
        }
    }
    return t;
}

Status Tracing::attach_engine(const EngineTarget& target) {
    if (engine_) return make_error(EALREADY, "engine tracer already attached");
    auto engine = EngineTracer::attach(target);
    if (!engine) return coiommu::unexpected(engine.error());
    if (pin_) {
        if (auto st = engine->pin(*pin_); !st) return st;
    }
    engine_.emplace(std::move(*engine));
    return ok();
}

Result<TelemetrySnapshot> Tracing::snapshot() const {
    TelemetrySnapshot snap;
    auto vfio = vfio_dma_->snapshot();
    if (!vfio) return coiommu::unexpected(vfio.error());
    snap.vfio_dma = *vfio;
    auto progs = vfio_dma_->programs();
    if (!progs) return coiommu::unexpected(progs.error());
    snap.programs = std::move(*progs);

    if (engine_) {
        auto eng = engine_->snapshot();
        if (!eng) return coiommu::unexpected(eng.error());
        snap.engine = *eng;
        auto ep = engine_->programs();
        if (!ep) return coiommu::unexpected(ep.error());
        snap.programs.insert(snap.programs.end(), ep->begin(), ep->end());
    }
    if (kern_) {
        auto k = kern_->snapshot();
        if (!k) return coiommu::unexpected(k.error());
        snap.kern = *k;
        auto kp = kern_->programs();
        if (!kp) return coiommu::unexpected(kp.error());
        snap.programs.insert(snap.programs.end(), kp->begin(), kp->end());
    }
    return snap;
}

std::vector<std::string> Tracing::pinned_paths() const {
    std::vector<std::string> out = vfio_dma_->pinned_paths();
    if (engine_) {
        auto e = engine_->pinned_paths();
        out.insert(out.end(), e.begin(), e.end());
    }
    return out;
}

}  // namespace coiommu::bpf
