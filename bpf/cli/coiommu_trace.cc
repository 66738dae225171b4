// coiommu-trace: biolatency-style view of VFIO DMA map/unmap latency (the vfio_dma program, on the
// VFIO ioctl handlers or the ioctl syscall tracepoints: --vfio-mode) and, with --engine, of the
// engine's own request/DMA/unpin-scan latencies (USDT probes).
//
//   coiommu-trace [options] [interval [count]]      (the command line: cli/trace_options.h)
//
// Prints per-op log2 histograms every interval (or once at Ctrl-C), calls by result class and
// bytes requested. Histograms are interval deltas computed from monotonic map snapshots; the
// maps are never cleared, so pinned maps (--pin) and the exporter stay monotonic.
//
// With --exporter ADDR (when built with the exporter: COIOMMU_TRACE_EXPORTER) it also serves the
// BPF and process metrics at http://ADDR/metrics while tracing, for hosts whose VMM (crosvm,
// QEMU) runs without the coiommu engine. This is the composition root of that exporter: the
// BPF collector (bpf/metrics) and the generic exporter (exporter/) are wired here.
#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bpf/cli/trace_options.h"
#include "bpf/cli/unit_hist.h"
#include "bpf/loader/tracing.h"
#include "engine/base/log.h"
#ifdef COIOMMU_TRACE_EXPORTER
#include "bpf/metrics/bpf_collector.h"
#include "bpf/metrics/bpf_tracing_source.h"
#include "exporter/collector_set.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#endif

namespace coiommu::bpf {
namespace {

using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

std::string now_hms() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[16];
    std::strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
    return buf;
}

// "2026-12-01T20:41:09.123+00:00": local time with its UTC offset, for -T with --json.
std::string now_iso8601() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    localtime_r(&t, &tm);
    char date[32];
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    char zone[8];
    std::strftime(zone, sizeof(zone), "%z", &tm);  // "+0000"
    const std::string z(zone);
    return fmt::format("{}.{:03}{}:{}", date, ms, z.substr(0, 3), z.substr(3));
}

std::string errno_name(int64_t ret) {
    if (ret >= 0) return std::to_string(ret);
    const char* name = strerrorname_np(static_cast<int>(-ret));
    return fmt::format("{} ({})", ret, name != nullptr ? name : "?");
}

// ---- text rendering (biolatency's print_log2_hist) ----

// An average or a single latency in the unit (decimals below 100 units).
std::string format_bound(uint64_t value, const Unit& unit) {
    if (unit.ns_per_unit == 1) return std::to_string(value);
    const double v = static_cast<double>(value) / static_cast<double>(unit.ns_per_unit);
    if (v == 0) return "0";
    if (v >= 100) return fmt::format("{:.0f}", v);
    if (v >= 10) return fmt::format("{:.1f}", v);
    if (v >= 1) return fmt::format("{:.2f}", v);
    return fmt::format("{:.3f}", v);
}

// In the histogram's own unit (ns, pages) the rows are its ceil-log2 slots, `2^(k-1) -> 2^k`, from
// the lowest non-empty slot. In a coarser unit (-u, -m) they are biolatency's integer rows
// `0 -> 1`, `2 -> 3`, `4 -> 7`, ... from row 0, re-binned from the ns slots (cli/unit_hist.h says
// where a slot that straddles a row goes).
void print_hist(const Log2Hist& h, std::string_view label, const Unit& unit) {
    struct Row {
        std::string low, high;
        uint64_t count;
    };
    std::vector<Row> rows;
    if (unit.ns_per_unit == 1) {
        const int lo = h.lowest_slot();
        const int hi = h.highest_slot();
        for (int k = lo; lo >= 0 && k <= hi; ++k) {
            const auto sk = static_cast<size_t>(k);
            rows.push_back({std::to_string(Log2Hist::lower_bound(sk)),
                            sk == kOverflowSlot ? std::string("inf") : std::to_string(Log2Hist::upper_bound(sk)),
                            h.slots[sk]});
        }
    } else {
        for (const UnitHistRow& r : rebin_to_unit(h, unit.ns_per_unit)) {
            rows.push_back({std::to_string(r.low), r.high ? std::to_string(*r.high) : std::string("inf"), r.count});
        }
    }
    if (rows.empty()) return;
    uint64_t max = 0;
    size_t wl = 0, wh = 0;
    for (const Row& r : rows) {
        max = std::max(max, r.count);
        wl = std::max(wl, r.low.size());
        wh = std::max(wh, r.high.size());
    }
    wl = std::max<size_t>(wl, 10);
    wh = std::max<size_t>(wh, 10);
    constexpr size_t kStars = 40;
    const size_t range_width = wl + 4 + wh;  // "low -> high"
    fmt::print("{:5}{:<{}} : count    distribution\n", "", label, range_width - 5);
    for (const Row& r : rows) {
        const size_t stars = max == 0 ? 0 : static_cast<size_t>(r.count * kStars / max);
        fmt::print("{:>{}} -> {:<{}} : {:<8} |{:<{}}|\n", r.low, wl, r.high, wh, r.count, std::string(stars, '*'),
                   kStars);
    }
}

