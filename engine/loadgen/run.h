// The run driver: one cell of the matrix (workload x strategy x engine) from setup to teardown.
//
//   setup     guest RAM (memfd), the DMA backend, the strategy (coiommu: device + engine through an
//             InProcessLink, the guest's DTT and driver, BAR0 programming)
//   run       N vCPU threads (one WorkloadGen + one VcpuDma each), a balloon thread for the balloon
//             and mix workloads, and this thread sampling every 100 ms (and printing the progress
//             line once a second)
//   finish    vCPUs unmap what they hold; the strategy quiesces (PARK_UNPIN); the final counts are
//             cross-checked; the strategy shuts down (the engine unmaps everything) and the
//             backend must be left without a mapping.
//
// The safety invariant is checked before and after every emulated DMA (right after the map and
// right before the unmap): every page of the buffer is mapped in the DMA backend at the IOVA the
// device uses. It needs a backend that can answer (fake); with null and vfio the check is skipped
// and the result says so. With --connect (a coiommud serves through a SocketLink) the check is the
// daemon's QueryMapped (fake backend), and the backend figures come from the daemon's statistics.
//
// Thread-safety: run_once() is called by one thread at a time.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/loadgen/options.h"
#include "engine/loadgen/strategy.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/telemetry/histogram.h"

namespace coiommu::loadgen {

struct LatencySummary {
    uint64_t count = 0;
    uint64_t min = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;  // ns
    double mean = 0;

    [[nodiscard]] static LatencySummary of(const telemetry::LogLinearSnapshot& s);
};

// One sample of the timeline (every 100 ms).
struct Sample {
    double t_s = 0;                    // since the vCPUs started
    uint64_t pinned_pages = 0;         // pages mapped in the DMA backend now (bytes mapped - unmapped)
    uint64_t dma_entries = 0;          // live backend entries
    uint64_t maps = 0;                 // guest DMA maps so far
    uint64_t pages_mapped = 0;         // guest pages DMA-mapped so far
    uint64_t failures = 0;             // failed maps so far
    double maps_per_s = 0;             // over the last interval
    double pins_per_s = 0;             // pages newly mapped in the backend per second, last interval
    uint64_t map_p99_ns = 0;           // p99 map latency over the last interval
    uint64_t engine_pinned_pages = 0;  // the engine's gauge (coiommu), else 0
};

struct ThreadCpu {
    std::string name;
    double cpu_s = 0;
};

// A named cross-check of the final state.
struct Check {
    std::string name;
    bool passed = true;
    std::string detail;
};

// What the engine reported (coiommu only).
struct EngineFigures {
    std::string config;
    uint64_t requests_single = 0, requests_batch = 0, requests_failed = 0;
    uint64_t pages_requested = 0, pages_pinned = 0, pages_already_pinned = 0, pages_unpinned = 0;
    std::array<uint64_t, telemetry::kPinFailureReasons> pin_failures{};
    std::array<uint64_t, telemetry::kUnpinResults> unpin_attempts{};
    uint64_t dma_map_calls = 0, dma_unmap_calls = 0;
    uint64_t pinned_pages = 0;                        // gauge at the end (before teardown)
    uint64_t request_p50_ns = 0, request_p99_ns = 0;  // the engine's log2 histogram (upper bounds)
    uint64_t balloon_success = 0, balloon_failed = 0;
    uint64_t lru_scans = 0;
};

struct RunResult {
    RunSpec spec;
    std::string label;
    std::string backend;
    std::string served_by;  // the strategy's description
    double setup_s = 0;
    double duration_s = 0;  // from the vCPUs' start to the stop signal

    // Guest-side operations.
    uint64_t maps = 0, map_failures = 0, unmaps = 0, unmap_failures = 0;
    uint64_t pages_mapped = 0, pages_unmapped = 0;
    uint64_t skipped_ops = 0;  // picks that hit a ballooned chunk and were dropped
    std::array<uint64_t, kMapFailures> failures_by_reason{};
    uint64_t notifications = 0;       // requests the guest sent the host
    uint64_t requests_completed = 0;  // of those, answered in time
    uint64_t pages_requested = 0;     // pages named by the requests of successful maps
    LatencySummary map_latency;       // every successful map, as the guest sees it
    LatencySummary request_latency;   // maps that sent a request (CoIOMMU pin / virtio-iommu MAP)
    LatencySummary unmap_latency;
    double maps_per_s = 0, pages_per_s = 0;

    // Memory pinned for DMA (pages mapped in the backend), sampled every 100 ms.
    uint64_t pinned_peak_pages = 0;
    double pinned_mean_pages = 0;
    uint64_t pinned_end_pages = 0;      // after the vCPUs stopped, before teardown
    uint64_t pages_pinned_total = 0;    // bytes mapped / 4 KiB (over the run, setup included)
    uint64_t pages_unpinned_total = 0;  // bytes unmapped / 4 KiB (before teardown)
    uint64_t guest_touched_pages = 0;   // distinct pages the guest tried to DMA-map at least once
    double pins_per_s = 0;              // pages newly pinned per second of run

    // DMA backend calls.
    uint64_t dma_map_calls = 0, dma_unmap_calls = 0, dma_map_failures = 0, dma_unmap_failures = 0;
    uint64_t dma_entries_peak = 0, dma_entry_limit = 0;

    // The safety invariant.
    bool invariant_checked = false;
    std::string invariant_note;
    uint64_t invariant_checks = 0, invariant_violations = 0;

    // Balloon.
    uint64_t balloon_requests = 0, balloon_success = 0, balloon_failed = 0, balloon_aborted = 0;
    uint64_t balloon_violations = 0;  // Success, yet a page of the range is still mapped
    uint64_t balloon_pages = 0;
    LatencySummary balloon_latency;

    std::optional<EngineFigures> engine;
    std::vector<Check> checks;
    std::vector<Sample> timeline;  // every 100 ms while the vCPUs ran
    std::vector<ThreadCpu> cpu;    // per thread: vCPUs, engine threads, others
    double process_cpu_s = 0;      // the whole process, from setup to teardown
    // --connect --reconnect: sessions resumed after the daemon went away, and the audits of the
    // host record against the container at each loss (fake backend).
    uint64_t resumes = 0;
    uint64_t restart_audits = 0;
    uint64_t restart_audits_inconsistent = 0;

    // Invariant held, no balloon violation, every check passed.
    [[nodiscard]] bool passed() const;
};

// How the caller watches and steers a run.
struct RunControl {
    std::FILE* progress = nullptr;              // where the once-a-second progress line goes (nullptr: none)
    bool tty = false;                           // the line rewrites itself (\r) instead of scrolling
    const std::atomic<bool>* cancel = nullptr;  // when it becomes true the run ends early (Ctrl-C)
};

// Runs one cell. Errors: setup failures (bad geometry, backend or strategy creation), with context.
// A run that breaks the invariant is not an Error: see RunResult::passed().
[[nodiscard]] Result<RunResult> run_once(const LoadOptions& o, const RunSpec& spec, const RunControl& control);

}  // namespace coiommu::loadgen
