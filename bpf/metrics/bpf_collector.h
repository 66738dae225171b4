// The BPF -> Prometheus adapter (library coiommu::bpf_metrics: depends on the exporter's Collector
// interface and bpf/loader's snapshot types; exporter/ never includes bpf/). The scrape-time
// collector over the BPF side: the vfio_dma syscall-tracepoint maps (kernel-observed
// VFIO/iommufd map and unmap latency, calls by result, bytes), the engine USDT maps when that
// program is attached, the optional fentry hooks, and the programs' own health (info, attached,
// run time). Catalogue: exporter/METRICS.md, section "BPF".
//
// Like EngineCollector it takes a snapshot source, not the tracer, so it builds and tests without
// libbpf or privileges:
//   SlowEventCounter slow;  // bumped by whoever polls VfioDmaTracer::poll_slow_events()
//   auto c = std::make_shared<BpfCollector>(tracing_source(tracing, &slow, threshold));  // bpf_tracing_source.h
// The maps are read, never reset: every counter is a total since the programs were loaded, which
// is what Prometheus needs (rate() handles a reload as a counter reset).
//
// Histograms: the BPF log2 slots (slot k holds ceil(log2 v) == k, i.e. v <= 2^k ns) become `le`
// bounds 2^k × 1e-9 s for k = 8..36 (256 ns .. 68.7 s): a traced ioctl on an idle host costs a
// few hundred ns, so the range starts lower than the engine's 1.024 µs. Every bound is emitted
// even when its slot is empty (backfilled), slots below the range fold into the first bound,
// slots above it (and the overflow slot) only into `+Inf`, and `_count` is the sum of the slots,
// so `+Inf` == `_count` even while the programs write during the read.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include <prometheus/metric_family.h>

// TelemetrySnapshot: plain types only (snapshot.h); the tracer classes it sits beside are not used.
#include "bpf/loader/tracing.h"
#include "engine/base/result.h"
#include "exporter/collector.h"
#include "exporter/metric_builder.h"

namespace coiommu::exporter {

// BPF latencies: ns slots exported in seconds, bounds 2^8 ns (256 ns) … 2^36 ns (68.7 s), 29 bounds.
inline constexpr HistogramScale kBpfNanosecondsToSeconds{1e-9, 8, 36};
static_assert(kBpfNanosecondsToSeconds.last_bucket < bpf::kOverflowSlot, "the overflow slot must stay in +Inf");

// Counts the slow-call events a consumer has taken off the vfio_dma ring buffer
// (VfioDmaTracer::poll_slow_events): the poller calls add(), scrapes read value().
// Thread-safety: any thread (relaxed atomics: a plain event count).
class SlowEventCounter {
public:
    void add(uint64_t n = 1) noexcept { n_.fetch_add(n, std::memory_order_relaxed); }
    [[nodiscard]] uint64_t value() const noexcept { return n_.load(std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> n_{0};
};

// Everything one scrape of the BPF side sees.
struct BpfScrape {
    bpf::TelemetrySnapshot telemetry;
    // Slow events received by this process's ring-buffer consumer (0 when nobody polls).
    uint64_t slow_events_received = 0;
    // The slow threshold the vfio_dma program was loaded with; nullopt: no slow events.
    std::optional<std::chrono::nanoseconds> slow_threshold;
};

// The `op` label of a vfio_dma op: "map", "unmap", "ioas_map", "ioas_unmap" (VFIO type1
// MAP_DMA/UNMAP_DMA and iommufd IOAS_MAP/IOAS_UNMAP).
[[nodiscard]] std::string_view bpf_op_label(bpf::VfioOp op);

// Maps one scrape to the catalogue's coiommu_bpf_* families. Pure; exposed for tests and
// benchmarks. Engine (coiommu_bpf_engine_*) and fentry (coiommu_bpf_kernel_*) families are
// emitted only when the snapshot has them (that tracer is attached); every other label
// combination is present from the first scrape. Programs are labelled by name; a second program
// with a name already seen is dropped and reported through `duplicates` (when non-null).
[[nodiscard]] std::vector<prometheus::MetricFamily> bpf_families(const BpfScrape& scrape,
                                                                 std::size_t* duplicates = nullptr);

class BpfCollector final : public Collector {
public:
    // Called once per scrape on a civetweb thread: must be thread-safe (bpf::Tracing::snapshot()
    // is, against other snapshots and the slow-event poller).
    using Source = std::function<Result<BpfScrape>()>;

    explicit BpfCollector(Source source);

    // Errors: EINVAL when the source is empty; the source's Error (nothing is appended then: the
    // maps could not be read, and coiommu_exporter_collector_success{collector="bpf"} says so);
    // EEXIST when programs shared a name (the rest is appended).
    [[nodiscard]] Status collect_into(std::vector<prometheus::MetricFamily>& out) const override;

private:
    Source source_;
};

}  // namespace coiommu::exporter
