// Helpers that turn plain numbers and telemetry snapshots into prometheus-cpp MetricFamily /
// ClientMetric values at scrape time (the hot path never sees these types).
//
//   auto f = counter_family("coiommu_pin_requests_total", "Guest pin requests.");
//   add_counter(f, totals.requests[RequestKind::Batch], {{"kind", "batch"}});
//   auto h = histogram_family("coiommu_dma_call_duration_seconds", "...");
//   add_histogram(h, totals.dma_call_latency_ns[DmaOp::Map], kNanosecondsToSeconds, {{"op", "map"}});
//
// Histograms: a Log2Histogram's bucket k holds values ≤ 2^k (in the recorded unit). A
// HistogramScale picks a fixed, contiguous range of those buckets to emit as `le` bounds
// (2^k × unit_to_base), so every scrape has the same series. Buckets below the range fold into the
// first bound (cumulative counts include them anyway); values above the range are counted only by
// `+Inf`, which prometheus-cpp's serializer appends with the value of `_count`. `_count` is the
// sum of all buckets, so `+Inf` == `_count` even while writers race.
//
// Pure functions, no I/O, no exceptions of their own (std::bad_alloc aside).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>

#include "engine/telemetry/histogram.h"

namespace coiommu::exporter {

using Labels = std::vector<prometheus::ClientMetric::Label>;

struct HistogramScale {
    double unit_to_base = 1.0;     // multiplier from the recorded unit to the base unit (1e-9: ns → s)
    std::size_t first_bucket = 0;  // lowest log2 bucket emitted as its own `le`
    std::size_t last_bucket = 0;   // highest log2 bucket emitted; above it only `+Inf`
};

// Durations recorded in ns, exported in seconds with bounds 2^10 ns (1.024 µs) … 2^36 ns (68.7 s):
// 27 buckets, the "1 µs … 2^26 µs" range of ebpf_exporter's biolatency.
inline constexpr HistogramScale kNanosecondsToSeconds{1e-9, 10, 36};
// Counts (pages per request): bounds 1, 2, 4, … 2^20 (4 GiB of 4 KiB pages).
inline constexpr HistogramScale kCountBuckets{1.0, 0, 20};

[[nodiscard]] prometheus::MetricFamily counter_family(std::string name, std::string help);
[[nodiscard]] prometheus::MetricFamily gauge_family(std::string name, std::string help);
[[nodiscard]] prometheus::MetricFamily histogram_family(std::string name, std::string help);

// Appends one sample. Preconditions: the family has the matching type.
void add_counter(prometheus::MetricFamily& family, double value, Labels labels = {});
void add_gauge(prometheus::MetricFamily& family, double value, Labels labels = {});
void add_histogram(prometheus::MetricFamily& family, const telemetry::HistogramSnapshot& snapshot,
                   const HistogramScale& scale, Labels labels = {});

// The ClientMetric::Histogram for a snapshot (what add_histogram appends), exposed for tests.
[[nodiscard]] prometheus::ClientMetric::Histogram to_client_histogram(const telemetry::HistogramSnapshot& snapshot,
                                                                      const HistogramScale& scale);

// The same for any array of log2 buckets (buckets[k] counts values <= 2^k; e.g. the BPF maps'
// slots): `sum` is in the recorded unit. The scale is clamped to the array (last_bucket <
// buckets.size()); buckets above it are counted by `+Inf` only, so a trailing overflow slot
// must stay above scale.last_bucket. Empty buckets in range are emitted (backfilled) with the
// running cumulative count, so every scrape has the same `le` series.
[[nodiscard]] prometheus::ClientMetric::Histogram to_client_histogram(std::span<const uint64_t> buckets, uint64_t sum,
                                                                      const HistogramScale& scale);
void add_histogram(prometheus::MetricFamily& family, std::span<const uint64_t> buckets, uint64_t sum,
                   const HistogramScale& scale, Labels labels = {});

// The `le` bound of log2 bucket k under `scale`: 2^k × unit_to_base.
[[nodiscard]] double bucket_bound(std::size_t k, const HistogramScale& scale);

}  // namespace coiommu::exporter