std::string avg(const Log2Hist& h, const Unit& unit) {
    if (h.count == 0) return "-";
    return fmt::format("{} {}", format_bound(h.sum / h.count, unit), unit.name);
}

// `mode` first: in fentry mode ioctls that never reach a VFIO handler are not counted at all.
void print_vfio_text(const VfioDmaSnapshot& d, VfioDmaMode mode, const Unit& unit) {
    fmt::print("\nvfio_dma mode = {}\n", mode_name(mode));
    bool any = false;
    for (size_t i = 0; i < kVfioOpCount; ++i) {
        const auto op = static_cast<VfioOp>(i);
        const VfioCalls& c = d.calls_of(op);
        const Log2Hist& h = d.latency(op);
        if (c.total() == 0 && h.count == 0) continue;
        any = true;
        fmt::print("\nop = {}: {} calls (", op_name(op), c.total());
        for (size_t r = 0; r < kResultClassCount; ++r) {
            fmt::print("{}{} {}", r == 0 ? "" : ", ", result_name(static_cast<ResultClass>(r)), c.by_result[r]);
        }
        fmt::print("), {} bytes, avg {}\n", c.bytes, avg(h, unit));
        print_hist(h, unit.name, unit);
    }
    if (!any) fmt::print("no VFIO DMA map/unmap calls\n");
    const auto& dr = d.drops;
    if (dr.inflight_full + dr.ringbuf_full + dr.read_fault != 0) {
        fmt::print("lost: {} calls (in-flight map full), {} slow events (ring buffer full), {} unreadable structs\n",
                   dr.inflight_full, dr.ringbuf_full, dr.read_fault);
    }
}

void print_engine_text(const EngineSnapshot& e, const Unit& unit) {
    const Unit pages{"pages", 1};
    for (size_t k = 0; k < kEngineRequestKinds; ++k) {
        const auto& r = e.requests[k];
        if (r.total() == 0) continue;
        fmt::print("\nengine requests, kind = {}: {} (ok {}, failed {}), avg latency {}\n", request_kind_name(k),
                   r.total(), r.ok, r.failed, avg(e.request_latency_ns[k], unit));
        print_hist(e.request_latency_ns[k], unit.name, unit);
        fmt::print("pages per request, kind = {}: {} pages\n", request_kind_name(k), e.request_pages[k].sum);
        print_hist(e.request_pages[k], "pages", pages);
    }
    for (size_t op = 0; op < kEngineDmaOps; ++op) {
        const auto& c = e.dma_calls[op];
        if (c.total() == 0) continue;
        fmt::print("\nengine DMA {}: {} (ok {}, failed {}), {} bytes, avg {}\n", engine_dma_op_name(op), c.total(),
                   c.ok, c.failed, c.bytes, avg(e.dma_latency_ns[op], unit));
        print_hist(e.dma_latency_ns[op], unit.name, unit);
    }
    for (size_t k = 0; k < kEngineScanKinds; ++k) {
        const auto& s = e.scans[k];
        if (s.scans == 0) continue;
        fmt::print("\nunpin scans, kind = {}: {} scans, {} examined, {} unpinned, avg {}\n", scan_kind_name(k), s.scans,
                   s.examined, s.unpinned, avg(e.scan_duration_ns[k], unit));
        print_hist(e.scan_duration_ns[k], unit.name, unit);
    }
    if (e.bad_kind + e.bad_batch != 0) {
        fmt::print(
            "engine: dropped {} probes/records with an unknown kind, {} request records unreadable or over "
            "the batch limit\n",
            e.bad_kind, e.bad_batch);
    }
}

