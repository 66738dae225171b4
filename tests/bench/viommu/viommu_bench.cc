// BasicMemoryMapper and ViommuDevice costs against the number of live mappings n.
//
//   BM_AddRemove/n        add_map + remove_map of one 4 KiB mapping at a random free slot
//   BM_AddRemoveShuffled/n  the same, the n live mappings added in random order (scattered
//                         allocations: the "10^6 live mappings" case)
//   BM_Export/n/k         export_range + release of a range spanning k mappings (random start)
//   BM_DeviceMapUnmap/n   the same add/remove pair as guest MAP + UNMAP requests through
//                         ViommuDevice::handle (decode, domain lookup, mapper, tail)
//   BM_DependentLoad/mib  one load whose address the previous one gave, in a random cycle
//                         through mib MiB: what a cache miss costs on this machine at that
//                         working-set size (the yardstick for the n = 10^6 cases)
//
// Expected shape: O(log n) for add/remove, O(log n + k) for export; growth beyond that between
// n = 10^3 and 10^6 is cache misses of a tree that no longer fits in cache.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "engine/viommu/basic_mapper.h"
#include "engine/viommu/viommu_device.h"
#include "engine/viommu/protocol.h"

namespace coiommu::viommu {
namespace {

constexpr uint64_t kPage = 0x1000;
constexpr size_t kSlots = 4096;  // pre-drawn random positions, cycled

std::vector<uint64_t> random_slots(uint64_t bound, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<uint64_t> dist(0, bound - 1);
    std::vector<uint64_t> out(kSlots);
    for (auto& s : out) s = dist(rng);
    return out;
}

// n mappings of one page at even page numbers; the odd pages between them are free slots.
void fill_sparse(BasicMemoryMapper& m, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
        const uint64_t iova = 2 * i * kPage;
        if (!m.add_map(MappingInfo{Iova{iova}, Gpa{iova}, kPage, Prot::ReadWrite})) std::abort();
    }
}

// fill_sparse's mappings, added in a random order.
void fill_sparse_shuffled(BasicMemoryMapper& m, uint64_t n) {
    std::vector<uint64_t> order(n);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::shuffle(order.begin(), order.end(), std::mt19937_64(4));
    for (uint64_t i : order) {
        const uint64_t iova = 2 * i * kPage;
        if (!m.add_map(MappingInfo{Iova{iova}, Gpa{iova}, kPage, Prot::ReadWrite})) std::abort();
    }
}

void add_remove_loop(benchmark::State& state, BasicMemoryMapper& m, uint64_t n) {
    const auto slots = random_slots(n, 1);
    size_t k = 0;
    for (auto _ : state) {
        const uint64_t iova = (2 * slots[k++ % kSlots] + 1) * kPage;
        auto added = m.add_map(MappingInfo{Iova{iova}, Gpa{iova}, kPage, Prot::ReadWrite});
        auto removed = m.remove_map(Iova{iova}, kPage);
        benchmark::DoNotOptimize(added);
        benchmark::DoNotOptimize(removed);
    }
    state.counters["live"] = static_cast<double>(m.size());
}

void BM_AddRemove(benchmark::State& state) {
    const auto n = static_cast<uint64_t>(state.range(0));
    BasicMemoryMapper m(~uint64_t{0});
    fill_sparse(m, n);
    add_remove_loop(state, m, n);
}

void BM_AddRemoveShuffled(benchmark::State& state) {
    const auto n = static_cast<uint64_t>(state.range(0));
    BasicMemoryMapper m(~uint64_t{0});
    fill_sparse_shuffled(m, n);
    add_remove_loop(state, m, n);
}

void BM_Export(benchmark::State& state) {
    const auto n = static_cast<uint64_t>(state.range(0));
    const auto k = static_cast<uint64_t>(state.range(1));
    BasicMemoryMapper m(~uint64_t{0});
    // n contiguous one-page mappings with contiguous GPAs: an export merges into one region,
    // but the walk still visits all k mappings.
    for (uint64_t i = 0; i < n; ++i) {
        if (!m.add_map(MappingInfo{Iova{i * kPage}, Gpa{i * kPage}, kPage, Prot::ReadWrite})) std::abort();
    }
    if (!m.start_export_session()) std::abort();
    const auto starts = random_slots(n - k + 1, 2);
    size_t i = 0;
    for (auto _ : state) {
        const uint64_t iova = starts[i++ % kSlots] * kPage;
        auto regions = m.export_range(Iova{iova}, k * kPage);
        benchmark::DoNotOptimize(regions);
        auto released = m.release(Iova{iova}, k * kPage);
        benchmark::DoNotOptimize(released);
    }
    if (m.exported_count() != 0) state.SkipWithError("exports leaked");
}

std::vector<std::byte> map_request(uint32_t domain, uint64_t iova) {
    wire::ReqMap body;
    body.domain = domain;
    body.virt_start = iova;
    body.virt_end = iova + kPage - 1;
    body.phys_start = iova;
    body.flags = wire::kMapFlagRead | wire::kMapFlagWrite;
    wire::ReqHead head;
    head.type = wire::kTypeMap;
    std::vector<std::byte> out(sizeof head + sizeof body);
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

std::vector<std::byte> unmap_request(uint32_t domain, uint64_t iova) {
    wire::ReqUnmap body;
    body.domain = domain;
    body.virt_start = iova;
    body.virt_end = iova + kPage - 1;
    wire::ReqHead head;
    head.type = wire::kTypeUnmap;
    std::vector<std::byte> out(sizeof head + sizeof body);
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

void BM_DeviceMapUnmap(benchmark::State& state) {
    const auto n = static_cast<uint64_t>(state.range(0));
    auto mapper = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    fill_sparse(*mapper, n);
    ViommuDevice dev;
    if (!dev.add_endpoint(1, mapper)) std::abort();
    {
        wire::ReqAttach body;
        body.domain = 1u;
        body.endpoint = 1u;
        wire::ReqHead head;
        head.type = wire::kTypeAttach;
        std::byte req[sizeof head + sizeof body];
        std::memcpy(req, &head, sizeof head);
        std::memcpy(req + sizeof head, &body, sizeof body);
        std::byte tail[4];
        if (!dev.handle(req, tail) || tail[0] != std::byte{0}) std::abort();
    }
    const auto slots = random_slots(n, 3);
    // Pre-built requests: the bench measures handling, not encoding.
    std::vector<std::vector<std::byte>> maps;
    std::vector<std::vector<std::byte>> unmaps;
    for (uint64_t s : slots) {
        const uint64_t iova = (2 * s + 1) * kPage;
        maps.push_back(map_request(1, iova));
        unmaps.push_back(unmap_request(1, iova));
    }
    std::byte tail[4];
    size_t i = 0;
    for (auto _ : state) {
        const size_t k = i++ % kSlots;
        auto a = dev.handle(maps[k], tail);
        auto b = dev.handle(unmaps[k], tail);
        benchmark::DoNotOptimize(a);
        benchmark::DoNotOptimize(b);
    }
    if (mapper->size() != n) state.SkipWithError("mapping count drifted");
}

void BM_DependentLoad(benchmark::State& state) {
    const size_t lines = static_cast<size_t>(state.range(0)) << 20 >> 6;
    constexpr size_t kWords = 64 / sizeof(uint64_t);
    std::vector<uint64_t> order(lines);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::shuffle(order.begin(), order.end(), std::mt19937_64(5));
    std::vector<uint64_t> next(lines * kWords);  // one link per cache line: line order[i] -> order[i + 1]
    for (size_t i = 0; i < lines; ++i) next[order[i] * kWords] = order[(i + 1) % lines] * kWords;
    uint64_t at = order[0] * kWords;
    for (auto _ : state) {
        at = next[at];
        benchmark::DoNotOptimize(at);
    }
}

void Sizes(benchmark::internal::Benchmark* b) {
    for (int64_t n : {1000, 10000, 100000, 1000000}) b->Arg(n);
}
void SizesAndSpans(benchmark::internal::Benchmark* b) {
    for (int64_t n : {1000, 10000, 100000, 1000000}) {
        for (int64_t k : {1, 16, 256}) b->Args({n, k});
    }
}

BENCHMARK(BM_AddRemove)->Apply(Sizes);
BENCHMARK(BM_AddRemoveShuffled)->Apply(Sizes);
BENCHMARK(BM_Export)->Apply(SizesAndSpans);
BENCHMARK(BM_DeviceMapUnmap)->Apply(Sizes);
BENCHMARK(BM_DependentLoad)->Arg(1)->Arg(4)->Arg(16)->Arg(64);

}  // namespace
}  // namespace coiommu::viommu

BENCHMARK_MAIN();
