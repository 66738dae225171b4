#include "engine/daemon/demo.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <poll.h>

#include <chrono>
#include <cinttypes>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/daemon/emulated_vm.h"

namespace coiommu::daemon {
namespace {

constexpr std::string_view kLog = "demo";

// The observations between two snapshots. The window's exact max is unknown; the later
// snapshot's max caps the percentiles (it bounds every value in the window).
telemetry::LogLinearSnapshot diff(const telemetry::LogLinearSnapshot& now, const telemetry::LogLinearSnapshot& prev) {
    telemetry::LogLinearSnapshot d;
    for (std::size_t i = 0; i < d.buckets.size() && i < now.buckets.size() && i < prev.buckets.size(); ++i) {
        d.buckets[i] = now.buckets[i] >= prev.buckets[i] ? now.buckets[i] - prev.buckets[i] : 0;
    }
    d.sum = now.sum - prev.sum;
    d.max = now.max;
    return d;
}

std::string rate(double v) {
    if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
    if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
    return fmt::format("{:.0f}", v);
}

std::string duration_ns(uint64_t ns) {
    if (ns == 0) return "-";
    if (ns >= 1'000'000) return fmt::format("{:.1f}ms", static_cast<double>(ns) / 1e6);
    if (ns >= 100'000) return fmt::format("{:.0f}us", static_cast<double>(ns) / 1e3);
    if (ns >= 1'000) return fmt::format("{:.1f}us", static_cast<double>(ns) / 1e3);
    return fmt::format("{}ns", ns);
}

double mib(uint64_t pages) { return static_cast<double>(pages) * 4096.0 / (1024.0 * 1024.0); }

}  // namespace

std::string status_line(double t_s, double dt_s, const telemetry::StatsSnapshot& prev,
                        const telemetry::StatsSnapshot& now, const VmCounters& vprev, const VmCounters& vnow) {
    const double pins = static_cast<double>(now.totals.pages_pinned - prev.totals.pages_pinned) / dt_s;
    const double unpins = static_cast<double>(now.totals.pages_unpinned - prev.totals.pages_unpinned) / dt_s;
    const uint64_t p99 = diff(vnow.pin_map_latency_ns, vprev.pin_map_latency_ns).percentile(0.99);
    const uint64_t failures = now.totals.requests_failed + now.totals.dma_call_failures[telemetry::DmaOp::Map] +
                              vnow.map_failures + vnow.balloon_errors;
    return fmt::format(
        "[{:5.1f}s] pins/s {:>7}  unpins/s {:>7}  pin p99 {:>7}  pinned {:7.1f} MiB  DMA entries {}/{}  "
        "failures {}",
        t_s, rate(pins), rate(unpins), duration_ns(p99), mib(now.gauges.pinned_pages), now.gauges.dma_entries,
        now.gauges.dma_entry_limit, failures);
}

namespace {

EmulatedVmOptions demo_vm_options(const DemoContext& ctx) {
    const DaemonConfig& cfg = *ctx.config;
    EmulatedVmOptions vo;
    vo.socket_path = ctx.server->socket_path();
    vo.name = "demo-vm";
    vo.vcpus = cfg.demo_vcpus;
    vo.ram_bytes = cfg.demo_ram;
    vo.backend = proto::BackendKind::Fake;
    vo.latency = proto::FakeLatency::Typical;
    vo.rate_per_vcpu = 25'000;  // a busy NIC/NVMe queue per vCPU, and CPU left for the engine
    return vo;
}

void print_header(const DemoContext& ctx, const EmulatedVmOptions& vo) {
    const DaemonConfig& cfg = *ctx.config;
    std::FILE* out = ctx.out;
    fmt::print(out,
               "coiommud demo: an emulated VM ({} vCPUs, {} MiB RAM, fake VFIO backend with the kernel-like "
               "latency model) over {}\n",
               vo.vcpus, vo.ram_bytes >> 20, vo.socket_path);
    fmt::print(out, "  engine:   {}\n", workers::to_string(cfg.engine));
    fmt::print(out, "  metrics:  {}\n", ctx.metrics_url.empty() ? std::string("off") : ctx.metrics_url);
    fmt::print(out, "  tracing:  {}\n", ctx.tracing_status);
    if (cfg.duration.count() == 0) {
        fmt::print(out, "  running until Ctrl-C\n\n");
    } else {
        fmt::print(out, "  running for {:.0f} s (--duration 0: until Ctrl-C)\n\n",
                   static_cast<double>(cfg.duration.count()) / 1000.0);
    }
    std::fflush(out);
}

using Clock = std::chrono::steady_clock;

struct Watched {
    bool interrupted = false;
    uint64_t peak_pinned = 0;
};

// One status line a second until the duration ends or SIGINT/SIGTERM arrives (SIGHUP, the
// service's reload signal, is ignored here).
Watched watch(const DemoContext& ctx, EmulatedVm& vm, Clock::time_point t0) {
    Watched w;
    auto last_t = t0;
    telemetry::StatsSnapshot prev = ctx.server->aggregate();
    VmCounters vprev = vm.counters();
    for (;;) {
        pollfd p{ctx.signal_fd, POLLIN, 0};
        if (::poll(&p, ctx.signal_fd >= 0 ? 1 : 0, 1000) > 0) {
            signalfd_siginfo si{};
            const bool got = ::read(ctx.signal_fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si);
            if (got && si.ssi_signo == SIGHUP) continue;
            w.interrupted = true;
            return w;
        }
        const auto now_t = Clock::now();
        const telemetry::StatsSnapshot now = ctx.server->aggregate();
        const auto vc = vm.counters();
        w.peak_pinned = std::max(w.peak_pinned, now.gauges.pinned_pages);
        const double t = std::chrono::duration<double>(now_t - t0).count();
        const double dt = std::chrono::duration<double>(now_t - last_t).count();
        fmt::print(ctx.out, "{}\n", status_line(t, dt, prev, now, vprev, vc));
        std::fflush(ctx.out);
        prev = now;
        vprev = vc;
        last_t = now_t;
        if (ctx.config->duration.count() != 0 && now_t - t0 >= ctx.config->duration) return w;
    }
}

// The summary; true when the teardown left no DMA mapping.
bool print_summary(const DemoContext& ctx, const EmulatedVmOptions& vo, const Watched& w, const VmCounters& vc,
                   const telemetry::StatsSnapshot& end, const Result<CloseInfo>& closed, double secs) {
    std::FILE* out = ctx.out;
    fmt::print(out, "\n{}summary after {:.1f} s\n", w.interrupted ? "interrupted: " : "", secs);
    fmt::print(out, "  guest DMA maps      {} ({}/s), {} pages, {} failed; unmaps {}\n", vc.maps,
               rate(static_cast<double>(vc.maps) / secs), vc.pages_mapped, vc.map_failures, vc.unmaps);
    fmt::print(out, "  guest map latency   p50 {}  p99 {}  every map; p50 {}  p99 {}  maps that sent a pin request\n",
               duration_ns(vc.map_latency_ns.percentile(0.5)), duration_ns(vc.map_latency_ns.percentile(0.99)),
               duration_ns(vc.pin_map_latency_ns.percentile(0.5)), duration_ns(vc.pin_map_latency_ns.percentile(0.99)));
    fmt::print(out, "  pin requests        {} single + {} batch, {} failed\n",
               end.totals.requests[telemetry::RequestKind::Single], end.totals.requests[telemetry::RequestKind::Batch],
               end.totals.requests_failed);
    fmt::print(out, "  pages pinned        {} newly, {} already pinned; {} unpinned (LRU + balloon)\n",
               end.totals.pages_pinned, end.totals.pages_already_pinned, end.totals.pages_unpinned);
    fmt::print(out, "  DMA calls           {} maps, {} unmaps (coalesced extents), peak pinned {:.1f} MiB of {} MiB\n",
               end.totals.dma_calls[telemetry::DmaOp::Map], end.totals.dma_calls[telemetry::DmaOp::Unmap],
               mib(w.peak_pinned), vo.ram_bytes >> 20);
    fmt::print(out, "  balloon             {} success, {} failed, {} errors\n", vc.balloon_success, vc.balloon_failed,
               vc.balloon_errors);
    if (!closed) {
        fmt::print(out, "  teardown            close failed: {}\n", closed.error().message());
        return false;
    }
    fmt::print(out, "  teardown            {} pinned pages unmapped, {} DMA mappings left\n", closed->pages_unpinned,
               closed->dma_entries_after);
    return closed->dma_entries_after == 0;
}

// Where to look next, as commands a reader can paste (the full paths of the programs built).
void print_next_steps(const DemoContext& ctx) {
    std::FILE* out = ctx.out;
    fmt::print(out, "\nwhere to look next\n");
    if (!ctx.metrics_url.empty()) {
        fmt::print(out,
                   "  metrics     curl -s {} | grep ^coiommu_   (Prometheus: scrape this address; "
                   "while running with --duration 0)\n",
                   ctx.metrics_url);
    }
    fmt::print(out, "  dashboards  {}/grafana/*.json, rules in {}/prometheus/\n", ctx.dashboards, ctx.dashboards);
    if (!ctx.trace_tool.empty()) {
        fmt::print(out, "  tracing     sudo {} --help   (vfio_dma map/unmap latency histograms, any process)\n",
                   ctx.trace_tool);
    }
    if (!ctx.load_tool.empty()) {
        fmt::print(out, "  load        {} --help   (workloads, engines, strategies; JSON reports)\n", ctx.load_tool);
    }
    fmt::print(out, "  service     {} --help   (serves VMMs over a Unix socket; protocol: engine/daemon/PROTOCOL.md)\n",
               ctx.daemon_tool.empty() ? std::string("coiommud") : ctx.daemon_tool);
    std::fflush(out);
}

}  // namespace

int run_demo(const DemoContext& ctx) {
    const EmulatedVmOptions vo = demo_vm_options(ctx);
    print_header(ctx, vo);
    auto vm = EmulatedVm::start(vo);
    if (!vm) {
        CLOG_ERROR(kLog, "the emulated VM did not start: {}", vm.error().message());
        return 1;
    }
    const auto t0 = Clock::now();
    const Watched w = watch(ctx, **vm, t0);
    (*vm)->stop();
    const telemetry::StatsSnapshot end = ctx.server->aggregate();
    const VmCounters vc = (*vm)->counters();
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const auto closed = (*vm)->close();
    const bool clean = print_summary(ctx, vo, w, vc, end, closed, secs);
    print_next_steps(ctx);
    return clean && vc.maps > 0 ? 0 : 1;
}

}  // namespace coiommu::daemon
