// The engine's statistics schema: what the pinner, workers, unpinner and virtio-iommu mapper
// count, and what the exporter (exporter/engine_collector) and load reports read.
//
// How the engine fills it:
//   StatsRegistry stats(num_vcpus);                       // one shard per vCPU arena
//   StatsShard& s = stats.shard(vcpu);                    // at arena setup; keep the reference
//   ... per request (never per page):
//   s.requests[RequestKind::Batch].add();
//   s.pages_requested.add(n);  s.pages_pinned.add(newly);  s.pages_already_pinned.add(already);
//   s.request_latency_ns[RequestKind::Batch].observe(monotonic_ns() - t0);
//   stats.gauges().pinned_pages.add(newly);               // engine-wide: once per request
// The unpinner and other non-vCPU threads take their own shard with add_shard().
//
// Rules: counters only grow; per-page quantities are added once per request or per DMA call
// (`add(n)`), not once per page. Every field is a relaxed atomic: a shard may be written by
// several threads (they contend, nothing is lost), but is meant to have one. Durations are in
// nanoseconds (`_ns`), sizes in pages or bytes as named; the exporter converts to base units.
// This header has no Prometheus dependency; the label values below are shared vocabulary.
// exporter/METRICS.md maps every field to the metric it is exported as.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/base/domain.h"
#include "engine/telemetry/counters.h"
#include "engine/telemetry/histogram.h"
#include "engine/telemetry/probes.h"

namespace coiommu::telemetry {

// RequestKind {Single, Batch} and ScanKind {Lru, Balloon} come from probes.h (the USDT ABI).
inline constexpr std::size_t kRequestKinds = 2;
inline constexpr std::size_t kScanKinds = 2;

// Why a page the guest asked for did not get pinned.
enum class PinFailureReason : uint8_t {
    VfioMap = 0,         // the DMA backend's map failed (an Error: EFAULT, ENOMEM, EPERM, ...)
    NoSpace = 1,         // the backend is at its entry limit (MapOutcome::NoSpace / ENOSPC)
    InvalidRequest = 2,  // bad guest input: BDF, gfn outside RAM, DTT walk, page list
    Other = 3,
};
inline constexpr std::size_t kPinFailureReasons = 4;

// Counters are indexed by the domain's outcomes (engine/base/domain.h).
using coiommu::BalloonResult;
using coiommu::kBalloonResults;
using coiommu::kUnpinResults;
using coiommu::UnpinResult;

enum class DmaOp : uint8_t { Map = 0, Unmap = 1 };
inline constexpr std::size_t kDmaOps = 2;

// Label values (snake_case, stable: dashboards and alerts match on them), indexed by enumerator.
inline constexpr std::array<std::string_view, kRequestKinds> kRequestKindLabels{"single", "batch"};
inline constexpr std::array<std::string_view, kScanKinds> kScanKindLabels{"lru", "balloon"};
inline constexpr std::array<std::string_view, kPinFailureReasons> kPinFailureReasonLabels{"vfio_map", "no_space",
                                                                                          "invalid_request", "other"};
inline constexpr std::array<std::string_view, kUnpinResults> kUnpinResultLabels{"unpinned", "not_pinned",
                                                                                "not_unpinned", "failed", "parked"};
inline constexpr std::array<std::string_view, kBalloonResults> kBalloonResultLabels{"success", "failed"};
inline constexpr std::array<std::string_view, kDmaOps> kDmaOpLabels{"map", "unmap"};

// The per-shard fields, written once for two cell types: live atomics in StatsShard
// (C = Counter, H = Log2Histogram) and plain sums in ShardTotals (uint64_t, HistogramSnapshot).
template <class C, class H>
struct StatsFields {
    // --- pin requests (the guest's notify path; one request = one notification) ---
    EnumArray<RequestKind, C, kRequestKinds> requests{};
    C pages_requested{};       // pages named by requests: the pin attempts
    C pages_pinned{};          // pages newly pinned (mapped) for the guest
    C pages_already_pinned{};  // requested pages that were already pinned (no DMA call)
    // Pages that could not be pinned, by reason (a request rejected before its pages could be
    // counted, e.g. an unreadable page list, counts as one).
    EnumArray<PinFailureReason, C, kPinFailureReasons> pin_failures{};
    C requests_failed{};  // requests completed with at least one page left unpinned (guest-visible)
    EnumArray<RequestKind, H, kRequestKinds> request_latency_ns{};  // notify seen → slot completed
    H pages_per_request{};

