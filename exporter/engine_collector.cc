#include "exporter/engine_collector.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <set>
#include <utility>

#include <fmt/format.h>

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
using prometheus::MetricType;
using namespace telemetry;

double d(uint64_t v) { return static_cast<double>(v); }

Labels vm_only(std::string_view vm) { return {{"vm", std::string(vm)}}; }

Labels vm_and(std::string_view vm, std::string_view label, std::string_view value) {
    return {{"vm", std::string(vm)}, {std::string(label), std::string(value)}};
}

// How a family of counters or histograms takes one VM's samples from its totals; `label` is the
// family's own label besides `vm` (empty when it has none).
using TotalsEmitter = void (*)(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view label);
// How a gauge family reads one VM's value.
using GaugeReader = double (*)(const GaugeValues& g);

template <auto Member>
void one_counter(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view /*label*/) {
    add_counter(f, d(t.*Member), vm_only(vm));
}

// One sample per enumerator, labelled `label = Values[i]`: every combination exists from the
// first scrape, at 0 if nothing happened yet.
template <auto Member, const auto& Values>
void counter_per_value(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view label) {
    for (std::size_t i = 0; i < Values.size(); ++i) {
        add_counter(f, d((t.*Member).at_index(i)), vm_and(vm, label, Values[i]));
    }
}

template <auto Member, const HistogramScale& Scale>
void one_histogram(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view /*label*/) {
    add_histogram(f, t.*Member, Scale, vm_only(vm));
}

template <auto Member, const auto& Values, const HistogramScale& Scale>
void histogram_per_value(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view label) {
    for (std::size_t i = 0; i < Values.size(); ++i) {
        add_histogram(f, (t.*Member).at_index(i), Scale, vm_and(vm, label, Values[i]));
    }
}

void guest_dma_map_failures(MetricFamily& f, const ShardTotals& t, std::string_view vm, std::string_view label) {
    add_counter(f, d(t.requests_failed), vm_and(vm, label, "coiommu"));
    add_counter(f, d(t.viommu_request_failures[DmaOp::Map]), vm_and(vm, label, "virtio_iommu"));
}

// One per-VM family: counters and histograms have `totals` (each listed VM, then "(ended)"),
// gauges `gauge` (each listed VM).
struct PerVmFamily {
    MetricType type = MetricType::Untyped;
    std::string_view name;
    std::string_view help;
    std::string_view label;
    TotalsEmitter totals = nullptr;
    GaugeReader gauge = nullptr;
};

constexpr MetricType kCounter = MetricType::Counter;
constexpr MetricType kHistogram = MetricType::Histogram;
constexpr MetricType kGauge = MetricType::Gauge;
using T = ShardTotals;

