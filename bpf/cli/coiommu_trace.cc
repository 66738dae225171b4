// coiommu-trace: biolatency-style view of VFIO DMA map/unmap latency (ioctl tracepoints) and,
// with --engine, of the engine's own request/DMA/unpin-scan latencies (USDT probes).
//
//   coiommu-trace [options] [interval [count]]
//
// Prints per-op log2 histograms every interval (or once at Ctrl-C), calls by result class and
// bytes requested. Histograms are interval deltas computed from monotonic map snapshots; the
// maps are never cleared, so pinned maps (--pin) and the exporter stay monotonic.
//
// With --exporter ADDR (when built with the exporter: COIOMMU_TRACE_EXPORTER) it also serves the
// BPF and process metrics at http://ADDR/metrics while tracing, for hosts whose VMM (crosvm,
// QEMU) runs without the coiommu engine. This is the composition root of that exporter: the
// BPF collector (bpf/metrics) and the generic exporter (exporter/) are wired here.
#include <getopt.h>
#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bpf/cli/unit_hist.h"
#include "bpf/loader/tracing.h"
#include "engine/base/log.h"
#include "engine/base/version.h"
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

constexpr const char* kUsage = R"(usage: coiommu-trace [options] [interval [count]]

Summarise VFIO DMA map/unmap ioctl latency (VFIO type1 MAP_DMA/UNMAP_DMA and iommufd
IOAS_MAP/IOAS_UNMAP) as log2 histograms, for every process or one pid (crosvm, QEMU or the
coiommu engine). Without an interval, prints once on Ctrl-C.

options:
  -p, --pid PID          trace only this process
  -u, --microseconds     histograms in microseconds, biolatency's integer rows (default:
                         nanoseconds); a ns slot straddling a row goes to its upper bound's row
  -m, --milliseconds     histograms in milliseconds, likewise
      --slow-us N        also stream every call that took >= N microseconds
  -j, --json             one JSON object per interval (and per slow event) on stdout
      --engine BIN|PID   also attach to the engine's USDT probes (binary path, or pid):
                         request latency, pages per request, unpin scans (one probe hit
                         per request, ~0.8 us each)
      --engine-dma       with --engine: also the per-DMA-call probes (one more hit per call)
      --kernel-hooks     also try the fentry hooks inside vfio_iommu_type1
      --pin              pin the maps under <pin-root>/v2/ and keep them after exit
      --pin-temp         pin the maps while running, remove them on exit
      --pin-root DIR     pin root (default /sys/fs/bpf/coiommu)
      --stats            enable BPF run time accounting and print per-program cost
      --exporter ADDR    also serve Prometheus metrics at http://ADDR/metrics (e.g.
                         127.0.0.1:9465; port 0 picks a free port, printed on stderr)
  -T, --timestamp        print a timestamp with each interval
  -v, --verbose          debug logging (libbpf and verifier messages)
  -h, --help             this text
  -V, --version          print the version and git revision

Needs root or CAP_BPF+CAP_PERFMON (and CAP_SYS_ADMIN to mount tracefs/bpffs if missing).
examples:
  coiommu-trace 1 10              10 one-second histograms of every process's DMA ioctls
  coiommu-trace -p $(pidof crosvm) -u --slow-us 500
  coiommu-trace --pin --json 5    JSON every 5 s; maps stay in /sys/fs/bpf/coiommu/v2/
  coiommu-trace --exporter 127.0.0.1:9465 --stats --slow-us 1000
                                  Prometheus exporter for a crosvm/QEMU host (Ctrl-C ends)
)";

struct Unit {
    std::string_view name = "ns";
    uint64_t ns_per_unit = 1;  // 1: the histogram's own unit (ns, or pages)
};

struct Args {
    uint32_t pid = 0;
    Unit unit;
    std::optional<uint64_t> slow_us;
    bool json = false;
    std::optional<std::string> engine;
    bool engine_dma = false;
    bool kernel_hooks = false;
    std::optional<Keep> pin;
    std::string pin_root{kDefaultPinRoot};
    bool stats = false;
    std::optional<std::string> exporter;  // listen address
    bool timestamp = false;
    bool verbose = false;
    std::optional<double> interval_s;
    uint64_t count = 0;  // 0: until interrupted
};