    // --- DMA backend calls (a coalesced extent is one call) ---
    EnumArray<DmaOp, C, kDmaOps> dma_calls{};
    EnumArray<DmaOp, C, kDmaOps> dma_call_failures{};  // Errors and NoSpace; AlreadyMapped is not one
    EnumArray<DmaOp, C, kDmaOps> dma_bytes{};          // bytes mapped / unmapped by successful calls
    EnumArray<DmaOp, H, kDmaOps> dma_call_latency_ns{};

    // --- unpinning (LRU generations and balloon requests) ---
    C pages_unpinned{};
    EnumArray<UnpinResult, C, kUnpinResults> unpin_attempts{};  // one per page examined
    EnumArray<ScanKind, C, kScanKinds> unpin_scans{};
    EnumArray<ScanKind, H, kScanKinds> unpin_scan_duration_ns{};
    EnumArray<BalloonResult, C, kBalloonResults> balloon_requests{};

    // --- virtio-iommu (strict per-DMA map requests from the guest's virtio-iommu driver) ---
    EnumArray<DmaOp, C, kDmaOps> viommu_requests{};
    EnumArray<DmaOp, C, kDmaOps> viommu_request_failures{};  // the guest got a non-OK status
    C viommu_fault_events{};                                 // fault events sent to the guest

    // Calls f(a_field, b_field) for every field of two StatsFields, in declaration order.
    // Adding a field: declare it above, list it here, and update kStatsFieldsBytes below.
    template <class A, class B, class F>
    static void for_each_field(A& a, B& b, F&& f) {
        f(a.requests, b.requests);
        f(a.pages_requested, b.pages_requested);
        f(a.pages_pinned, b.pages_pinned);
        f(a.pages_already_pinned, b.pages_already_pinned);
        f(a.pin_failures, b.pin_failures);
        f(a.requests_failed, b.requests_failed);
        f(a.request_latency_ns, b.request_latency_ns);
        f(a.pages_per_request, b.pages_per_request);
        f(a.dma_calls, b.dma_calls);
        f(a.dma_call_failures, b.dma_call_failures);
        f(a.dma_bytes, b.dma_bytes);
        f(a.dma_call_latency_ns, b.dma_call_latency_ns);
        f(a.pages_unpinned, b.pages_unpinned);
        f(a.unpin_attempts, b.unpin_attempts);
        f(a.unpin_scans, b.unpin_scans);
        f(a.unpin_scan_duration_ns, b.unpin_scan_duration_ns);
        f(a.balloon_requests, b.balloon_requests);
        f(a.viommu_requests, b.viommu_requests);
        f(a.viommu_request_failures, b.viommu_request_failures);
        f(a.viommu_fault_events, b.viommu_fault_events);
    }
};

// A tripwire for for_each_field: 31 counters and 7 histograms (65 words each).
inline constexpr std::size_t kStatsFieldsBytes = (31 + 7 * (kLog2Buckets + 1)) * sizeof(uint64_t);

// One writer's statistics. Aligned so that shards of different vCPUs never share a cache line.
struct alignas(kCacheLineSize) StatsShard : StatsFields<Counter, Log2Histogram> {
    StatsShard() = default;
    StatsShard(const StatsShard&) = delete;
    StatsShard& operator=(const StatsShard&) = delete;
};

// The sum of every shard: a plain value.
struct ShardTotals : StatsFields<uint64_t, HistogramSnapshot> {};
static_assert(sizeof(ShardTotals) == kStatsFieldsBytes,
              "a field was added to StatsFields: list it in for_each_field and update kStatsFieldsBytes");

// Engine-wide gauges (current values, not sums), written by whichever thread changes them.
template <class G>
struct GaugeFields {
    G pinned_pages{};            // pages the engine holds pinned now
    G dma_entries{};             // live mappings in the DMA backend (type1 entries in use)
    G dma_entry_limit{};         // the backend's entry limit (vfio_iommu_type1.dma_entry_limit)
    G queue_depth{};             // pin requests waiting for a worker
    G unpin_worker_parked{};     // 1 while the unpinner is parked (PARK_UNPIN), else 0
    G last_unpin_run_unix_ns{};  // wall-clock end of the last unpin scan, ns since epoch; 0 = never
    G guest_ram_bytes{};         // guest RAM registered with the engine
    G vcpus{};                   // vCPUs (notify slots) served
    G active_sessions{};         // VMs (VMM connections) currently served

