// The cost of one full scrape with every metric populated: snapshot the shards, build the
// families (engine + process + the set's own), serialize to the text format; and the same over a
// real loopback HTTP request. Compare with the 1 s scrape interval to get the exporter's share
// of a core.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#include <prometheus/text_serializer.h>

#include "engine/telemetry/engine_stats.h"
#include "bpf/metrics/bpf_collector.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#ifdef COIOMMU_BENCH_HTTP
#include "tests/unit/exporter/scrape_support.h"
#endif

namespace coiommu::exporter {
namespace {

using namespace telemetry;

// Fills every counter and puts observations into every emitted bucket of every histogram.
void populate(StatsRegistry& stats) {
    for (std::size_t i = 0; i < stats.shard_count(); ++i) {
        StatsShard& s = stats.shard(i);
        for (uint64_t k = 0; k < 40; ++k) {
            const uint64_t v = uint64_t{1} << k;
            for (auto& h : s.request_latency_ns.items) h.observe(v);
            for (auto& h : s.dma_call_latency_ns.items) h.observe(v);
            for (auto& h : s.unpin_scan_duration_ns.items) h.observe(v);
            s.pages_per_request.observe(v >> 20);
        }
        StatsFields<Counter, Log2Histogram>::for_each_field(s, s, [](auto& a, auto&) {
            using T = std::remove_reference_t<decltype(a)>;
            if constexpr (std::is_same_v<T, Counter>) {
                a.add(12345);
            } else if constexpr (requires { a.items[0].add(1); }) {
                for (auto& c : a.items) c.add(678);
            }
        });
    }
    GaugeFields<PaddedGauge>::for_each_field(stats.gauges(), stats.gauges(),
                                             [](PaddedGauge& g, PaddedGauge&) { g.set(4242); });
}

std::shared_ptr<CollectorSet> make_set(StatsRegistry& stats) {
    auto set = std::make_shared<CollectorSet>();
    (void)set->add("engine", std::make_shared<EngineCollector>([&stats] { return stats.snapshot(); },
                                                               EngineInfo{this_build(), ConfigInfo{}}));
    (void)set->add("process", std::make_shared<ProcessCollector>());
    return set;
}

void BM_EngineFamilies(benchmark::State& state) {
    StatsRegistry stats(static_cast<std::size_t>(state.range(0)));
    populate(stats);
    const EngineInfo info{this_build(), ConfigInfo{}};
    for (auto _ : state) benchmark::DoNotOptimize(engine_families(stats.snapshot(), info));
}
BENCHMARK(BM_EngineFamilies)->Arg(8)->Unit(benchmark::kMicrosecond);

void BM_ProcessFamilies(benchmark::State& state) {
    const ProcessCollector c;
    for (auto _ : state) {
        std::vector<prometheus::MetricFamily> out;
        benchmark::DoNotOptimize(c.collect_into(out));
    }
}
BENCHMARK(BM_ProcessFamilies)->Unit(benchmark::kMicrosecond);

// One full scrape in-process: CollectorSet::Collect() + TextSerializer, `shards` vCPU shards.
void BM_FullScrape(benchmark::State& state) {
    StatsRegistry stats(static_cast<std::size_t>(state.range(0)));
    populate(stats);
    auto set = make_set(stats);
    const prometheus::TextSerializer serializer;
    std::size_t bytes = 0;
    for (auto _ : state) {
        const std::string text = serializer.Serialize(set->Collect());
        bytes = text.size();
        benchmark::DoNotOptimize(text.data());
    }
    state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_FullScrape)->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMicrosecond);

// Every BPF tracer attached (vfio_dma, engine USDT, fentry), 7 programs, every slot populated.
BpfScrape populated_bpf() {
    BpfScrape s;
    s.telemetry.engine = bpf::EngineSnapshot{};
    s.telemetry.kern = bpf::VfioKernSnapshot{};
    s.slow_threshold = std::chrono::milliseconds(1);
    const auto fill = [](bpf::Log2Hist& h) {
        for (std::size_t k = 0; k < bpf::kHistSlots; ++k) h.slots[k] = 1000 + k;
        h.sum = 123456789;
    };
    for (auto& h : s.telemetry.vfio_dma.latency_ns) fill(h);
    for (auto& h : s.telemetry.engine->request_latency_ns) fill(h);
    for (auto& h : s.telemetry.engine->request_pages) fill(h);
    for (auto& h : s.telemetry.engine->dma_latency_ns) fill(h);
    for (auto& h : s.telemetry.engine->scan_duration_ns) fill(h);
    for (auto& h : s.telemetry.kern->latency_ns) fill(h);
    for (const char* name : {"vfio_dma_enter", "vfio_dma_exit", "eng_req_start", "eng_req_done", "eng_dma_map",
                             "eng_dma_unmap", "eng_unpin_scan"}) {
        bpf::ProgramInfo p;
        p.program = name;
        p.attach = "usdt";
        p.id = 42;
        p.tag = "0123456789abcdef";
        p.attached = true;
        p.run_time_ns = 123456;
        p.run_cnt = 789;
        s.telemetry.programs.push_back(p);
    }
    return s;
}

// The BPF collector's part of a scrape (map reads excluded: they are syscalls, measured live by
// engine_scrape_bench --bpf): building the families from one snapshot.
void BM_BpfFamilies(benchmark::State& state) {
    const BpfScrape s = populated_bpf();
    for (auto _ : state) benchmark::DoNotOptimize(bpf_families(s));
}
BENCHMARK(BM_BpfFamilies)->Unit(benchmark::kMicrosecond);

// A full scrape of the engine daemon with the tracer attached: engine (8 shards) + process + BPF.
void BM_FullScrapeWithBpf(benchmark::State& state) {
    StatsRegistry stats(8);
    populate(stats);
    auto set = make_set(stats);
    const BpfScrape bpf = populated_bpf();
    (void)set->add("bpf", std::make_shared<BpfCollector>([&bpf]() -> Result<BpfScrape> { return bpf; }));
    const prometheus::TextSerializer serializer;
    std::size_t bytes = 0;
    for (auto _ : state) {
        const std::string text = serializer.Serialize(set->Collect());
        bytes = text.size();
        benchmark::DoNotOptimize(text.data());
    }
    state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_FullScrapeWithBpf)->Unit(benchmark::kMicrosecond);

// The writer's side: the per-request stats updates of one vCPU arena while a scraper thread runs a
// full scrape every `interval_ms` (0 = no scraper). The difference is what scraping costs the
// hot path (cache lines of the shard pulled to the reader's core); compare the rows of one run.
void BM_WriterWhileScraped(benchmark::State& state) {
    const auto interval = std::chrono::milliseconds(state.range(0));
    StatsRegistry stats(8);
    populate(stats);
    auto set = make_set(stats);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> scrapes{0};
    std::thread scraper;
    if (interval.count() > 0) {
        scraper = std::thread([&] {
            const prometheus::TextSerializer serializer;
            while (!stop.load(std::memory_order_relaxed)) {
                benchmark::DoNotOptimize(serializer.Serialize(set->Collect()).size());
                scrapes.fetch_add(1, std::memory_order_relaxed);
                std::this_thread::sleep_for(interval);
            }
        });
    }
    StatsShard& s = stats.shard(0);
    uint64_t i = 0;
    for (auto _ : state) {
        s.requests[RequestKind::Batch].add();
        s.pages_requested.add(16);
        s.pages_pinned.add(16);
        s.pages_per_request.observe(16);
        s.dma_calls[DmaOp::Map].add();
        s.dma_call_latency_ns[DmaOp::Map].observe(2000 + (i & 1023));
        s.request_latency_ns[RequestKind::Batch].observe(5000 + (i & 4095));
        stats.gauges().pinned_pages.add(16);
        ++i;
    }
    stop.store(true, std::memory_order_relaxed);
    if (scraper.joinable()) scraper.join();
    state.counters["scrapes"] = static_cast<double>(scrapes.load());
}
BENCHMARK(BM_WriterWhileScraped)->Arg(0)->Arg(1000)->Arg(10)->Arg(0)->MinTime(3.0);

#ifdef COIOMMU_BENCH_HTTP
// The same scrape through civetweb on loopback (what Prometheus pays per scrape, minus its side).
void BM_HttpScrape(benchmark::State& state) {
    StatsRegistry stats(8);
    populate(stats);
    auto exposer = Exposer::start({.address = "127.0.0.1:0"});
    if (!exposer || !exposer->register_collectable(make_set(stats))) {
        state.SkipWithError("cannot start the exposer");
        return;
    }
    for (auto _ : state) {
        auto resp = testing::http_get("127.0.0.1", exposer->port(), "/metrics");
        if (!resp || resp->status != 200) {
            state.SkipWithError("scrape failed");
            break;
        }
        benchmark::DoNotOptimize(resp->body.data());
    }
}
BENCHMARK(BM_HttpScrape)->Unit(benchmark::kMicrosecond);
#endif

}  // namespace
}  // namespace coiommu::exporter

BENCHMARK_MAIN();
