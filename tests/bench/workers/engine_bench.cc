// Pin throughput and latency of the engine (costs: engine/README.md, "VFIO cost model"; results and
// the 5× goal against the seed variant: tests/bench/workers/README.md).
//
//   Direct*     the fast pin path on the benchmark thread (decode, DTT walk, coalesce, map, PINNED,
//               completion), i.e. "the engine alone on one worker", no protocol
//   Engine*     the whole engine behind the device: the benchmark thread is a vCPU writing its slot
//               and its trigger eventfd and spinning until completion
//   DttWalkFloor the physical floor of a random single-page request: a cold DTT walk + fetch_or
//   RoundTrip*  request latency percentiles, and a raw eventfd ping-pong in the same run
//
// Backends: null (engine alone), fake with LatencyModel::typical() (map 1.5 µs + 0.5 µs/page,
// unmap 2 µs + 1 µs/page, container mutex) and fake "batched pin" (map 1.8 µs + 0.2 µs/page,
// the kernel's batched-pin amortisation, engine/README.md, "VFIO cost model").
#include <benchmark/benchmark.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "engine/base/log.h"
#include <fmt/format.h>
#include "engine/telemetry/clock.h"
#include "engine/telemetry/histogram.h"
#include "tests/bench/workers/bench_vm.h"

namespace coiommu::bench {
namespace {

using workers::Coalesce;
using workers::EngineConfig;
using workers::ExtentStoreKind;
using workers::Variant;

EngineConfig config(Variant v, uint32_t workers = 1, std::chrono::nanoseconds spin = std::chrono::microseconds(50)) {
    EngineConfig cfg;
    cfg.variant = v;
    cfg.workers = workers;
    cfg.spin_budget = spin;
    return cfg;
}

std::vector<uint64_t> shuffled_data_gfns(uint32_t seed = 42) {
    std::vector<uint64_t> g(kDataPages);
    std::iota(g.begin(), g.end(), kDataFirst);
    std::shuffle(g.begin(), g.end(), std::mt19937_64(seed));
    return g;
}

void report_pages(benchmark::State& state, uint64_t pages_per_iteration) {
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * pages_per_iteration));
    state.counters["pages"] =
        benchmark::Counter(static_cast<double>(state.iterations() * pages_per_iteration), benchmark::Counter::kIsRate);
}

// ---- the engine alone (null backend) ------------------------------------------------------------

void BM_DirectBatch512(benchmark::State& state) {
    const auto store = static_cast<ExtentStoreKind>(state.range(0));
    const auto coalesce = static_cast<Coalesce>(state.range(1));
    PinDirect p(BackendKind::Null, store, coalesce);
    Cursor c(512);
    const uint64_t value = raw(PinDirect::batch_gpa()) | core::kPinPagesInBatch;
    for (auto _ : state) {
        const uint64_t first = c.next(state, [&] { p.reset(); });
        p.write_batch(first, 512);
        benchmark::DoNotOptimize(p.serve(value));
    }
    report_pages(state, 512);
    state.SetLabel(std::string(to_string(store)) + (coalesce == Coalesce::On ? ",coalesce" : ",no-coalesce"));
}
BENCHMARK(BM_DirectBatch512)->Args({0, 1})->Args({1, 1})->Args({0, 0});

void BM_DirectRandomSingle(benchmark::State& state) {
    const auto store = static_cast<ExtentStoreKind>(state.range(0));
    PinDirect p(BackendKind::Null, store);
    const auto gfns = shuffled_data_gfns();
    std::size_t i = 0;
    for (auto _ : state) {
        if (i == gfns.size()) {
            state.PauseTiming();
            p.reset();
            i = 0;
            state.ResumeTiming();
        }
        benchmark::DoNotOptimize(p.serve((gfns[i++] << core::kSingleGfnShift) | kBdf));
    }
    report_pages(state, 1);
    state.SetLabel(std::string(to_string(store)));
}
BENCHMARK(BM_DirectRandomSingle)->Arg(0)->Arg(1);

