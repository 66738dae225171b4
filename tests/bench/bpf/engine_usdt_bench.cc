// Engine throughput with the engine USDT program attached vs detached, in the same run.
//
// The real engine runs flat out under an emulated guest (tests/unit/exporter/engine_vm.h, Fresh
// load: every guest map is a pin request and a DMA map on the fake backend with its kernel latency
// model; pages never pinned before, ballooned back when a vCPU's range wraps). Phases alternate
// A B B A A B ... (A: nothing attached; B: EngineTracer attached to this pid) so that drift on a
// shared host hits both alike; attaching and detaching happen between the measured windows.
// Throughput is the engine's own count of pages pinned and requests served per second, and pages
// per CPU-second of this process (guest threads and engine together), which still counts the
// probes' cost when the neighbours dominate the wall clock. At the end of each B phase the
// tracer's request count is compared with the engine's over the same window (within a batch at
// each end: the engine hands records over in batches, engine/telemetry/request_trace.h).
//
// usage: engine_usdt_bench [--rounds N] [--phase-seconds S] [--vcpus N] [--pages N] [--dma]
//                          [--workers N] [--spin-us N]
//   --dma also attaches the per-DMA-call probes (EngineDmaProbes::Yes)
//   --workers 0 serves inline on the intake thread (the default below 4 CPUs); default 1 worker
//   --spin-us the intake/worker spin before blocking (default 20)
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bpf/loader/engine_tracer.h"
#include "bpf/loader/privileges.h"
#include "engine/base/log.h"
#include "engine/telemetry/probes.h"
#include "tests/bench/support/paired_rounds.h"
#include "tests/unit/exporter/engine_vm.h"

namespace {

using namespace coiommu;
using Clock = std::chrono::steady_clock;
using bench::process_cpu_seconds;

struct Args {
    int rounds = 6;
    double phase_s = 3.0;
    uint32_t vcpus = 2;
    uint64_t pages = 1;
    bool dma = false;
    uint32_t workers = 1;
    long spin_us = 20;
};

bool parse(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--dma") {
            a.dma = true;
            continue;
        }
        if (i + 1 >= argc) return false;
        const char* v = argv[++i];
        if (arg == "--rounds") {
            a.rounds = std::atoi(v);
        } else if (arg == "--phase-seconds") {
            a.phase_s = std::atof(v);
        } else if (arg == "--vcpus") {
            a.vcpus = static_cast<uint32_t>(std::atoi(v));
        } else if (arg == "--pages") {
            a.pages = std::strtoull(v, nullptr, 10);
        } else if (arg == "--workers") {
            a.workers = static_cast<uint32_t>(std::atoi(v));
        } else if (arg == "--spin-us") {
            a.spin_us = std::atol(v);
        } else {
            return false;
        }
    }
    return a.rounds > 0 && a.phase_s > 0 && a.vcpus > 0 && a.pages > 0 && a.spin_us >= 0;
}

uint64_t engine_requests(const telemetry::StatsSnapshot& s) {
    return s.totals.requests[telemetry::RequestKind::Single] + s.totals.requests[telemetry::RequestKind::Batch];
}

uint64_t traced_requests(const bpf::EngineSnapshot& s) {
    uint64_t n = 0;
    for (const auto& k : s.requests) n += k.total();
    return n;
}

}  // namespace

