// Per-vCPU worker arenas and the environment every pin worker shares.
//
// A VcpuArena is everything one vCPU's requests need, preallocated: its notify slot, its trigger
// fd, its DTT walker (the leaf cursor), buffers sized for max_batch_pages, its stats shard, and the
// intake/worker hand-off state. At most one request per vCPU is in flight (the guest waits for its
// slot to be zeroed), so whichever worker serves it owns the arena for that request without a
// lock; the MPMC queue and the state word order one owner after the other.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "engine/base/addr.h"
#include "engine/core/dtt.h"
#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/config.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/flat_array.h"

namespace coiommu::workers {

// The longest extent one DMA call maps (2 MiB). Longer runs are split: the kernel pins in batches
// of 512 pages anyway (engine/README.md, "VFIO type1 semantics"), so a longer call saves < 0.5% of
// per-call cost, while shorter extents unpin more precisely and bound the page locks one run holds.
inline constexpr uint32_t kMaxExtentPages = 512;
static_assert(kMaxExtentPages <= core::PinTable::RunLock::kMaxPages, "a run's locks fit one RunLock");

// Shared by every pin worker of one engine; all members outlive the workers. Immutable once the
// workers run (the referenced objects are themselves thread-safe).
struct PinEnv {
    const GuestMemory& mem;
    dma::DmaBackend& backend;
    core::PinTable& table;
    ExtentMap& extents;
    ExtentHandoff& handoff;
    const core::EndpointSet& endpoints;
    telemetry::EngineGauges& gauges;
    core::RequestLimits limits;
    Coalesce coalesce = Coalesce::On;
    uint32_t session = 0;
    // Hand new extents to the unpinner (only LRU consumes them; without it teardown scans the
    // PinTable, and skipping the push saves a cache miss and a CAS per extent).
    bool track_extents = true;
    // Set when ACTIVATE named a DTT the walker rejects: every request fails with this message.
    std::string dtt_error;
};

// One page of a request that needs work under its page lock.
struct WorkPage {
    uint64_t gfn = 0;
    uint32_t* leaf = nullptr;   // the DTT leaf word (inside guest RAM)
    std::byte* host = nullptr;  // this process's address of the page
};

// Intake <-> worker hand-off state of a vCPU (see intake.h for the protocol).
enum class SlotState : uint32_t {
    Idle = 0,      // no request of this vCPU is queued or being served
    InFlight = 1,  // queued or being served
    Rescan = 2,    // in flight, and a trigger arrived meanwhile: re-examine the slot when done
};

struct alignas(64) VcpuArena {
    // Errors: those of FlatArray::create for the buffers.
    [[nodiscard]] static Result<std::unique_ptr<VcpuArena>> create(uint32_t vcpu, GuestAtomicU64 slot, int trigger_fd,
                                                                   uint64_t max_batch_pages,
                                                                   telemetry::StatsShard& stats);

    uint32_t vcpu = 0;
    GuestAtomicU64 slot;                    // the vCPU's notify slot (shared with the guest)
    int trigger_fd = -1;                    // borrowed from the device
    std::optional<core::DttWalker> walker;  // set at activation; nullopt when the DTT is invalid
    FlatArray<uint64_t> gfns;               // a batch's gfn list, copied once from the guest
    FlatArray<WorkPage> work;               // pages that need a map (or a re-set PINNED)
    FlatArray<uint32_t> run_starts;         // where each run of `work` begins (collect -> map_runs)
    core::PinTable::RunLock run_lock;       // one run's page locks
    telemetry::StatsShard* stats = nullptr;

    // Written by the intake (Idle -> InFlight/Rescan) and the worker (-> Idle).
    alignas(64) std::atomic<SlotState> state{SlotState::Idle};
    // Intake-only: requests served from a spin pass whose trigger has not been consumed yet.
    uint64_t pending_echo = 0;
};

}  // namespace coiommu::workers
