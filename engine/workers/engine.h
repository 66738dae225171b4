// Engine: the facade a VMM-facing daemon (or a test, or the load generator) holds. It owns the
// stats registry and one pin engine variant (variant=fast: FastEngine; variant=seed:
// SeedPinner), and implements device::EngineControl so that a CoiommuDevice forwards
// ACTIVATE / PARK_UNPIN / UNPARK_UNPIN to it synchronously.
//
//   auto dev = device::CoiommuDevice::create({endpoints, vcpus}).value();
//   auto engine = Engine::create(cfg, device_deps(*dev, mem, backend)).value();
//   dev->set_engine(engine.get());
//   ... the guest writes dtt_root, dtt_level, ACTIVATE through BAR0 -> engine->activate(...)
//   engine->stop();   // joins every thread, unmaps everything the engine mapped
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <memory>
#include <span>

#include "engine/device/device.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/config.h"
#include "engine/workers/pin_engine.h"

namespace coiommu::workers {

class Engine final : public device::EngineControl {
public:
    // Errors: EINVAL from cfg.validate() or inconsistent deps; the variant's allocation errors.
    [[nodiscard]] static Result<std::unique_ptr<Engine>> create(const EngineConfig& cfg, const EngineDeps& deps);
    ~Engine() override;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // device::EngineControl
    [[nodiscard]] Status activate(Gpa dtt_root, uint64_t dtt_level) override;
    void park_unpin() override;
    void unpark_unpin() override;

    // See PinEngine.
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges);
    [[nodiscard]] Status run_unpin_tick();
    void stop();

    // The telemetry snapshot (refreshes the DMA entry gauges from the backend first).
    [[nodiscard]] telemetry::StatsSnapshot stats() const;
    [[nodiscard]] telemetry::StatsRegistry& registry() { return *stats_; }
    [[nodiscard]] const EngineConfig& config() const { return cfg_; }
    [[nodiscard]] PinEngine& variant() { return *variant_; }

private:
    Engine(const EngineConfig& cfg, dma::DmaBackend& backend, std::unique_ptr<telemetry::StatsRegistry> stats)
        : cfg_(cfg), backend_(backend), stats_(std::move(stats)) {}

    EngineConfig cfg_;
    dma::DmaBackend& backend_;
    std::unique_ptr<telemetry::StatsRegistry> stats_;
    std::unique_ptr<PinEngine> variant_;
};

// The engine's view of a device: its notify slots, trigger fds and endpoints.
[[nodiscard]] EngineDeps device_deps(const device::CoiommuDevice& dev, const GuestMemory& mem,
                                     dma::DmaBackend& backend);

}  // namespace coiommu::workers
