// What the engine pays per request for its statistics, and what a reader pays per snapshot.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "engine/telemetry/clock.h"
#include "engine/telemetry/counters.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/telemetry/histogram.h"

namespace coiommu::telemetry {
namespace {

void BM_CounterAdd(benchmark::State& state) {
    Counter c;
    for (auto _ : state) c.add(4);
    benchmark::DoNotOptimize(c.load());
}
BENCHMARK(BM_CounterAdd);

void BM_SingleWriterCounterAdd(benchmark::State& state) {
    SingleWriterCounter c;
    for (auto _ : state) c.add(4);
    benchmark::DoNotOptimize(c.load());
}
BENCHMARK(BM_SingleWriterCounterAdd);

void BM_Log2HistogramObserve(benchmark::State& state) {
    Log2Histogram h;
    uint64_t v = 1;
    for (auto _ : state) {
        h.observe(v);
        v = v * 6364136223846793005ull + 1442695040888963407ull;  // spread over all buckets
    }
    benchmark::DoNotOptimize(h.snapshot().sum);
}
BENCHMARK(BM_Log2HistogramObserve);

void BM_LogLinearHistogramObserve(benchmark::State& state) {
    LogLinearHistogram h;
    uint64_t v = 1;
    for (auto _ : state) {
        h.observe(v >> 24);
        v = v * 6364136223846793005ull + 1442695040888963407ull;
    }
    benchmark::DoNotOptimize(h.max());
}
BENCHMARK(BM_LogLinearHistogramObserve);

// The per-request bookkeeping the engine does for one batch request (no per-page work).
void BM_PerRequestStats(benchmark::State& state) {
    StatsRegistry stats(1);
    StatsShard& s = stats.shard(0);
    uint64_t i = 0;
    for (auto _ : state) {
        const uint64_t t0 = monotonic_ns();
        s.requests[RequestKind::Batch].add();
        s.pages_requested.add(16);
        s.pages_pinned.add(16);
        s.pages_per_request.observe(16);
        s.dma_calls[DmaOp::Map].add();
        s.dma_call_latency_ns[DmaOp::Map].observe(2000 + (i & 1023));
        s.request_latency_ns[RequestKind::Batch].observe(monotonic_ns() - t0);
        stats.gauges().pinned_pages.add(16);
        ++i;
    }
    benchmark::DoNotOptimize(stats.snapshot().totals.pages_pinned);
}
BENCHMARK(BM_PerRequestStats);

void BM_Snapshot(benchmark::State& state) {
    StatsRegistry stats(static_cast<std::size_t>(state.range(0)));
    for (auto _ : state) benchmark::DoNotOptimize(stats.snapshot());
}
BENCHMARK(BM_Snapshot)->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace coiommu::telemetry

BENCHMARK_MAIN();