// ---- JSON rendering (all values in ns / bytes / counts; le "+Inf" for the overflow slot) ----
// ordered_json keeps the keys in the order written here, so a line reads the way it is built.

using Json = nlohmann::ordered_json;

// One JSON line. A process name (comm) is arbitrary bytes: invalid UTF-8 is replaced, never thrown.
void print_json_line(const Json& j) { fmt::print("{}\n", j.dump(-1, ' ', false, Json::error_handler_t::replace)); }

Json json_hist(const Log2Hist& h, const Log2Hist& total) {
    Json buckets = Json::array();
    for (size_t k = 0; k < kHistSlots; ++k) {
        if (h.slots[k] == 0) continue;
        Json le = k == kOverflowSlot ? Json("+Inf") : Json(Log2Hist::upper_bound(k));
        buckets.push_back({{"le", std::move(le)}, {"count", h.slots[k]}});
    }
    return {{"count", h.count},
            {"sum", h.sum},
            {"since_start", {{"count", total.count}, {"sum", total.sum}}},
            {"buckets", std::move(buckets)}};
}

Json json_vfio(const VfioDmaSnapshot& d, const VfioDmaSnapshot& total, VfioDmaMode mode) {
    Json ops = Json::object();
    for (size_t i = 0; i < kVfioOpCount; ++i) {
        const auto op = static_cast<VfioOp>(i);
        const VfioCalls& c = d.calls_of(op);
        Json calls = Json::object();
        for (size_t r = 0; r < kResultClassCount; ++r) {
            calls[std::string(result_name(static_cast<ResultClass>(r)))] = c.by_result[r];
        }
        ops[std::string(op_name(op))] = {
            {"latency_ns", json_hist(d.latency(op), total.latency(op))},
            {"calls", std::move(calls)},
            {"count", c.total()},
            {"bytes", c.bytes},
            {"since_start", {{"count", total.calls_of(op).total()}, {"bytes", total.calls_of(op).bytes}}}};
    }
    return {{"mode", mode_name(mode)},
            {"ops", std::move(ops)},
            {"drops",
             {{"inflight_full", d.drops.inflight_full},
              {"ringbuf_full", d.drops.ringbuf_full},
              {"read_fault", d.drops.read_fault}}},
            {"inflight", total.inflight_entries}};
}

Json json_engine(const EngineSnapshot& e, const EngineSnapshot& total) {
    Json requests = Json::object();
    for (size_t k = 0; k < kEngineRequestKinds; ++k) {
        requests[std::string(request_kind_name(k))] = {
            {"ok", e.requests[k].ok},
            {"failed", e.requests[k].failed},
            {"since_start", {{"count", total.requests[k].total()}}},
            {"latency_ns", json_hist(e.request_latency_ns[k], total.request_latency_ns[k])},
            {"pages", json_hist(e.request_pages[k], total.request_pages[k])}};
    }
    Json dma = Json::object();
    for (size_t op = 0; op < kEngineDmaOps; ++op) {
        dma[std::string(engine_dma_op_name(op))] = {
            {"ok", e.dma_calls[op].ok},
            {"failed", e.dma_calls[op].failed},
            {"bytes", e.dma_calls[op].bytes},
            {"since_start", {{"count", total.dma_calls[op].total()}}},
            {"latency_ns", json_hist(e.dma_latency_ns[op], total.dma_latency_ns[op])}};
    }
    Json scans = Json::object();
    for (size_t k = 0; k < kEngineScanKinds; ++k) {
        scans[std::string(scan_kind_name(k))] = {
            {"scans", e.scans[k].scans},
            {"examined", e.scans[k].examined},
            {"unpinned", e.scans[k].unpinned},
            {"since_start", {{"scans", total.scans[k].scans}}},
            {"duration_ns", json_hist(e.scan_duration_ns[k], total.scan_duration_ns[k])}};
    }
    return {{"requests", std::move(requests)},
            {"dma", std::move(dma)},
            {"unpin_scans", std::move(scans)},
            {"drops", {{"bad_kind", e.bad_kind}, {"bad_batch", e.bad_batch}}}};
}

