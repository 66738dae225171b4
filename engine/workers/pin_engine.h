// The interface both pin engines implement (the fast engine and the seed pinner), and
// what an engine is given to work on.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/domain.h"
#include "engine/base/result.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"

namespace coiommu::workers {

using coiommu::GfnRange;  // engine/base/domain.h

// What the engine works on. Everything referenced must outlive the engine.
struct EngineDeps {
    const GuestMemory* mem = nullptr;
    dma::DmaBackend* backend = nullptr;
    std::vector<uint16_t> endpoints;   // BDFs allowed to request pins
    std::span<uint64_t> notify_slots;  // this process's mapping of the notifymap (>= vcpus slots)
    std::vector<int> trigger_fds;      // one per vCPU (borrowed; the VMM's ioeventfds)
};

class PinEngine {
public:
    virtual ~PinEngine() = default;

    // Starts pinning for the DTT at (root, levels). An invalid DTT is not an Error: the engine runs
    // and completes every request with an error (as crosvm's workers do). Errors: EALREADY when
    // already active; errno of thread/fd creation.
    [[nodiscard]] virtual Status activate(Gpa dtt_root, uint64_t dtt_level) = 0;
    // PARK_UNPIN / UNPARK_UNPIN (park_gate.h). Valid in any state.
    virtual void park_unpin() = 0;
    virtual void unpark_unpin() = 0;
    // Force-unpins every page of the ranges (balloon inflation); stops at the first page that cannot
    // be unpinned (Failed). Waits while parked; Failed when the engine stops during that wait.
    // Errors: EAGAIN when the engine is not active; ECANCELED when it stopped before the request ran.
    [[nodiscard]] virtual Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges) = 0;
    // Runs one LRU tick now and waits for it (tests and operators; the timer runs them otherwise).
    // Errors: EAGAIN when not active; ECANCELED when stopping.
    [[nodiscard]] virtual Status run_unpin_tick() = 0;
    // Stops every thread (joins them) and unmaps everything the engine mapped, clearing PINNED.
    // Idempotent. After stop() the engine is inert.
    virtual void stop() = 0;
};

}  // namespace coiommu::workers
