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

class UnpinStrategy;  // unpinner.h

// One pin engine variant (FastEngine, SeedPinner): how requests are taken and pinned, and the
// unpin policy over what it pinned. Engine (engine.h) owns the lifecycle around it: the park
// gate, the unpin service thread, activate/stop ordering, balloon and tick requests.
//
// Call order, enforced by Engine: prepare -> start_pinning -> stop_pinning -> teardown, each at
// most once (stop_pinning and teardown also without the earlier steps).
class PinEngine {
public:
    virtual ~PinEngine() = default;

    // Builds the DTT walker for (root, levels) and returns the unpin policy the unpin service
    // runs (owned by the variant). An invalid DTT is not an Error: the engine runs and completes
    // every request with an error (as crosvm's workers do). Errors: allocation of the policy.
    [[nodiscard]] virtual Result<UnpinStrategy*> prepare(Gpa dtt_root, uint64_t dtt_level) = 0;
    // Between prepare and start_pinning, at most once (a resumed session): takes over extents a
    // previous daemon mapped, as if this variant had mapped them: recorded, handed to the unpin
    // policy, unmapped by teardown. The DTT is left as the guest has it (a page the old daemon
    // mapped but had not yet shown PINNED is shown PINNED by the guest's next request for it).
    // Errors: EINVAL when an extent is empty, outside the table, overlaps one adopted before, or
    // is longer than the variant maps in one call (seed: one page; fast: kMaxBatchPages); nothing
    // is adopted then.
    [[nodiscard]] virtual Status adopt(std::span<const GfnRange> extents) = 0;
    // Starts the threads that take requests. Errors: errno of thread creation (none is left running).
    [[nodiscard]] virtual Status start_pinning() = 0;
    // Joins those threads; every request already taken completes its slot. Idempotent.
    virtual void stop_pinning() = 0;
    // After stop_pinning and the unpin service's stop: unmaps everything the variant mapped and
    // clears PINNED on it. Returns the pages unmapped.
    virtual uint64_t teardown() = 0;
    // Pages the variant records as mapped (0 after teardown).
    [[nodiscard]] virtual uint64_t recorded_pages() const = 0;
};

}  // namespace coiommu::workers