int main(int argc, char** argv) {
    Args args;
    if (!parse(argc, argv, args)) {
        std::fprintf(stderr,
                     "usage: engine_usdt_bench [--rounds N] [--phase-seconds S] [--vcpus N] [--pages N] [--dma] "
                     "[--workers N] [--spin-us N]\n");
        return 2;
    }
    if (auto priv = bpf::check_bpf_privileges(); !priv) {
        std::fprintf(stderr, "engine_usdt_bench: cannot load BPF: %s\n", priv.error().message().c_str());
        return 77;
    }
    log::set_level(log::Level::Error);
    auto target = bpf::EngineTarget::parse(std::to_string(::getpid()));
    if (!target) {
        std::fprintf(stderr, "engine_usdt_bench: %s\n", target.error().message().c_str());
        return 1;
    }
    target->dma = args.dma ? bpf::EngineDmaProbes::Yes : bpf::EngineDmaProbes::No;

    exporter::testing::EngineVmOptions opts;
    opts.pattern = exporter::testing::LoadPattern::Fresh;
    opts.load_vcpus = args.vcpus;
    opts.max_pages = args.pages;
    opts.engine.unpin_interval = std::chrono::seconds(1);
    opts.engine.workers = args.workers;
    opts.engine.spin_budget = std::chrono::microseconds(args.spin_us);
    auto vm = exporter::testing::EngineVm::create(opts);
    if (!vm) {
        std::fprintf(stderr, "engine vm: %s\n", vm.error().message().c_str());
        return 1;
    }
    std::printf(
        "engine_usdt_bench: %u vCPUs, %lu pages per request (Fresh), %u workers (0: inline), spin %ld us, "
        "fake backend (typical latency), probes attached in B: %s\n",
        args.vcpus, static_cast<unsigned long>(args.pages), args.workers, args.spin_us,
        args.dma ? "requests (batched), unpin_scan, dma_map, dma_unmap" : "requests (batched), unpin_scan");
    std::printf("%d rounds of A (detached) and B (attached), %.1f s per phase\n\n", args.rounds, args.phase_s);
    std::printf("%-6s %-6s %14s %14s %16s %12s %12s\n", "round", "phase", "pages/s", "requests/s", "pages/CPU-s",
                "requests", "traced");
    std::fflush(stdout);

    (*vm)->start();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // warm-up
    std::vector<double> a_rate, b_rate, a_req, b_req, a_eff, b_eff;
    uint64_t mismatched_phases = 0;
    for (int round = 0; round < args.rounds; ++round) {
        const bool attached_first = (round % 2) == 1;
        for (int half = 0; half < 2; ++half) {
            const bool attached = (half == 0) == attached_first;
            std::optional<bpf::EngineTracer> tracer;
            std::optional<bpf::EngineSnapshot> t0;
            if (attached) {
                auto t = bpf::EngineTracer::attach(*target);
                if (!t) {
                    std::fprintf(stderr, "attach: %s\n", t.error().message().c_str());
                    return 1;
                }
                tracer.emplace(std::move(*t));
            }
            // Both windows start after the same kind of pause (attach takes ~0.1-0.3 s).
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            const auto s0 = (*vm)->stats();
            if (tracer) t0 = tracer->snapshot().value_or(bpf::EngineSnapshot{});
            const auto w0 = Clock::now();
            const double c0 = process_cpu_seconds();
            std::this_thread::sleep_for(std::chrono::duration<double>(args.phase_s));
            const auto s1 = (*vm)->stats();
            std::optional<bpf::EngineSnapshot> t1;
            if (tracer) t1 = tracer->snapshot().value_or(bpf::EngineSnapshot{});
            const double cpu = process_cpu_seconds() - c0;
            const double secs = std::chrono::duration<double>(Clock::now() - w0).count();
            tracer.reset();

            const auto pages = static_cast<double>(s1.totals.pages_pinned - s0.totals.pages_pinned);
            const uint64_t reqs = engine_requests(s1) - engine_requests(s0);
            const uint64_t traced = t1 ? traced_requests(*t1) - traced_requests(*t0) : 0;
            // The two reads are not one cut, and the tracer sees a request when its batch is handed
            // over (up to kMaxRequestRecords later): at each end of the window one batch may differ.
            const uint64_t slack = 2 * telemetry::kMaxRequestRecords + args.vcpus;
            if (attached && (traced + slack < reqs || traced > reqs + slack)) ++mismatched_phases;
            (attached ? b_rate : a_rate).push_back(pages / secs);
            (attached ? b_req : a_req).push_back(static_cast<double>(reqs) / secs);
            (attached ? b_eff : a_eff).push_back(pages / cpu);
            std::printf("%-6d %-6s %14.0f %14.0f %16.0f %12lu %12s\n", round, attached ? "B" : "A", pages / secs,
                        static_cast<double>(reqs) / secs, pages / cpu, static_cast<unsigned long>(reqs),
                        attached ? std::to_string(traced).c_str() : "-");
            std::fflush(stdout);
        }
    }
    (*vm)->stop();

    bench::report_paired("pages pinned per second", "detached", "attached", a_rate, b_rate);
    bench::report_paired("requests per second", "detached", "attached", a_req, b_req);
    bench::report_paired("pages pinned per CPU-second of the process", "detached", "attached", a_eff, b_eff);
    std::printf("attached phases where the tracer's request count differed from the engine's: %lu\n",
                static_cast<unsigned long>(mismatched_phases));
    std::printf("guest maps %lu, failures %lu\n", static_cast<unsigned long>((*vm)->guest_maps()),
                static_cast<unsigned long>((*vm)->guest_map_failures()));
    return mismatched_phases == 0 ? 0 : 1;
}
