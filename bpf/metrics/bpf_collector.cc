#include "bpf/metrics/bpf_collector.h"

#include <array>
#include <cerrno>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace coiommu::exporter {
namespace {

using prometheus::MetricFamily;

double d(uint64_t v) { return static_cast<double>(v); }

std::string s(std::string_view v) { return std::string(v); }

void add_log2(MetricFamily& f, const bpf::Log2Hist& h, const HistogramScale& scale, Labels labels) {
    add_histogram(f, std::span<const uint64_t>(h.slots), h.sum, scale, std::move(labels));
}

void vfio_dma_families(const BpfScrape& in, std::vector<MetricFamily>& out) {
    const bpf::VfioDmaSnapshot& v = in.telemetry.vfio_dma;
    MetricFamily duration = histogram_family(
        "coiommu_bpf_dma_duration_seconds",
        "Kernel-observed latency of VFIO DMA map/unmap calls, fentry/fexit of the VFIO ioctl handler or "
        "sys_enter/exit of ioctl, by op.");
    MetricFamily calls =
        counter_family("coiommu_bpf_dma_calls_total",
                       "VFIO DMA map/unmap calls seen by the kernel hooks (VFIO ioctl handler or ioctl syscall), by "
                       "op and result class.");
    MetricFamily bytes = counter_family("coiommu_bpf_dma_bytes_total",
                                        "Bytes named by VFIO DMA map/unmap ioctls (the size/length argument), by op.");
    for (std::size_t i = 0; i < bpf::kVfioOpCount; ++i) {
        const auto op = static_cast<bpf::VfioOp>(i);
        const std::string label = s(bpf_op_label(op));
        add_log2(duration, v.latency(op), kBpfNanosecondsToSeconds, {{"op", label}});
        const bpf::VfioCalls& c = v.calls_of(op);
        for (std::size_t r = 0; r < bpf::kResultClassCount; ++r) {
            add_counter(calls, d(c.by_result[r]),
                        {{"op", label}, {"result", s(bpf::result_name(static_cast<bpf::ResultClass>(r)))}});
        }
        add_counter(bytes, d(c.bytes), {{"op", label}});
    }
    out.push_back(std::move(duration));
    out.push_back(std::move(calls));
    out.push_back(std::move(bytes));

    MetricFamily read_faults = counter_family(
        "coiommu_bpf_dma_argument_read_failures_total",
        "VFIO DMA ioctls whose argument struct could not be read (counted, with size and iova recorded as 0).");
    add_counter(read_faults, d(v.drops.read_fault));
    out.push_back(std::move(read_faults));

    MetricFamily in_flight = gauge_family("coiommu_bpf_dma_calls_in_flight",
                                          "VFIO DMA calls between their entry and exit hooks at scrape time.");
    add_gauge(in_flight, d(v.inflight_entries));
    out.push_back(std::move(in_flight));
    MetricFamily in_flight_limit = gauge_family(
        "coiommu_bpf_dma_calls_in_flight_limit",
        "Threads the in-flight map can track at once; beyond it calls are lost (coiommu_bpf_events_lost_total).");
    add_gauge(in_flight_limit, d(v.inflight_max_entries));
    out.push_back(std::move(in_flight_limit));

    // Every slow call produced a ring-buffer record or a failed reserve (ringbuf_full): both count.
    MetricFamily slow =
        counter_family("coiommu_bpf_slow_events_total",
                       "VFIO DMA ioctls at or above the slow threshold (ring-buffer events received plus those lost).");
    add_counter(slow, d(in.slow_events_received + v.drops.ringbuf_full));
    out.push_back(std::move(slow));
    if (in.slow_threshold) {  // absent: slow events are off
        MetricFamily threshold =
            gauge_family("coiommu_bpf_slow_threshold_seconds",
                         "Latency at or above which a VFIO DMA ioctl is reported as a slow event.");
        add_gauge(threshold, static_cast<double>(in.slow_threshold->count()) * 1e-9);
        out.push_back(std::move(threshold));
    }

    MetricFamily lost = counter_family("coiommu_bpf_events_lost_total",
                                       "Observations the BPF programs could not record, by the map that was full.");
    add_counter(lost, d(v.drops.inflight_full), {{"map", "vfio_dma_flight"}});
    add_counter(lost, d(v.drops.ringbuf_full), {{"map", "vfio_dma_events"}});
    out.push_back(std::move(lost));
}

std::size_t program_families(const std::vector<bpf::ProgramInfo>& programs, std::vector<MetricFamily>& out) {
    MetricFamily info =
        gauge_family("coiommu_bpf_program_info", "A BPF program loaded by coiommu; the value is always 1.");
    MetricFamily attached =
        gauge_family("coiommu_bpf_program_attached", "1 while the BPF program is attached to its hook, else 0.");
    MetricFamily run_seconds =
        counter_family("coiommu_bpf_program_run_seconds_total",
                       "Time the kernel spent running the program (grows only while BPF run-time stats are enabled).");
    MetricFamily runs = counter_family("coiommu_bpf_program_runs_total",
                                       "Runs of the program (counted only while BPF run-time stats are enabled).");
    std::set<std::string> seen;
    std::size_t duplicates = 0;
    for (const bpf::ProgramInfo& p : programs) {
        if (!seen.insert(p.program).second) {
            ++duplicates;
            continue;
        }
        add_gauge(info, 1.0,
                  {{"program", p.program}, {"id", std::to_string(p.id)}, {"tag", p.tag}, {"attach", p.attach}});
        add_gauge(attached, p.attached ? 1.0 : 0.0, {{"program", p.program}});
        add_counter(run_seconds, d(p.run_time_ns) * 1e-9, {{"program", p.program}});
        add_counter(runs, d(p.run_cnt), {{"program", p.program}});
    }
    out.push_back(std::move(info));
    out.push_back(std::move(attached));
    out.push_back(std::move(run_seconds));
    out.push_back(std::move(runs));
    return duplicates;
}

void engine_families(const bpf::EngineSnapshot& e, std::vector<MetricFamily>& out) {
    MetricFamily req_duration = histogram_family(
        "coiommu_bpf_engine_request_duration_seconds",
        "Engine pin request latency (notify seen to slot completed) from its request_done USDT probe, by kind.");
    MetricFamily req_pages = histogram_family("coiommu_bpf_engine_pages_per_request",
                                              "Pages per engine pin request, from its USDT probes, by kind.");
    MetricFamily requests = counter_family("coiommu_bpf_engine_requests_total",
                                           "Engine pin requests completed, from its USDT probes, by kind and result.");
    for (std::size_t k = 0; k < bpf::kEngineRequestKinds; ++k) {
        const std::string kind = s(bpf::request_kind_name(k));
        add_log2(req_duration, e.request_latency_ns[k], kBpfNanosecondsToSeconds, {{"kind", kind}});
        add_log2(req_pages, e.request_pages[k], kCountBuckets, {{"kind", kind}});
        add_counter(requests, d(e.requests[k].ok), {{"kind", kind}, {"result", "ok"}});
        add_counter(requests, d(e.requests[k].failed), {{"kind", kind}, {"result", "failed"}});
    }
    out.push_back(std::move(req_duration));
    out.push_back(std::move(req_pages));
    out.push_back(std::move(requests));

    MetricFamily dma_duration =
        histogram_family("coiommu_bpf_engine_dma_call_duration_seconds",
                         "Engine-measured DMA map/unmap call latency, from its USDT probes, by op.");
    MetricFamily dma_calls = counter_family("coiommu_bpf_engine_dma_calls_total",
                                            "Engine DMA map/unmap calls, from its USDT probes, by op and result.");
    MetricFamily dma_bytes = counter_family("coiommu_bpf_engine_dma_bytes_total",
                                            "Bytes of the engine's DMA map/unmap calls, from its USDT probes, by op.");
    for (std::size_t op = 0; op < bpf::kEngineDmaOps; ++op) {
        const std::string label = s(bpf::engine_dma_op_name(op));
        add_log2(dma_duration, e.dma_latency_ns[op], kBpfNanosecondsToSeconds, {{"op", label}});
        add_counter(dma_calls, d(e.dma_calls[op].ok), {{"op", label}, {"result", "ok"}});
        add_counter(dma_calls, d(e.dma_calls[op].failed), {{"op", label}, {"result", "failed"}});
        add_counter(dma_bytes, d(e.dma_calls[op].bytes), {{"op", label}});
    }
    out.push_back(std::move(dma_duration));
    out.push_back(std::move(dma_calls));
    out.push_back(std::move(dma_bytes));

    MetricFamily scan_duration = histogram_family("coiommu_bpf_engine_unpin_scan_duration_seconds",
                                                  "Engine unpin scan duration, from its USDT probes, by kind.");
    MetricFamily scans =
        counter_family("coiommu_bpf_engine_unpin_scans_total", "Engine unpin scans, from its USDT probes, by kind.");
    MetricFamily examined = counter_family("coiommu_bpf_engine_unpin_pages_examined_total",
                                           "Pages examined by engine unpin scans, from its USDT probes, by kind.");
    MetricFamily unpinned = counter_family("coiommu_bpf_engine_pages_unpinned_total",
                                           "Pages unpinned by engine unpin scans, from its USDT probes, by kind.");
    for (std::size_t k = 0; k < bpf::kEngineScanKinds; ++k) {
        const std::string kind = s(bpf::scan_kind_name(k));
        add_log2(scan_duration, e.scan_duration_ns[k], kBpfNanosecondsToSeconds, {{"kind", kind}});
        add_counter(scans, d(e.scans[k].scans), {{"kind", kind}});
        add_counter(examined, d(e.scans[k].examined), {{"kind", kind}});
        add_counter(unpinned, d(e.scans[k].unpinned), {{"kind", kind}});
    }
    out.push_back(std::move(scan_duration));
    out.push_back(std::move(scans));
    out.push_back(std::move(examined));
    out.push_back(std::move(unpinned));

    MetricFamily probe_errors = counter_family("coiommu_bpf_engine_probe_errors_total",
                                               "Engine USDT probe hits dropped because they carried an unknown kind.");
    add_counter(probe_errors, d(e.bad_kind + e.bad_batch));
    out.push_back(std::move(probe_errors));
}

void kernel_hook_families(const bpf::VfioKernSnapshot& k, std::vector<MetricFamily>& out) {
    MetricFamily f =
        histogram_family("coiommu_bpf_kernel_dma_duration_seconds",
                         "Time inside vfio_iommu_type1's map/unmap functions (fentry/fexit), by function.");
    for (std::size_t fn = 0; fn < bpf::kKernFnCount; ++fn) {
        add_log2(f, k.latency_ns[fn], kBpfNanosecondsToSeconds, {{"function", s(bpf::kern_fn_name(fn))}});
    }
    out.push_back(std::move(f));
}

}  // namespace

