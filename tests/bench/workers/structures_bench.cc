// Design choices, measured:
//  - where extent records live: the flat per-gfn word (ExtentStoreKind::Flat) or a
//    tbb::concurrent_hash_map<head gfn, len> (ExtentStoreKind::Tbb): record + length + erase of an
//    extent, sequential and random heads (the engine-level comparison is BM_DirectBatch512 and
//    BM_DirectRandomSingle in engine_bench with each store);
//  - how a request reaches a pin worker: our MpmcQueue + EventCount with dedicated threads, or a
//    tbb::task_arena enqueue; a producer hands one item over and waits for it to be done.
#include <benchmark/benchmark.h>
#include <sched.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "engine/workers/extent_map.h"
#include "engine/workers/mpmc_queue.h"

namespace coiommu::bench {
namespace {

using workers::ExtentMap;
using workers::ExtentStoreKind;

constexpr uint64_t kGfns = uint64_t{1} << 22;  // a 16 GiB guest

// Spin until pred(), yielding the CPU every 64 iterations as the engine's spin loops do (on 2 cores
// a pure spinner can starve the thread it waits for for a whole scheduler slice).
template <class Pred>
void spin_until(Pred&& pred) {
    for (uint32_t i = 1; !pred(); ++i) {
        if ((i & 63) == 0) ::sched_yield();
        workers::cpu_relax();
    }
}
constexpr uint32_t kExtentLen = 1;  // one-page extents: the worst case for a hash map

std::vector<uint64_t> heads(bool random) {
    std::vector<uint64_t> h(1u << 16);  // 65536 live extents: the default dma_entry_limit
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = i * 4;
    if (random) {
        std::mt19937_64 rng(7);
        for (auto& x : h) x = std::uniform_int_distribution<uint64_t>(0, kGfns - 1)(rng);
        std::sort(h.begin(), h.end());
        h.erase(std::unique(h.begin(), h.end()), h.end());
        std::shuffle(h.begin(), h.end(), rng);
    }
    return h;
}

// One extent's life: record (pin), length lookup (unpin scan), erase (unpin).
void BM_ExtentRecordLookupErase(benchmark::State& state) {
    const auto kind = static_cast<ExtentStoreKind>(state.range(0));
    const bool random = state.range(1) != 0;
    auto map = ExtentMap::create(kGfns, kind).value();
    const auto h = heads(random);
    std::size_t i = 0;
    for (auto _ : state) {
        const Gfn head{h[i]};
        map.record(head, kExtentLen);
        benchmark::DoNotOptimize(map.length(head));
        map.erase(head, kExtentLen);
        if (++i == h.size()) i = 0;
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
    state.SetLabel(std::string(to_string(kind)) + (random ? ",random" : ",stride-4"));
}
BENCHMARK(BM_ExtentRecordLookupErase)->Args({0, 0})->Args({1, 0})->Args({0, 1})->Args({1, 1});

// A lookup among 65536 live extents (the unpin side and balloon's head_of + length).
void BM_ExtentLookupAmongLive(benchmark::State& state) {
    const auto kind = static_cast<ExtentStoreKind>(state.range(0));
    auto map = ExtentMap::create(kGfns, kind).value();
    const auto h = heads(true);
    for (uint64_t x : h) map.record(Gfn{x}, kExtentLen);
    std::size_t i = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(map.length(Gfn{h[i]}));
        if (++i == h.size()) i = 0;
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
    state.SetLabel(std::string(to_string(kind)));
}
BENCHMARK(BM_ExtentLookupAmongLive)->Arg(0)->Arg(1);

// ---- worker hand-off: dedicated threads on MpmcQueue vs a TBB task arena -------------------------

// Producer pushes an item, a worker "serves" it (sets a done flag), the producer spins until done:
// the per-request dispatch cost of the engine's hand-off, with the worker either spinning (it was
// busy a moment ago) or asleep.
void BM_HandoffThreads(benchmark::State& state) {
    const bool worker_spins = state.range(0) != 0;
    workers::MpmcQueue<uint64_t> q(64);
    workers::EventCount ec;
    std::atomic<uint64_t> done{0};
    std::atomic<bool> stop{false};
    std::thread worker([&] {
        for (;;) {
            std::optional<uint64_t> item;
            for (int spin = 1; spin < (worker_spins ? 1 << 14 : 0) && !item; ++spin) {
                item = q.try_pop();
                if (!item) {
                    if ((spin & 63) == 0) ::sched_yield();
                    workers::cpu_relax();
                }
            }
            while (!item) {
                const auto key = ec.prepare_wait();
                item = q.try_pop();
                if (item) {
                    ec.cancel_wait();
                    break;
                }
                if (stop.load()) {
                    ec.cancel_wait();
                    return;
                }
                ec.wait(key);
                item = q.try_pop();
            }
            if (*item == 0) return;
            done.store(*item, std::memory_order_release);
        }
    });
    uint64_t n = 0;
    for (auto _ : state) {
        ++n;
        spin_until([&] { return q.try_push(n); });
        ec.notify_one();
        spin_until([&] { return done.load(std::memory_order_acquire) == n; });
    }
    stop = true;
    spin_until([&] { return q.try_push(0); });
    ec.notify_all();
    worker.join();
    state.SetLabel(worker_spins ? "threads, worker spins" : "threads, worker sleeps (futex)");
}
BENCHMARK(BM_HandoffThreads)->Arg(1)->Arg(0)->UseRealTime();

void BM_HandoffTbbArena(benchmark::State& state) {
    tbb::task_arena arena(1);
    std::atomic<uint64_t> done{0};
    uint64_t n = 0;
    for (auto _ : state) {
        ++n;
        arena.enqueue([&done, n] { done.store(n, std::memory_order_release); });
        spin_until([&] { return done.load(std::memory_order_acquire) == n; });
    }
    state.SetLabel("tbb::task_arena(1)::enqueue");
}
BENCHMARK(BM_HandoffTbbArena)->UseRealTime();

}  // namespace
}  // namespace coiommu::bench

BENCHMARK_MAIN();