template <class T>
bool parse_number(std::string_view text, T* out) {
    const auto* end = text.data() + text.size();
    const auto r = std::from_chars(text.data(), end, *out);
    return r.ec == std::errc{} && r.ptr == end;
}

bool parse_interval(std::string_view text, double* out) {
    // Integers only via from_chars for portability of GCC 12's floating from_chars; allow "0.5".
    std::string s(text);
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (errno != 0 || end != s.c_str() + s.size() || !(v > 0)) return false;
    *out = v;
    return true;
}

// Returns nullopt after printing the reason (or help) when parsing fails or help was asked.
std::optional<Args> parse_args(int argc, char** argv, int* exit_code) {
    enum LongOnly { kSlowUs = 256, kEngine, kEngineDma, kKernelHooks, kPin, kPinTemp, kPinRoot, kStats, kExporter };
    static const option kOptions[] = {
        {"pid", required_argument, nullptr, 'p'},
        {"microseconds", no_argument, nullptr, 'u'},
        {"milliseconds", no_argument, nullptr, 'm'},
        {"json", no_argument, nullptr, 'j'},
        {"timestamp", no_argument, nullptr, 'T'},
        {"verbose", no_argument, nullptr, 'v'},
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {"slow-us", required_argument, nullptr, kSlowUs},
        {"engine", required_argument, nullptr, kEngine},
        {"engine-dma", no_argument, nullptr, kEngineDma},
        {"kernel-hooks", no_argument, nullptr, kKernelHooks},
        {"pin", no_argument, nullptr, kPin},
        {"pin-temp", no_argument, nullptr, kPinTemp},
        {"pin-root", required_argument, nullptr, kPinRoot},
        {"stats", no_argument, nullptr, kStats},
        {"exporter", required_argument, nullptr, kExporter},
        {nullptr, 0, nullptr, 0},
    };
    Args a;
    *exit_code = 2;
    int c = 0;
    while ((c = getopt_long(argc, argv, "p:umjTvhV", kOptions, nullptr)) != -1) {
        switch (c) {
            case 'p':
                if (!parse_number(optarg, &a.pid) || a.pid == 0) {
                    fmt::print(stderr, "coiommu-trace: invalid pid '{}'\n", optarg);
                    return std::nullopt;
                }
                break;
            case 'u': a.unit = {"us", 1000}; break;
            case 'm': a.unit = {"ms", 1000000}; break;
            case 'j': a.json = true; break;
            case 'T': a.timestamp = true; break;
            case 'v': a.verbose = true; break;
            case 'h':
                fmt::print("{}", kUsage);
                *exit_code = 0;
                return std::nullopt;
            case 'V':
                fmt::print("{}\n", version_line("coiommu-trace"));
                *exit_code = 0;
                return std::nullopt;
            case kSlowUs: {
                uint64_t v = 0;
                if (!parse_number(optarg, &v)) {
                    fmt::print(stderr, "coiommu-trace: invalid --slow-us '{}'\n", optarg);
                    return std::nullopt;
                }
                a.slow_us = v;
                break;
            }
            case kEngine: a.engine = optarg; break;
            case kEngineDma: a.engine_dma = true; break;
            case kKernelHooks: a.kernel_hooks = true; break;
            case kPin: a.pin = Keep::Yes; break;
            case kPinTemp: a.pin = Keep::No; break;
            case kPinRoot: a.pin_root = optarg; break;
            case kStats: a.stats = true; break;
            case kExporter:
#ifdef COIOMMU_TRACE_EXPORTER
                if (auto addr = exporter::parse_listen_address(optarg); !addr) {
                    fmt::print(stderr, "coiommu-trace: --exporter: {}\n", addr.error().message());
                    return std::nullopt;
                }
                a.exporter = optarg;
                break;
#else
                fmt::print(stderr, "coiommu-trace: built without the Prometheus exporter (COIOMMU_EXPORTER=OFF)\n");
                return std::nullopt;
#endif
            default: fmt::print(stderr, "{}", kUsage); return std::nullopt;
        }
    }
    if (a.engine_dma && !a.engine) {
        fmt::print(stderr, "coiommu-trace: --engine-dma needs --engine\n");
        return std::nullopt;
    }
    if (optind < argc) {
        double v = 0;
        if (!parse_interval(argv[optind], &v)) {
            fmt::print(stderr, "coiommu-trace: invalid interval '{}'\n", argv[optind]);
            return std::nullopt;
        }
        a.interval_s = v;
        ++optind;
    }
    if (optind < argc) {
        if (!parse_number(argv[optind], &a.count) || a.count == 0) {
            fmt::print(stderr, "coiommu-trace: invalid count '{}'\n", argv[optind]);
            return std::nullopt;
        }
        ++optind;
    }
    if (optind < argc) {
        fmt::print(stderr, "coiommu-trace: unexpected argument '{}'\n{}", argv[optind], kUsage);
        return std::nullopt;
    }
    *exit_code = 0;
    return a;
}

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