    template <class A, class B, class F>
    static void for_each_field(A& a, B& b, F&& f) {
        f(a.pinned_pages, b.pinned_pages);
        f(a.dma_entries, b.dma_entries);
        f(a.dma_entry_limit, b.dma_entry_limit);
        f(a.queue_depth, b.queue_depth);
        f(a.unpin_worker_parked, b.unpin_worker_parked);
        f(a.last_unpin_run_unix_ns, b.last_unpin_run_unix_ns);
        f(a.guest_ram_bytes, b.guest_ram_bytes);
        f(a.vcpus, b.vcpus);
        f(a.active_sessions, b.active_sessions);
    }
};
inline constexpr std::size_t kGaugeFields = 9;

// Each gauge on its own cache line: several threads write some of them per request.
struct EngineGauges : GaugeFields<PaddedGauge> {};
struct GaugeValues : GaugeFields<uint64_t> {};
static_assert(sizeof(GaugeValues) == kGaugeFields * sizeof(uint64_t),
              "a gauge was added to GaugeFields: list it in for_each_field and update kGaugeFields");

struct StatsSnapshot {
    ShardTotals totals;
    GaugeValues gauges;
    uint64_t shards = 0;  // how many shards were summed
};

// Owns the shards and gauges of one engine (or one load-generator run).
//
// Thread-safety: shard()/add_shard() at setup (internal mutex); the returned StatsShard& is then
// written lock-free by its owner. gauges() may be written by any thread. snapshot() may be called
// from any thread at any time, concurrently with writers: each cell is read once with a relaxed
// load, so the snapshot is per-cell monotonic (see histogram.h) but not an atomic cut across cells.
class StatsRegistry {
public:
    explicit StatsRegistry(std::size_t shards) : shards_(shards) {}
    StatsRegistry(const StatsRegistry&) = delete;
    StatsRegistry& operator=(const StatsRegistry&) = delete;

    // Precondition: i < shard_count().
    [[nodiscard]] StatsShard& shard(std::size_t i) { return shards_.shard(i); }
    // A new shard for another writer (the unpinner, a new session's arena).
    [[nodiscard]] StatsShard& add_shard() { return shards_.add(); }
    [[nodiscard]] std::size_t shard_count() const { return shards_.size(); }

    [[nodiscard]] EngineGauges& gauges() noexcept { return gauges_; }
    [[nodiscard]] const EngineGauges& gauges() const noexcept { return gauges_; }

    [[nodiscard]] StatsSnapshot snapshot() const;

private:
    ShardSet<StatsShard> shards_;
    EngineGauges gauges_;
};

// Adds one shard's current values into `totals` (what snapshot() does per shard).
void accumulate(ShardTotals& totals, const StatsShard& shard) noexcept;
// Adds `other` into `totals` field by field (merging snapshots of several registries).
void merge(ShardTotals& totals, const ShardTotals& other) noexcept;

}  // namespace coiommu::telemetry