Json json_programs(const std::vector<ProgramInfo>& programs) {
    Json out = Json::array();
    for (const auto& p : programs) {
        out.push_back({{"program", p.program},
                       {"attach", p.attach},
                       {"id", p.id},
                       {"tag", p.tag},
                       {"attached", p.attached},
                       {"run_time_ns", p.run_time_ns},
                       {"run_cnt", p.run_cnt}});
    }
    return out;
}

void print_programs_text(const std::vector<ProgramInfo>& programs) {
    fmt::print("\n{:<16} {:<10} {:>6} {:<16} {:>8} {:>12} {:>14} {:>8}\n", "program", "attach", "id", "tag", "attached",
               "runs", "run_time_ns", "avg_ns");
    for (const auto& p : programs) {
        fmt::print("{:<16} {:<10} {:>6} {:<16} {:>8} {:>12} {:>14} {:>8}\n", p.program, p.attach, p.id, p.tag,
                   p.attached ? "yes" : "no", p.run_cnt, p.run_time_ns, p.run_cnt ? p.run_time_ns / p.run_cnt : 0);
    }
}

struct Reporter {
    const TraceArgs& args;
    Tracing& tracing;
    TelemetrySnapshot prev;
    Clock::time_point prev_time;

    Status report() {
        auto snap = tracing.snapshot();
        if (!snap) return coiommu::unexpected(snap.error());
        const auto now = Clock::now();
        const double elapsed = std::chrono::duration<double>(now - prev_time).count();
        const VfioDmaSnapshot dv = snap->vfio_dma.delta_since(prev.vfio_dma);
        std::optional<EngineSnapshot> de;
        if (snap->engine) de = snap->engine->delta_since(prev.engine.value_or(EngineSnapshot{}));

        if (args.json) {
            Json line = {{"time", now_hms()}};
            if (args.timestamp) line["timestamp"] = now_iso8601();
            line["interval_s"] = elapsed;
            line["unit"] = "ns";
            line["vfio_dma"] = json_vfio(dv, snap->vfio_dma, tracing.vfio_dma().mode());
            if (de) line["engine"] = json_engine(*de, *snap->engine);
            if (args.stats) line["programs"] = json_programs(snap->programs);
            print_json_line(line);
        } else {
            if (args.timestamp) fmt::print("\n{}\n", now_hms());
            print_vfio_text(dv, tracing.vfio_dma().mode(), args.unit);
            if (de) print_engine_text(*de, args.unit);
            if (args.stats) print_programs_text(snap->programs);
        }
        std::fflush(stdout);
        prev = std::move(*snap);
        prev_time = now;
        return ok();
    }
};

void print_slow(const SlowEvent& ev, const TraceArgs& args) {
    if (args.json) {
        Json ev_json = {{"event", "slow"}};
        if (args.timestamp) ev_json["timestamp"] = now_iso8601();
        ev_json.update(Json{{"ts_ns", ev.ts_ns},
                            {"pid", ev.pid},
                            {"tid", ev.tid},
                            {"comm", ev.comm},
                            {"op", op_name(ev.op)},
                            {"iova", ev.iova},
                            {"size", ev.size},
                            {"latency_ns", ev.latency_ns},
                            {"ret", ev.ret}});
        print_json_line(ev_json);
    } else {
        fmt::print("SLOW {} pid {} tid {} comm {} op {} iova {:#x} size {} latency {} {} ret {}\n", now_hms(), ev.pid,
                   ev.tid, ev.comm, op_name(ev.op), ev.iova, ev.size, format_bound(ev.latency_ns, args.unit),
                   args.unit.name, errno_name(ev.ret));
    }
    std::fflush(stdout);
}