void print_vfio_text(const VfioDmaSnapshot& d, const Unit& unit) {
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
    if (!any) fmt::print("\nno VFIO DMA map/unmap calls\n");
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

Json json_vfio(const VfioDmaSnapshot& d, const VfioDmaSnapshot& total) {
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
    return {{"ops", std::move(ops)},
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
    const Args& args;
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
            line["vfio_dma"] = json_vfio(dv, snap->vfio_dma);
            if (de) line["engine"] = json_engine(*de, *snap->engine);
            if (args.stats) line["programs"] = json_programs(snap->programs);
            print_json_line(line);
        } else {
            if (args.timestamp) fmt::print("\n{}\n", now_hms());
            print_vfio_text(dv, args.unit);
            if (de) print_engine_text(*de, args.unit);
            if (args.stats) print_programs_text(snap->programs);
        }
        std::fflush(stdout);
        prev = std::move(*snap);
        prev_time = now;
        return ok();
    }
};

void print_slow(const SlowEvent& ev, const Args& args) {
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

int run(const Args& args) {
    log::set_level(args.verbose ? log::Level::Debug : log::Level::Warn);

    TracingOptions opts;
    opts.vfio_dma.target_tgid = args.pid;
    if (args.slow_us) opts.vfio_dma.slow_threshold = std::chrono::microseconds(*args.slow_us);
    if (args.engine) {
        auto target = EngineTarget::parse(*args.engine);
        if (!target) {
            fmt::print(stderr, "coiommu-trace: --engine: {}\n", target.error().message());
            return 1;
        }
        opts.engine = *target;
        opts.engine->dma = args.engine_dma ? EngineDmaProbes::Yes : EngineDmaProbes::No;
    }
    opts.kernel_hooks = args.kernel_hooks ? TryKernelHooks::Yes : TryKernelHooks::No;
    if (args.pin) opts.pin = PinOptions{args.pin_root, *args.pin};
    opts.run_time = args.stats ? CollectRunTime::Yes : CollectRunTime::No;

    auto tracing = Tracing::start(opts);
    if (!tracing) {
        fmt::print(stderr, "coiommu-trace: {}\n", tracing.error().message());
        return 1;
    }

    struct sigaction sa {};
    sa.sa_handler = on_signal;  // no SA_RESTART: waits return EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    // The baseline comes before the "Tracing" line: whatever happens after it is reported.
    auto first = tracing->snapshot();
    if (!first) {
        fmt::print(stderr, "coiommu-trace: {}\n", first.error().message());
        return 1;
    }
    Reporter reporter{args, *tracing, std::move(*first), Clock::now()};

    if (args.kernel_hooks) fmt::print(stderr, "kernel hooks (vfio_kern): {}\n", tracing->kernel_hooks_status());
    if (auto* eng = tracing->engine()) {
        std::string probes;
        for (const auto& p : eng->attached_probes()) probes += (probes.empty() ? "" : ",") + p;
        fmt::print(stderr, "engine USDT probes attached: {}\n", probes);
    }
    for (const auto& p : tracing->pinned_paths()) fmt::print(stderr, "pinned {}\n", p);

#ifdef COIOMMU_TRACE_EXPORTER
    // Declared after `tracing`: destroyed (civetweb threads joined) before the tracer it reads.
    exporter::SlowEventCounter slow_events;
    std::optional<exporter::Exposer> exposer;
    if (args.exporter) {
        auto set = std::make_shared<exporter::CollectorSet>();
        auto st = set->add("bpf", std::make_shared<exporter::BpfCollector>(
                                      exporter::tracing_source(*tracing, &slow_events, opts.vfio_dma.slow_threshold)));
        if (st) st = set->add("process", std::make_shared<exporter::ProcessCollector>());
        if (!st) {
            fmt::print(stderr, "coiommu-trace: exporter: {}\n", st.error().message());
            return 1;
        }
        auto started = exporter::Exposer::start({.address = *args.exporter});
        if (!started) {
            fmt::print(stderr, "coiommu-trace: exporter: {}\n", started.error().message());
            return 1;
        }
        exposer.emplace(std::move(*started));
        if (auto reg = exposer->register_collectable(set); !reg) {
            fmt::print(stderr, "coiommu-trace: exporter: {}\n", reg.error().message());
            return 1;
        }
        fmt::print(stderr, "exporter listening on {} ({})\n", exposer->address(), exposer->url());
    }
    const auto count_event = [&slow_events](const SlowEvent&) { slow_events.add(); };
#else
    const auto count_event = [](const SlowEvent&) {};
#endif
    fmt::print(stderr, "Tracing VFIO DMA ioctls of {}... Hit Ctrl-C to end.\n",
               args.pid ? fmt::format("pid {}", args.pid) : std::string("all processes"));

    const auto on_event = [&args, &count_event](const SlowEvent& ev) {
        count_event(ev);
        print_slow(ev, args);
    };
    const auto interval =
        args.interval_s ? std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*args.interval_s))
                        : Clock::duration::max();
    auto next = args.interval_s ? Clock::now() + interval : Clock::time_point::max();
    uint64_t printed = 0;
    while (g_stop == 0) {
        const auto now = Clock::now();
        if (now >= next) {
            if (auto st = reporter.report(); !st) {
                fmt::print(stderr, "coiommu-trace: {}\n", st.error().message());
                return 1;
            }
            if (args.count != 0 && ++printed >= args.count) return 0;
            next += interval;
            continue;
        }
        const auto wait = std::min<Clock::duration>(next - now, std::chrono::milliseconds(200));
        const auto wait_ms = std::max<int64_t>(1, std::chrono::ceil<std::chrono::milliseconds>(wait).count());
        if (args.slow_us) {
            auto n = tracing->vfio_dma().poll_slow_events(std::chrono::milliseconds(wait_ms), on_event);
            if (!n && n.error().code != EINTR) {
                fmt::print(stderr, "coiommu-trace: {}\n", n.error().message());
                return 1;
            }
        } else {
            (void)::poll(nullptr, 0, static_cast<int>(wait_ms));
        }
    }
    // Interrupted: report what the last (partial) interval saw, like biolatency.
    if (args.slow_us) (void)tracing->vfio_dma().poll_slow_events(std::chrono::milliseconds(0), on_event);
    if (auto st = reporter.report(); !st) {
        fmt::print(stderr, "coiommu-trace: {}\n", st.error().message());
        return 1;
    }
    return 0;
}

}  // namespace
}  // namespace coiommu::bpf

int main(int argc, char** argv) {
    try {
        int exit_code = 0;
        auto args = coiommu::bpf::parse_args(argc, argv, &exit_code);
        if (!args) return exit_code;
        return coiommu::bpf::run(*args);
    } catch (const std::exception& e) {  // fmt's output errors, allocation failure
        std::fprintf(stderr, "coiommu-trace: %s\n", e.what());
        return 1;
    }
}