// The catalogue's per-engine families, in exposition order (exporter/METRICS.md).
constexpr std::array kPerVmFamilies{
    // --- pin requests ---
    PerVmFamily{kCounter, "coiommu_pin_requests_total", "Pin requests (guest notifications) handled, by kind.", "kind",
                &counter_per_value<&T::requests, kRequestKindLabels>},
    PerVmFamily{kCounter,
                "coiommu_pin_attempts_total",
                "Pages the guest asked to pin (one attempt per page); pairs with coiommu_pin_failures_total.",
                {},
                &one_counter<&T::pages_requested>},
    PerVmFamily{kCounter,
                "coiommu_pages_pinned_total",
                "Pages newly pinned and DMA-mapped for the guest.",
                {},
                &one_counter<&T::pages_pinned>},
    PerVmFamily{kCounter,
                "coiommu_pages_already_pinned_total",
                "Requested pages that were already pinned (no DMA call needed).",
                {},
                &one_counter<&T::pages_already_pinned>},
    PerVmFamily{kCounter, "coiommu_pin_failures_total", "Pages that could not be pinned, by reason.", "reason",
                &counter_per_value<&T::pin_failures, kPinFailureReasonLabels>},
    PerVmFamily{kCounter, "coiommu_guest_dma_map_failures_total",
                "DMA-map failures the guest saw: CoIOMMU requests completed with a page left unpinned, and "
                "virtio-iommu MAP requests answered with an error.",
                "iommu", &guest_dma_map_failures},
    PerVmFamily{kHistogram, "coiommu_pin_request_duration_seconds",
                "Time from a pin request's notification to its completion, by kind.", "kind",
                &histogram_per_value<&T::request_latency_ns, kRequestKindLabels, kNanosecondsToSeconds>},
    PerVmFamily{kHistogram,
                "coiommu_pages_per_request",
                "Pages named by each pin request.",
                {},
                &one_histogram<&T::pages_per_request, kCountBuckets>},
    // --- DMA backend ---
    PerVmFamily{kCounter, "coiommu_dma_calls_total", "DMA map/unmap calls made to the backend (VFIO ioctls).", "op",
                &counter_per_value<&T::dma_calls, kDmaOpLabels>},
    PerVmFamily{kCounter, "coiommu_dma_call_failures_total",
                "DMA map/unmap calls that failed (including map calls refused at the entry limit).", "op",
                &counter_per_value<&T::dma_call_failures, kDmaOpLabels>},
    PerVmFamily{kCounter, "coiommu_dma_bytes_total", "Bytes mapped/unmapped by successful DMA calls.", "op",
                &counter_per_value<&T::dma_bytes, kDmaOpLabels>},
    PerVmFamily{kHistogram, "coiommu_dma_call_duration_seconds", "Latency of DMA map/unmap backend calls.", "op",
                &histogram_per_value<&T::dma_call_latency_ns, kDmaOpLabels, kNanosecondsToSeconds>},
    PerVmFamily{kGauge,
                "coiommu_dma_mappings",
                "Live mappings in the DMA backend (type1 DMA entries in use).",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.dma_entries); }},
    PerVmFamily{kGauge,
                "coiommu_dma_entry_limit",
                "The backend's mapping limit (vfio_iommu_type1.dma_entry_limit for VFIO).",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.dma_entry_limit); }},
    // --- pinned set ---
    PerVmFamily{kGauge,
                "coiommu_pinned_pages",
                "Guest pages currently pinned.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.pinned_pages); }},
    PerVmFamily{kGauge,
                "coiommu_pinned_bytes",
                "Guest memory currently pinned.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.pinned_pages) * d(kPageSize); }},
    PerVmFamily{kGauge,
                "coiommu_pin_queue_depth",
                "Pin requests waiting for a worker.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.queue_depth); }},
    // --- unpinning ---
    PerVmFamily{kCounter,
                "coiommu_pages_unpinned_total",
                "Pages unpinned and DMA-unmapped.",
                {},
                &one_counter<&T::pages_unpinned>},
    PerVmFamily{kCounter, "coiommu_unpin_attempts_total", "Pages examined for unpinning, by result.", "result",
                &counter_per_value<&T::unpin_attempts, kUnpinResultLabels>},
    PerVmFamily{kCounter, "coiommu_unpin_scans_total", "Unpin scans run, by kind (LRU timer or balloon request).",
                "kind", &counter_per_value<&T::unpin_scans, kScanKindLabels>},
    PerVmFamily{kHistogram, "coiommu_unpin_scan_duration_seconds", "Duration of unpin scans, by kind.", "kind",
                &histogram_per_value<&T::unpin_scan_duration_ns, kScanKindLabels, kNanosecondsToSeconds>},
    PerVmFamily{kGauge,
                "coiommu_unpin_last_run_timestamp_seconds",
                "Unix time at which the last unpin scan finished; 0 if none has run.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.last_unpin_run_unix_ns) / 1e9; }},
    PerVmFamily{kGauge,
                "coiommu_unpin_worker_parked",
                "1 while the unpin worker is parked by the guest, else 0.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.unpin_worker_parked); }},
    PerVmFamily{kCounter, "coiommu_balloon_requests_total", "Balloon unpin requests from the VMM, by result.", "result",
                &counter_per_value<&T::balloon_requests, kBalloonResultLabels>},
    // --- virtio-iommu ---
    PerVmFamily{kCounter, "coiommu_viommu_requests_total", "virtio-iommu MAP/UNMAP requests from the guest.", "op",
                &counter_per_value<&T::viommu_requests, kDmaOpLabels>},
    PerVmFamily{kCounter, "coiommu_viommu_request_failures_total",
                "virtio-iommu MAP/UNMAP requests answered with an error status.", "op",
                &counter_per_value<&T::viommu_request_failures, kDmaOpLabels>},
    PerVmFamily{kCounter,
                "coiommu_viommu_fault_events_total",
                "Fault events reported to the guest's virtio-iommu.",
                {},
                &one_counter<&T::viommu_fault_events>},
    // --- the VM ---
    PerVmFamily{kGauge,
                "coiommu_guest_ram_bytes",
                "Guest RAM registered with the engine.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.guest_ram_bytes); }},
    PerVmFamily{kGauge,
                "coiommu_vcpus",
                "vCPUs (notify slots) served.",
                {},
                nullptr,
                [](const GaugeValues& g) { return d(g.vcpus); }},
};

MetricFamily single_gauge(std::string name, std::string help, double v) {
    MetricFamily f = gauge_family(std::move(name), std::move(help));
    add_gauge(f, v);
    return f;
}

MetricFamily per_vm_family(const PerVmFamily& spec, std::span<const LabelledSnapshot> vms, const ShardTotals& ended) {
    MetricFamily f;
    f.name = std::string(spec.name);
    f.help = std::string(spec.help);
    f.type = spec.type;
    if (spec.totals != nullptr) {
        for (const auto& vm : vms) spec.totals(f, vm.snapshot->totals, vm.vm, spec.label);
        spec.totals(f, ended, kEndedVmLabel, spec.label);
    } else {
        for (const auto& vm : vms) add_gauge(f, spec.gauge(vm.snapshot->gauges), vm_only(vm.vm));
    }
    return f;
}

// Identity and configuration: the same for every VM (one daemon configuration), no `vm` label.
void process_families(const EngineInfo& info, std::vector<MetricFamily>& out) {
    MetricFamily build = gauge_family("coiommu_build_info", "Build of the running coiommu; the value is always 1.");
    add_gauge(build, 1.0, {{"version", info.build.version}, {"revision", info.build.revision}});
    out.push_back(std::move(build));
    MetricFamily config = gauge_family("coiommu_config_info", "Engine configuration; the value is always 1.");
    add_gauge(config, 1.0,
              {{"unpin_policy", info.config.unpin_policy},
               {"coalesce", info.config.coalesce},
               {"backend", info.config.backend}});
    out.push_back(std::move(config));
    out.push_back(single_gauge("coiommu_unpin_interval_seconds", "Configured interval between LRU unpin scans.",
                               info.config.unpin_interval_seconds));
    out.push_back(single_gauge("coiommu_unpin_gen_threshold",
                               "Configured number of unpin generations a page must stay idle before it is unpinned.",
                               d(info.config.unpin_gen_threshold)));
}

bool is_label_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

}  // namespace

BuildInfo this_build() { return BuildInfo{COIOMMU_VERSION, COIOMMU_REVISION}; }

std::string vm_label_base(std::string_view name) {
    if (name.empty()) return std::string(kUnnamedVmLabel);
    std::string out(name.substr(0, kMaxVmLabelBase));
    std::replace_if(
        out.begin(), out.end(), [](char c) { return !is_label_char(c); }, '_');
    return out;
}

std::vector<std::string> VmLabeler::assign(std::span<const VmSnapshot> vms) {
    std::set<uint64_t> listed;
    for (const auto& vm : vms) listed.insert(vm.key);
    std::erase_if(by_key_, [&](const auto& kv) { return listed.count(kv.first) == 0; });
    std::set<std::string> taken;
    for (const auto& [key, label] : by_key_) taken.insert(label);
    const auto fresh = [&taken](std::string_view name) {
        const std::string base = vm_label_base(name);
        std::string label = base;
        for (uint64_t n = 2; taken.count(label) != 0; ++n) label = fmt::format("{}#{}", base, n);
        taken.insert(label);
        return label;
    };
    // New keys in ascending key order, so that which duplicate gets the bare name is deterministic.
    std::vector<std::size_t> order(vms.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return vms[a].key < vms[b].key; });
    std::vector<std::string> out(vms.size());
    std::set<uint64_t> done;
    for (const std::size_t i : order) {
        const VmSnapshot& vm = vms[i];
        if (!done.insert(vm.key).second) {
            out[i] = fresh(vm.name);  // the same key twice in one report: keep the series apart
            continue;
        }
        auto it = by_key_.find(vm.key);
        if (it == by_key_.end()) it = by_key_.emplace(vm.key, fresh(vm.name)).first;
        out[i] = it->second;
    }
    return out;
}

std::vector<MetricFamily> engine_families(std::span<const LabelledSnapshot> vms, const ShardTotals& ended,
                                          uint64_t active_sessions, const EngineInfo& info) {
    std::vector<MetricFamily> out;
    out.reserve(kPerVmFamilies.size() + 5);
    process_families(info, out);
    for (const PerVmFamily& spec : kPerVmFamilies) out.push_back(per_vm_family(spec, vms, ended));
    out.push_back(
        single_gauge("coiommu_active_sessions", "VMs (VMM connections) currently served.", d(active_sessions)));
    return out;
}

std::vector<MetricFamily> engine_families(const StatsSnapshot& snapshot, const EngineInfo& info, std::string_view vm) {
    const std::string label = vm_label_base(vm);
    const std::array one{LabelledSnapshot{label, &snapshot}};
    return engine_families(one, ShardTotals{}, snapshot.gauges.active_sessions, info);
}

EngineCollector::EngineCollector(VmSource source, EngineInfo info)
    : source_(std::move(source)), info_(std::move(info)) {}

EngineCollector::EngineCollector(Source source, EngineInfo info, std::string vm_name) : info_(std::move(info)) {
    if (!source) return;  // collect_into() reports EINVAL
    source_ = [source = std::move(source), name = std::move(vm_name)] {
        VmSnapshots s;
        s.vms.push_back(VmSnapshot{1, name, source()});
        s.active_sessions = s.vms.front().snapshot.gauges.active_sessions;
        return s;
    };
}

Status EngineCollector::collect_into(std::vector<prometheus::MetricFamily>& out) const {
    if (!source_) return make_error(EINVAL, "engine collector: no snapshot source");
    const VmSnapshots s = source_();
    std::vector<std::string> labels;
    {
        std::lock_guard lock(labels_mu_);
        labels = labels_.assign(s.vms);
    }
    std::vector<LabelledSnapshot> vms;
    vms.reserve(s.vms.size());
    for (std::size_t i = 0; i < s.vms.size(); ++i) vms.push_back(LabelledSnapshot{labels[i], &s.vms[i].snapshot});
    auto families = engine_families(vms, s.ended, s.active_sessions, info_);
    for (auto& f : families) out.push_back(std::move(f));
    return ok();
}

}  // namespace coiommu::exporter