// The loader's options for the command line; the --engine target must exist (exit 1 otherwise).
Result<TracingOptions> tracing_options(const TraceArgs& args) {
    TracingOptions opts;
    opts.vfio_dma.target_tgid = args.pid;
    opts.vfio_dma.slow_threshold = args.slow;
    opts.vfio_dma.mode = args.vfio_mode;
    if (args.engine) {
        COIOMMU_ASSIGN_OR_RETURN(EngineTarget target, EngineTarget::parse(*args.engine), "--engine");
        opts.engine = target;
        opts.engine->dma = args.engine_dma ? EngineDmaProbes::Yes : EngineDmaProbes::No;
    }
    opts.kernel_hooks = args.kernel_hooks ? TryKernelHooks::Yes : TryKernelHooks::No;
    if (args.pin) opts.pin = PinOptions{args.pin_root, *args.pin};
    opts.run_time = args.stats ? CollectRunTime::Yes : CollectRunTime::No;
    return opts;
}

// --vfio-mode fentry never falls back: when fentry is what failed ("fentry not available: <reason>",
// vfio_dma_tracer.h), the message names the option too.
Result<Tracing> start_tracing(const TracingOptions& opts) {
    auto tracing = Tracing::start(opts);
    if (!tracing && opts.vfio_dma.mode == VfioDmaMode::Fentry &&
        tracing.error().context.find("fentry not available: ") != std::string::npos) {
        return coiommu::unexpected(with_context(tracing.error(), "--vfio-mode fentry"));
    }
    return tracing;
}

void stop_on_sigint_and_sigterm() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;  // no SA_RESTART: waits return EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

// What attached, on stderr, before the "Tracing" line; first the vfio_dma mode, and after a
// fallback why fentry was not used.
void print_attached(const TraceArgs& args, Tracing& tracing) {
    fmt::print(stderr, "vfio_dma: {} mode, {}\n", mode_name(tracing.vfio_dma().mode()),
               tracing.vfio_dma().mode_detail());
    if (args.kernel_hooks) fmt::print(stderr, "kernel hooks (vfio_kern): {}\n", tracing.kernel_hooks_status());
    if (auto* eng = tracing.engine()) {
        std::string probes;
        for (const auto& p : eng->attached_probes()) probes += (probes.empty() ? "" : ",") + p;
        fmt::print(stderr, "engine USDT probes attached: {}\n", probes);
    }
    for (const auto& p : tracing.pinned_paths()) fmt::print(stderr, "pinned {}\n", p);
}

#ifdef COIOMMU_TRACE_EXPORTER
// --exporter: the BPF and process collectors served while tracing. Declared after the Tracing it
// reads, so that it is destroyed (civetweb threads joined) first.
struct MetricsEndpoint {
    exporter::SlowEventCounter slow_events;
    std::optional<exporter::Exposer> exposer;

    Status start(const std::string& address, Tracing& tracing, std::optional<std::chrono::nanoseconds> slow) {
        auto set = std::make_shared<exporter::CollectorSet>();
        COIOMMU_TRY(set->add("bpf", std::make_shared<exporter::BpfCollector>(
                                        exporter::tracing_source(tracing, &slow_events, slow))),
                    "exporter");
        COIOMMU_TRY(set->add("process", std::make_shared<exporter::ProcessCollector>()), "exporter");
        COIOMMU_ASSIGN_OR_RETURN(auto started, exporter::Exposer::start({.address = address}), "exporter");
        exposer.emplace(std::move(started));
        COIOMMU_TRY(exposer->register_collectable(set), "exporter");
        fmt::print(stderr, "exporter listening on {} ({})\n", exposer->address(), exposer->url());
        return ok();
    }
    void count(const SlowEvent& /*ev*/) { slow_events.add(); }
};
#else
struct MetricsEndpoint {
    void count(const SlowEvent& /*ev*/) {}
};
#endif

