// Engine: the facade a VMM-facing daemon (or a test, or the load generator) holds. It owns the
// stats registry, one pin engine variant (variant=fast: FastEngine; variant=seed: SeedPinner)
// and the lifecycle both share: the park gate, the unpin service thread, and the order of
// activate and stop. It implements device::EngineControl so that a CoiommuDevice forwards
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
#include <mutex>
#include <span>
#include <vector>

#include "engine/device/device.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/config.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/pin_engine.h"
#include "engine/workers/unpinner.h"

namespace coiommu::workers {

class Engine final : public device::EngineControl {
public:
    // Errors: EINVAL from cfg.validate() or inconsistent deps; the variant's allocation errors.
    [[nodiscard]] static Result<std::unique_ptr<Engine>> create(const EngineConfig& cfg, const EngineDeps& deps);
    ~Engine() override;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // device::EngineControl.
    // Starts pinning for the DTT at (root, levels) (an invalid DTT is not an Error, see
    // PinEngine::prepare) and the unpin service. Errors: EALREADY when already active; ECANCELED
    // after stop(); errno of thread/fd creation.
    [[nodiscard]] Status activate(Gpa dtt_root, uint64_t dtt_level) override;
    // A resumed session: `extents` were mapped by the daemon that died (ascending). activate()
    // has the variant adopt them (PinEngine::adopt) before the first request is taken; an
    // adopt that fails (EINVAL) fails activate(). stop() unmaps them also when the engine never
    // activated (the guest had not, or the VMM left first). Call at most once, before activate().
    // Errors: EALREADY after activate() or a previous inherit().
    [[nodiscard]] Status inherit(std::vector<GfnRange> extents);
    // PARK_UNPIN / UNPARK_UNPIN (park_gate.h). Valid in any state.
    void park_unpin() override;
    void unpark_unpin() override;

    // Force-unpins every page of the ranges that the engine maps (balloon inflation); Failed when a
    // page cannot be unpinned (see the per-range overload). Waits while parked; Failed when the
    // engine stops during that wait or the request. Errors: EAGAIN when the engine is not active;
    // ECANCELED when it stopped before the request ran.
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges);
    // The same with one result per range in `per_range` (its size must be ranges.size(), else
    // EINVAL): a failing range stops at its failing page and the next range still runs (a balloon's
    // free page reporting sends many independent ranges); the return is Failed when any range
    // failed. stop() ends a request in progress within a page (Failed for the ranges not done).
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges,
                                                                 std::span<telemetry::BalloonResult> per_range);
    // Runs one LRU tick now and waits for it (tests and operators; the timer runs them otherwise).
    // Errors: EAGAIN when not active; ECANCELED when stopping.
    [[nodiscard]] Status run_unpin_tick();
    // Stops taking requests (every slot taken completes), stops the unpin service, then unmaps
    // everything the engine mapped, clearing PINNED. Returns the pages that teardown unmapped (the
    // unpinner may still release pages until it stops, so a gauge read before stop() can be
    // higher); 0 when already stopped. Idempotent; afterwards the engine is inert.
    uint64_t stop();

    // stop() without the teardown: every mapping stays in the backend and recorded (a daemon
    // shutting down a resumable session, whose successor adopts them). Returns the pages left
    // mapped. Idempotent with stop(): whichever runs first decides.
    uint64_t detach();

    // The telemetry snapshot (refreshes the DMA entry gauges from the backend first).
    [[nodiscard]] telemetry::StatsSnapshot stats() const;
    [[nodiscard]] telemetry::StatsRegistry& registry() { return *stats_; }
    [[nodiscard]] const EngineConfig& config() const { return cfg_; }
    [[nodiscard]] PinEngine& variant() { return *variant_; }

private:
    Engine(const EngineConfig& cfg, dma::DmaBackend& backend, std::unique_ptr<telemetry::StatsRegistry> stats)
        : cfg_(cfg), backend_(backend), stats_(std::move(stats)) {}

    enum class Teardown : uint8_t { UnmapAll, KeepMappings };
    uint64_t halt(Teardown how);
    // The unpin service of an active engine. Errors: EAGAIN "<what>: engine not active".
    [[nodiscard]] Result<UnpinService*> active_service(std::string_view what);

    EngineConfig cfg_;
    dma::DmaBackend& backend_;
    std::unique_ptr<telemetry::StatsRegistry> stats_;
    ParkGate gate_;
    std::unique_ptr<PinEngine> variant_;           // uses gate_
    std::unique_ptr<UnpinService> unpin_service_;  // runs variant_'s strategy: goes first
    std::mutex lifecycle_mu_;
    bool prepared_ = false;
    bool active_ = false;
    bool stopped_ = false;
    bool inherited_ = false;
    std::vector<GfnRange> inherit_;  // adopted at activate(); under lifecycle_mu_
};

// The engine's view of a device: its notify slots, trigger fds and endpoints.
[[nodiscard]] EngineDeps device_deps(const device::CoiommuDevice& dev, const GuestMemory& mem,
                                     dma::DmaBackend& backend);

}  // namespace coiommu::workers