// The floor of a random single page: a cold walk from the root (no cursor) plus the PINNED RMW.
void BM_DttWalkFloor(benchmark::State& state) {
    auto guest = make_guest();
    auto walker = guest.walker().value();
    const auto gfns = shuffled_data_gfns();
    std::size_t i = 0;
    for (auto _ : state) {
        if (i == gfns.size()) i = 0;
        walker.reset_cursor();
        auto leaf = walker.leaf(Gfn{gfns[i++]});
        // Safety: leaf word of the benchmark's own guest; seq_cst as the engine.
        benchmark::DoNotOptimize(leaf->fetch_or(core::kDttePinned, std::memory_order_seq_cst));
    }
    report_pages(state, 1);
}
BENCHMARK(BM_DttWalkFloor);

// The floor of the 512-page pin path: one seq_cst fetch_or per page (setting PINNED) over 512
// consecutive leaf words, nothing else. BM_DirectBatch512 ÷ this is the path's overhead.
void BM_FetchOrFloor512(benchmark::State& state) {
    std::vector<std::atomic<uint32_t>> words(512);
    for (auto _ : state) {
        for (auto& w : words) benchmark::DoNotOptimize(w.fetch_or(core::kDttePinned, std::memory_order_seq_cst));
        for (auto& w : words) w.store(0, std::memory_order_relaxed);
    }
    report_pages(state, 512);
}
BENCHMARK(BM_FetchOrFloor512);

void BM_EngineBatch512(benchmark::State& state) {
    BenchVm vm(config(Variant::Fast, static_cast<uint32_t>(state.range(0))), BackendKind::Null);
    Cursor c(512);
    for (auto _ : state) {
        const uint64_t first = c.next(state, [&] { vm.reset(); });
        if (!vm.request(0, first, 512)) state.SkipWithError("request failed");
    }
    report_pages(state, 512);
    state.SetLabel(state.range(0) == 0 ? "inline" : "1 worker");
}
BENCHMARK(BM_EngineBatch512)->Arg(1)->Arg(0)->UseRealTime();

void BM_EngineRandomSingle(benchmark::State& state) {
    BenchVm vm(config(Variant::Fast), BackendKind::Null);
    const auto gfns = shuffled_data_gfns();
    std::size_t i = 0;
    for (auto _ : state) {
        if (i == gfns.size()) {
            state.PauseTiming();
            vm.reset();
            i = 0;
            state.ResumeTiming();
        }
        if (!vm.request(0, gfns[i++], 1)) state.SkipWithError("request failed");
    }
    report_pages(state, 1);
}
BENCHMARK(BM_EngineRandomSingle)->UseRealTime();

// ---- fast vs the seed pinner with the fake's latency model -----------------------------

void contiguous_batches(benchmark::State& state, const EngineConfig& cfg, BackendKind backend, uint64_t pages) {
    BenchVm vm(cfg, backend);
    Cursor c(pages);
    for (auto _ : state) {
        const uint64_t first = c.next(state, [&] { vm.reset(); });
        if (!vm.request(0, first, pages)) state.SkipWithError("request failed");
    }
    report_pages(state, pages);
    state.SetLabel(fmt::format("{} workers={} spin={}us", to_string(cfg.variant), cfg.workers,
                               std::chrono::duration_cast<std::chrono::microseconds>(cfg.spin_budget).count()));
}