std::string_view bpf_op_label(bpf::VfioOp op) {
    switch (op) {
        case bpf::VfioOp::VfioMap: return "map";
        case bpf::VfioOp::VfioUnmap: return "unmap";
        case bpf::VfioOp::IoasMap: return "ioas_map";
        case bpf::VfioOp::IoasUnmap: return "ioas_unmap";
    }
    return "unknown";
}

std::vector<MetricFamily> bpf_families(const BpfScrape& scrape, std::size_t* duplicates) {
    std::vector<MetricFamily> out;
    out.reserve(32);
    vfio_dma_families(scrape, out);
    const std::size_t dups = program_families(scrape.telemetry.programs, out);
    if (duplicates != nullptr) *duplicates = dups;
    if (scrape.telemetry.engine) engine_families(*scrape.telemetry.engine, out);
    if (scrape.telemetry.kern) kernel_hook_families(*scrape.telemetry.kern, out);
    return out;
}

BpfCollector::BpfCollector(Source source) : source_(std::move(source)) {}

Status BpfCollector::collect_into(std::vector<MetricFamily>& out) const {
    if (!source_) return make_error(EINVAL, "bpf collector: no source");
    auto scrape = source_();
    if (!scrape) return coiommu::unexpected(with_context(scrape.error(), "bpf collector"));
    std::size_t duplicates = 0;
    auto families = bpf_families(*scrape, &duplicates);
    out.insert(out.end(), std::make_move_iterator(families.begin()), std::make_move_iterator(families.end()));
    if (duplicates != 0) {
        return make_error(EEXIST,
                          fmt::format("bpf collector: {} program(s) shared a name with another; dropped", duplicates));
    }
    return ok();
}

}  // namespace coiommu::exporter