// Reports every interval until `count` reports or a signal; then, when interrupted, what the
// last (partial) interval saw, like biolatency.
template <class OnEvent>
Status trace_until_done(const TraceArgs& args, Tracing& tracing, Reporter& reporter, const OnEvent& on_event) {
    const auto interval =
        args.interval ? std::chrono::duration_cast<Clock::duration>(*args.interval) : Clock::duration::max();
    auto next = args.interval ? Clock::now() + interval : Clock::time_point::max();
    uint64_t printed = 0;
    while (g_stop == 0) {
        const auto now = Clock::now();
        if (now >= next) {
            COIOMMU_TRY(reporter.report());
            if (args.count != 0 && ++printed >= args.count) return ok();
            next += interval;
            continue;
        }
        const auto wait = std::min<Clock::duration>(next - now, std::chrono::milliseconds(200));
        const auto wait_ms = std::max<int64_t>(1, std::chrono::ceil<std::chrono::milliseconds>(wait).count());
        if (args.slow) {
            auto n = tracing.vfio_dma().poll_slow_events(std::chrono::milliseconds(wait_ms), on_event);
            if (!n && n.error().code != EINTR) return coiommu::unexpected(n.error());
        } else {
            (void)::poll(nullptr, 0, static_cast<int>(wait_ms));
        }
    }
    if (args.slow) (void)tracing.vfio_dma().poll_slow_events(std::chrono::milliseconds(0), on_event);
    return reporter.report();
}

Status run(const TraceArgs& args) {
    log::set_level(args.verbose ? log::Level::Debug : log::Level::Warn);
    COIOMMU_ASSIGN_OR_RETURN(const TracingOptions opts, tracing_options(args));
    COIOMMU_ASSIGN_OR_RETURN(auto tracing, start_tracing(opts));
    stop_on_sigint_and_sigterm();

    // The baseline comes before the "Tracing" line: whatever happens after it is reported.
    COIOMMU_ASSIGN_OR_RETURN(auto first, tracing.snapshot());
    Reporter reporter{args, tracing, std::move(first), Clock::now()};
    print_attached(args, tracing);

    MetricsEndpoint metrics;
#ifdef COIOMMU_TRACE_EXPORTER
    if (args.exporter) COIOMMU_TRY(metrics.start(*args.exporter, tracing, opts.vfio_dma.slow_threshold));
#endif
    fmt::print(stderr, "Tracing VFIO DMA ioctls of {}... Hit Ctrl-C to end.\n",
               args.pid ? fmt::format("pid {}", args.pid) : std::string("all processes"));
    const auto on_event = [&args, &metrics](const SlowEvent& ev) {
        metrics.count(ev);
        print_slow(ev, args);
    };
    return trace_until_done(args, tracing, reporter, on_event);
}

AddressCheck exporter_address_check() {
#ifdef COIOMMU_TRACE_EXPORTER
    return [](std::string_view address) -> Status {
        COIOMMU_TRY(exporter::parse_listen_address(address));
        return ok();
    };
#else
    return {};
#endif
}

}  // namespace
}  // namespace coiommu::bpf

int main(int argc, char** argv) {
    try {
        auto parsed = coiommu::bpf::parse_trace_args(argc, argv, coiommu::bpf::exporter_address_check());
        if (!parsed) {
            fmt::print(stderr, "coiommu-trace: {}\nTry 'coiommu-trace --help'.\n", parsed.error().context);
            return 2;
        }
        if (parsed->action == coiommu::cli::Parsed::Exited) return 0;
        if (auto st = coiommu::bpf::run(parsed->args); !st) {
            fmt::print(stderr, "coiommu-trace: {}\n", st.error().message());
            return 1;
        }
        return 0;
    } catch (const std::exception& e) {  // fmt's output errors, allocation failure
        std::fprintf(stderr, "coiommu-trace: %s\n", e.what());
        return 1;
    }
}