// Args: pages per request, variant (0 fast, 1 seed), workers, spin budget in µs.
EngineConfig config_from(const benchmark::State& s) {
    return config(s.range(1) == 0 ? Variant::Fast : Variant::Seed, static_cast<uint32_t>(s.range(2)),
                  std::chrono::microseconds(s.range(3)));
}
void BM_FakeTypical(benchmark::State& s) {
    contiguous_batches(s, config_from(s), BackendKind::FakeLatency, s.range(0));
}
void BM_FakeBatchedPin(benchmark::State& s) {
    contiguous_batches(s, config_from(s), BackendKind::FakeBatchedPin, s.range(0));
}
void fake_matrix(benchmark::internal::Benchmark* b) {
    for (int64_t pages : {64, 1}) {
        b->Args({pages, 1, 1, 0});   // seed (its workers/spin are ignored)
        b->Args({pages, 0, 1, 50});  // fast, 1 worker, spin 50 µs (the defaults from 4 CPUs)
        b->Args({pages, 0, 1, 0});   // fast, 1 worker, no spin
        b->Args({pages, 0, 0, 50});  // fast, inline, spin 50 µs
        b->Args({pages, 0, 0, 10});  // fast, inline, spin 10 µs (the defaults below 4 CPUs)
        b->Args({pages, 0, 0, 0});   // fast, inline, no spin
    }
    b->UseRealTime();
}
BENCHMARK(BM_FakeTypical)->Apply(fake_matrix);

// The engine as users run it: every option at its default (workers and spin_budget `auto`).
// Args: pages per request, variant (0 fast, 1 seed).
void BM_FakeDefaults(benchmark::State& s) {
    EngineConfig cfg;
    cfg.variant = s.range(1) == 0 ? Variant::Fast : Variant::Seed;
    contiguous_batches(s, cfg, BackendKind::FakeLatency, s.range(0));
    s.SetLabel(fmt::format("{} defaults: workers={} spin={}ns", to_string(cfg.variant), workers::effective_workers(cfg),
                           workers::effective_spin_budget(cfg).count()));
}
BENCHMARK(BM_FakeDefaults)->Args({64, 0})->Args({64, 1})->Args({1, 0})->Args({1, 1})->UseRealTime();
BENCHMARK(BM_FakeBatchedPin)->Args({64, 1, 1, 0})->Args({64, 0, 1, 50})->Args({64, 0, 0, 50})->UseRealTime();

// Two vCPUs issuing 64-page batches at once: the fast engine keeps the container busy while the
// other request is prepared; the seed serialises everything behind its one thread.
void two_vcpus(benchmark::State& state, Variant v) {
    BenchVm vm(config(v, 1), BackendKind::FakeLatency, 2);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> other_pages{0};
    // vCPU 1 works in the upper half of the data range, the benchmark thread (vCPU 0) in the lower.
    std::thread other([&] {
        uint64_t pos = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            if (pos + 64 > kDataPages / 2) pos = 0;  // pages already pinned are skipped: cheap
            (void)vm.request(1, kDataFirst + kDataPages / 2 + pos, 64);
            pos += 64;
            other_pages.fetch_add(64, std::memory_order_relaxed);
        }
    });
    uint64_t pos = 0;
    for (auto _ : state) {
        if (pos + 64 > kDataPages / 2) pos = 0;
        if (!vm.request(0, kDataFirst + pos, 64)) state.SkipWithError("request failed");
        pos += 64;
    }
    stop = true;
    other.join();
    report_pages(state, 64);
    state.SetLabel("vCPU0 pages; both vCPUs keep pinning");
}
void BM_Fake64TwoVcpus_Fast(benchmark::State& s) { two_vcpus(s, Variant::Fast); }
void BM_Fake64TwoVcpus_Seed(benchmark::State& s) { two_vcpus(s, Variant::Seed); }
BENCHMARK(BM_Fake64TwoVcpus_Fast)->UseRealTime()->Iterations(400);
BENCHMARK(BM_Fake64TwoVcpus_Seed)->UseRealTime()->Iterations(400);

// ---- round trip -----------------------------------------------------------------------------------

void report_latency(benchmark::State& state, const telemetry::LogLinearHistogram& h) {
    const auto snap = h.snapshot();
    state.counters["p50_us"] = static_cast<double>(snap.percentile(0.50)) / 1000.0;
    state.counters["p99_us"] = static_cast<double>(snap.percentile(0.99)) / 1000.0;
    state.counters["p999_us"] = static_cast<double>(snap.percentile(0.999)) / 1000.0;
}

