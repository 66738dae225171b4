// FastEngine: the throughput engine.
//
//   triggers ──epoll──► intake thread ──MpmcQueue──► N pin workers ──► slot := 0
//                        │ spins on the slots for spin_budget after each wake
//                        └ workers == 0: serves inline (no hand-off)
//   pin workers ──ExtentHandoff──► unpin service thread (LRU ticks, balloon requests)
//
// Intake protocol (one state word per vCPU, SlotState in arena.h):
//  - the intake alone moves Idle -> InFlight, when it sees a non-zero slot (acquire load) and
//    queues {vcpu, value, t0}; the value is read once and only our copy is used;
//  - a trigger for an InFlight vCPU moves it to Rescan (the guest may already have written its next
//    request in the window between the worker zeroing the slot and marking the vCPU Idle);
//  - the worker, after completing the slot (release store of 0), exchanges the state to Idle; if it
//    was Rescan it signals the vCPU's trigger eventfd again, so the intake looks once more;
//  - pending_echo: a request the spin pass served before its trigger was read leaves a trigger
//    behind; consuming it is benign (not a "slot 0" error). A trigger that finds the slot empty
//    with no echo owed is a spurious trigger: counted (InvalidRequest) and logged, nothing else.
// Requests of one vCPU are strictly serial (the guest waits), so at most `vcpus` items are ever
// queued and the queue (capacity >= vcpus) never fills.
//
// Workers pop with a spin of spin_budget, then a futex wait (EventCount). With 2 cores shared by
// a spinning guest, the intake and the workers, every spin loop yields the CPU every few
// microseconds (sched_yield), so a spinner never starves the thread it waits for.
//
// Lifecycle (PinEngine's order, driven by Engine): create() allocates everything (arenas, pin
// table, extent map, queue); prepare() makes the DTT walkers and the ExtentUnpinner; start_pinning()
// starts the intake and the workers; stop_pinning() signals a stop eventfd, joins the intake, lets
// the workers drain the queue and joins them; teardown() unmaps every extent
// (ExtentUnpinner::teardown) so the backend keeps no mapping of ours.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/unique_fd.h"
#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/config.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/mpmc_queue.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/pin_engine.h"
#include "engine/workers/unpinner.h"

namespace coiommu::workers {

class FastEngine final : public PinEngine {
public:
    // Errors: EINVAL for inconsistent deps (no slots/triggers, more triggers than slots, more than
    // 1024 vCPUs); allocation errors of the tables and arenas.
    // `stats` and `gate` must outlive the engine.
    [[nodiscard]] static Result<std::unique_ptr<FastEngine>> create(const EngineConfig& cfg, const EngineDeps& deps,
                                                                    telemetry::StatsRegistry& stats, ParkGate& gate);
    ~FastEngine() override;

    [[nodiscard]] Result<UnpinStrategy*> prepare(Gpa dtt_root, uint64_t dtt_level) override;
    [[nodiscard]] Status adopt(std::span<const GfnRange> extents) override;
    [[nodiscard]] Status start_pinning() override;
    void stop_pinning() override;
    uint64_t teardown() override;
    [[nodiscard]] uint64_t recorded_pages() const override { return table_.mapped_pages(); }

    // Introspection for tests and benchmarks.
    [[nodiscard]] const core::PinTable& pin_table() const { return table_; }
    [[nodiscard]] const ExtentMap& extents() const { return extents_; }
    [[nodiscard]] uint64_t spurious_triggers() const { return spurious_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint64_t rescans() const { return rescans_.load(std::memory_order_relaxed); }

private:
    struct Item {
        uint32_t vcpu;
        uint64_t value;
        uint64_t t0_ns;
    };
    enum class Attempt { Served, Busy, Empty };

    FastEngine(const EngineConfig& cfg, const EngineDeps& deps, telemetry::StatsRegistry& stats, ParkGate& gate,
               core::PinTable table, ExtentMap extents, ExtentHandoff handoff);

    void run_intake();
    void arm_trace_timer(uint64_t due_ns);
    void on_trigger(VcpuArena& a);
    Attempt try_serve(VcpuArena& a);
    void dispatch(VcpuArena& a, uint64_t value);
    void spin_pass();
    void run_worker();
    bool pop(Item& out, telemetry::RequestTraceBatch& trace);
    void finish(VcpuArena& a);

    EngineConfig cfg_;
    const GuestMemory& mem_;
    dma::DmaBackend& backend_;
    std::vector<int> trigger_fds_;
    telemetry::StatsRegistry& stats_;
    core::PinTable table_;
    ExtentMap extents_;
    ExtentHandoff handoff_;
    core::EndpointSet endpoints_;
    PinEnv env_;
    std::vector<std::unique_ptr<VcpuArena>> arenas_;
    MpmcQueue<Item> queue_;
    std::chrono::nanoseconds spin_budget_;  // effective_spin_budget(cfg_)
    uint32_t workers_count_;                // effective_workers(cfg_)
    EventCount queue_ec_;
    ParkGate& gate_;
    std::unique_ptr<ExtentUnpinner> unpinner_;
    EventFd stop_ev_;
    UniqueFd trace_timer_;                       // intake_trace_'s flush deadline while the intake blocks
    std::atomic<bool> stopping_{false};          // the intake leaves
    std::atomic<bool> workers_stopping_{false};  // the workers leave once the queue is empty
    std::thread intake_;
    // Requests the intake serves inline (or counts as spurious); only the intake thread uses it.
    telemetry::RequestTraceBatch intake_trace_;
    uint64_t last_inline_end_ns_ = 0;  // end of the intake's latest inline serve (intake thread only)
    std::vector<std::thread> workers_;
    bool pinning_stopped_ = false;
    std::atomic<uint64_t> spurious_{0};
    std::atomic<uint64_t> rescans_{0};
};

}  // namespace coiommu::workers
