#include "exporter/engine_collector.h"

#include <array>
#include <cerrno>
#include <string_view>
#include <utility>

#include "engine/base/addr.h"
#include "exporter/metric_builder.h"

#ifndef COIOMMU_VERSION
#define COIOMMU_VERSION "unknown"
#endif
#ifndef COIOMMU_REVISION
#define COIOMMU_REVISION "unknown"
#endif

namespace coiommu::exporter {
namespace {

using prometheus::MetricFamily;
using namespace telemetry;

double d(uint64_t v) { return static_cast<double>(v); }

// One sample per enumerator, labelled `label_name = kXxxLabels[i]`: every combination exists
// from the first scrape, at 0 if nothing happened yet.
template <class E, std::size_t N>
MetricFamily labelled_counters(std::string name, std::string help, std::string_view label_name,
                               const EnumArray<E, uint64_t, N>& values,
                               const std::array<std::string_view, N>& label_values) {
    MetricFamily f = counter_family(std::move(name), std::move(help));
    for (std::size_t i = 0; i < N; ++i) {
        add_counter(f, d(values.at_index(i)), {{std::string(label_name), std::string(label_values[i])}});
    }
    return f;
}

template <class E, std::size_t N>
MetricFamily labelled_histograms(std::string name, std::string help, std::string_view label_name,
                                 const EnumArray<E, HistogramSnapshot, N>& values,
                                 const std::array<std::string_view, N>& label_values, const HistogramScale& scale) {
    MetricFamily f = histogram_family(std::move(name), std::move(help));
    for (std::size_t i = 0; i < N; ++i) {
        add_histogram(f, values.at_index(i), scale, {{std::string(label_name), std::string(label_values[i])}});
    }
    return f;
}

MetricFamily single_counter(std::string name, std::string help, uint64_t v) {
    MetricFamily f = counter_family(std::move(name), std::move(help));
    add_counter(f, d(v));
    return f;
}

MetricFamily single_gauge(std::string name, std::string help, double v) {
    MetricFamily f = gauge_family(std::move(name), std::move(help));
    add_gauge(f, v);
    return f;
}

}  // namespace

BuildInfo this_build() { return BuildInfo{COIOMMU_VERSION, COIOMMU_REVISION}; }

std::vector<MetricFamily> engine_families(const StatsSnapshot& s, const EngineInfo& info) {
    const ShardTotals& t = s.totals;
    const GaugeValues& g = s.gauges;
    std::vector<MetricFamily> out;
    out.reserve(36);

    // --- identity and configuration ---
    {
        MetricFamily f = gauge_family("coiommu_build_info", "Build of the running coiommu; the value is always 1.");
        add_gauge(f, 1.0, {{"version", info.build.version}, {"revision", info.build.revision}});
        out.push_back(std::move(f));
    }
    {
        MetricFamily f = gauge_family("coiommu_config_info", "Engine configuration; the value is always 1.");
        add_gauge(f, 1.0,
                  {{"unpin_policy", info.config.unpin_policy},
                   {"coalesce", info.config.coalesce},
                   {"backend", info.config.backend}});
        out.push_back(std::move(f));
    }
    out.push_back(single_gauge("coiommu_unpin_interval_seconds", "Configured interval between LRU unpin scans.",
                               info.config.unpin_interval_seconds));
    out.push_back(single_gauge("coiommu_unpin_gen_threshold",
                               "Configured number of unpin generations a page must stay idle before it is unpinned.",
                               d(info.config.unpin_gen_threshold)));

    // --- pin requests ---
    out.push_back(labelled_counters("coiommu_pin_requests_total",
                                    "Pin requests (guest notifications) handled, by kind.", "kind", t.requests,
                                    kRequestKindLabels));
    out.push_back(
        single_counter("coiommu_pin_attempts_total",
                       "Pages the guest asked to pin (one attempt per page); pairs with coiommu_pin_failures_total.",
                       t.pages_requested));
    out.push_back(single_counter("coiommu_pages_pinned_total", "Pages newly pinned and DMA-mapped for the guest.",
                                 t.pages_pinned));
    out.push_back(single_counter("coiommu_pages_already_pinned_total",
                                 "Requested pages that were already pinned (no DMA call needed).",
                                 t.pages_already_pinned));
    out.push_back(labelled_counters("coiommu_pin_failures_total", "Pages that could not be pinned, by reason.",
                                    "reason", t.pin_failures, kPinFailureReasonLabels));
    {
        MetricFamily f = counter_family("coiommu_guest_dma_map_failures_total",
                                        "DMA-map failures the guest saw: CoIOMMU requests completed with a page left "
                                        "unpinned, and virtio-iommu MAP "
                                        "requests answered with an error.");
        add_counter(f, d(t.requests_failed), {{"iommu", "coiommu"}});
        add_counter(f, d(t.viommu_request_failures[DmaOp::Map]), {{"iommu", "virtio_iommu"}});
        out.push_back(std::move(f));
    }
    out.push_back(labelled_histograms("coiommu_pin_request_duration_seconds",
                                      "Time from a pin request's notification to its completion, by kind.", "kind",
                                      t.request_latency_ns, kRequestKindLabels, kNanosecondsToSeconds));
    {
        MetricFamily f = histogram_family("coiommu_pages_per_request", "Pages named by each pin request.");
        add_histogram(f, t.pages_per_request, kCountBuckets);
        out.push_back(std::move(f));
    }

    // --- DMA backend ---
    out.push_back(labelled_counters("coiommu_dma_calls_total", "DMA map/unmap calls made to the backend (VFIO ioctls).",
                                    "op", t.dma_calls, kDmaOpLabels));
    out.push_back(labelled_counters("coiommu_dma_call_failures_total",
                                    "DMA map/unmap calls that failed (including map calls refused at the entry limit).",
                                    "op", t.dma_call_failures, kDmaOpLabels));
    out.push_back(labelled_counters("coiommu_dma_bytes_total", "Bytes mapped/unmapped by successful DMA calls.", "op",
                                    t.dma_bytes, kDmaOpLabels));
    out.push_back(labelled_histograms("coiommu_dma_call_duration_seconds", "Latency of DMA map/unmap backend calls.",
                                      "op", t.dma_call_latency_ns, kDmaOpLabels, kNanosecondsToSeconds));
    out.push_back(single_gauge("coiommu_dma_mappings", "Live mappings in the DMA backend (type1 DMA entries in use).",
                               d(g.dma_entries)));
    out.push_back(single_gauge("coiommu_dma_entry_limit",
                               "The backend's mapping limit (vfio_iommu_type1.dma_entry_limit for VFIO).",
                               d(g.dma_entry_limit)));

    // --- pinned set ---
    out.push_back(single_gauge("coiommu_pinned_pages", "Guest pages currently pinned.", d(g.pinned_pages)));
    out.push_back(
        single_gauge("coiommu_pinned_bytes", "Guest memory currently pinned.", d(g.pinned_pages) * d(kPageSize)));
    out.push_back(single_gauge("coiommu_pin_queue_depth", "Pin requests waiting for a worker.", d(g.queue_depth)));

    // --- unpinning ---
    out.push_back(single_counter("coiommu_pages_unpinned_total", "Pages unpinned and DMA-unmapped.", t.pages_unpinned));
    out.push_back(labelled_counters("coiommu_unpin_attempts_total", "Pages examined for unpinning, by result.",
                                    "result", t.unpin_attempts, kUnpinResultLabels));
    out.push_back(labelled_counters("coiommu_unpin_scans_total",
                                    "Unpin scans run, by kind (LRU timer or balloon request).", "kind", t.unpin_scans,
                                    kScanKindLabels));
    out.push_back(labelled_histograms("coiommu_unpin_scan_duration_seconds", "Duration of unpin scans, by kind.",
                                      "kind", t.unpin_scan_duration_ns, kScanKindLabels, kNanosecondsToSeconds));
    out.push_back(single_gauge("coiommu_unpin_last_run_timestamp_seconds",
                               "Unix time at which the last unpin scan finished; 0 if none has run.",
                               d(g.last_unpin_run_unix_ns) / 1e9));
    out.push_back(single_gauge("coiommu_unpin_worker_parked",
                               "1 while the unpin worker is parked by the guest, else 0.", d(g.unpin_worker_parked)));
    out.push_back(labelled_counters("coiommu_balloon_requests_total", "Balloon unpin requests from the VMM, by result.",
                                    "result", t.balloon_requests, kBalloonResultLabels));

    // --- virtio-iommu ---
    out.push_back(labelled_counters("coiommu_viommu_requests_total", "virtio-iommu MAP/UNMAP requests from the guest.",
                                    "op", t.viommu_requests, kDmaOpLabels));
    out.push_back(labelled_counters("coiommu_viommu_request_failures_total",
                                    "virtio-iommu MAP/UNMAP requests answered with an error status.", "op",
                                    t.viommu_request_failures, kDmaOpLabels));
    out.push_back(single_counter("coiommu_viommu_fault_events_total",
                                 "Fault events reported to the guest's virtio-iommu.", t.viommu_fault_events));

    // --- the VMs served ---
    out.push_back(
        single_gauge("coiommu_guest_ram_bytes", "Guest RAM registered with the engine.", d(g.guest_ram_bytes)));
    out.push_back(single_gauge("coiommu_vcpus", "vCPUs (notify slots) served.", d(g.vcpus)));
    out.push_back(
        single_gauge("coiommu_active_sessions", "VMs (VMM connections) currently served.", d(g.active_sessions)));
    return out;
}

EngineCollector::EngineCollector(Source source, EngineInfo info) : source_(std::move(source)), info_(std::move(info)) {}

Status EngineCollector::collect_into(std::vector<prometheus::MetricFamily>& out) const {
    if (!source_) return make_error(EINVAL, "engine collector: no snapshot source");
    auto families = engine_families(source_(), info_);
    for (auto& f : families) out.push_back(std::move(f));
    return ok();
}

}  // namespace coiommu::exporter