void round_trip(benchmark::State& state, EngineConfig cfg) {
    BenchVm vm(cfg, BackendKind::Null);
    telemetry::LogLinearHistogram h;
    const auto gfns = shuffled_data_gfns();
    std::size_t i = 0;
    for (auto _ : state) {
        if (i == gfns.size()) {
            state.PauseTiming();
            vm.reset();
            i = 0;
            state.ResumeTiming();
        }
        const uint64_t t0 = telemetry::monotonic_ns();
        if (!vm.request(0, gfns[i++], 1)) state.SkipWithError("request failed");
        h.observe(telemetry::monotonic_ns() - t0);
    }
    report_latency(state, h);
}
void BM_RoundTrip_FastSpin(benchmark::State& s) { round_trip(s, config(Variant::Fast)); }
void BM_RoundTrip_FastNoSpin(benchmark::State& s) {
    round_trip(s, config(Variant::Fast, 1, std::chrono::nanoseconds(0)));
}
void BM_RoundTrip_FastInline(benchmark::State& s) { round_trip(s, config(Variant::Fast, 0)); }
void BM_RoundTrip_FastInlineSpin10(benchmark::State& s) {
    round_trip(s, config(Variant::Fast, 0, std::chrono::microseconds(10)));
}
void BM_RoundTrip_FastInlineNoSpin(benchmark::State& s) {
    round_trip(s, config(Variant::Fast, 0, std::chrono::nanoseconds(0)));
}
void BM_RoundTrip_FastDefaultAuto(benchmark::State& s) {
    round_trip(s, EngineConfig{});  // workers=auto, spin_budget=auto: inline with a 10 µs spin on < 4 CPUs
    s.SetLabel(fmt::format("workers={} spin={}ns", workers::effective_workers(EngineConfig{}),
                           workers::effective_spin_budget(EngineConfig{}).count()));
}
void BM_RoundTrip_Seed(benchmark::State& s) { round_trip(s, config(Variant::Seed)); }
BENCHMARK(BM_RoundTrip_FastSpin)->UseRealTime();
BENCHMARK(BM_RoundTrip_FastNoSpin)->UseRealTime();
BENCHMARK(BM_RoundTrip_FastInline)->UseRealTime();
BENCHMARK(BM_RoundTrip_FastInlineSpin10)->UseRealTime();
BENCHMARK(BM_RoundTrip_FastInlineNoSpin)->UseRealTime();
BENCHMARK(BM_RoundTrip_FastDefaultAuto)->UseRealTime();
BENCHMARK(BM_RoundTrip_Seed)->UseRealTime();

// Raw eventfd ping-pong between two threads, both blocking in read(2): the kernel's floor for a
// notification round trip without spinning. Same process, same run.
void BM_RoundTrip_EventfdPingPong(benchmark::State& state) {
    const int ping = ::eventfd(0, EFD_CLOEXEC);
    const int pong = ::eventfd(0, EFD_CLOEXEC);
    std::atomic<bool> stop{false};
    std::thread peer([&] {
        uint64_t v = 0;
        while (::read(ping, &v, 8) == 8 && !stop.load(std::memory_order_relaxed)) {
            const uint64_t one = 1;
            if (::write(pong, &one, 8) != 8) break;
        }
    });
    telemetry::LogLinearHistogram h;
    for (auto _ : state) {
        const uint64_t t0 = telemetry::monotonic_ns();
        const uint64_t one = 1;
        uint64_t v = 0;
        if (::write(ping, &one, 8) != 8 || ::read(pong, &v, 8) != 8) state.SkipWithError("eventfd");
        h.observe(telemetry::monotonic_ns() - t0);
    }
    stop = true;
    const uint64_t one = 1;
    (void)::write(ping, &one, 8);
    peer.join();
    ::close(ping);
    ::close(pong);
    report_latency(state, h);
}
BENCHMARK(BM_RoundTrip_EventfdPingPong)->UseRealTime();

// Engine INFO lines (start/stop per benchmark run) would drown the table.
const bool kQuiet = [] {
    log::set_level(log::Level::Warn);
    return true;
}();

}  // namespace
}  // namespace coiommu::bench

BENCHMARK_MAIN();
