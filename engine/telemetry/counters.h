// Counter and gauge cells for sharded statistics, and a small enum-indexed array.
//
// The pattern (Firecracker's "metrics live beside the device", katran's per-CPU stats):
//  - every writer thread (a per-vCPU arena, a pin worker, the unpinner) owns a cache-line-aligned
//    shard and bumps plain 64-bit cells in it with relaxed atomics: no lock, no allocation, no
//    metric-library call, no cache line shared with another writer;
//  - a reader (the exporter at scrape time, a load report) sums the cells across shards.
//
// Two counter flavours:
//  - Counter: add() is a relaxed fetch_add (one locked instruction, ~5-10 ns uncontended on x86).
//    Correct with any number of writers; this is what StatsShard uses, so an engine that lets two
//    threads share a shard loses nothing.
//  - SingleWriterCounter: add() is a relaxed load + store (no locked instruction). Correct only
//    while exactly one thread writes it at a time (concurrent adds would lose increments); readers
//    on other threads are fine. For the hottest owner-only cells.
// Both are monotonic (Prometheus counters): never decrement, wrap only after 2^64.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

namespace coiommu::telemetry {

inline constexpr std::size_t kCacheLineSize = 64;

class Counter {
public:
    void add(uint64_t n = 1) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
    [[nodiscard]] uint64_t load() const noexcept { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> v_{0};
};

class SingleWriterCounter {
public:
    // Precondition: no other thread calls add() on this cell concurrently.
    void add(uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    [[nodiscard]] uint64_t load() const noexcept { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> v_{0};
};

// A gauge: a value that goes up and down (set, add, sub). Relaxed; any number of writers.
// Unsigned: callers keep it from going below zero (sub() of more than the value wraps).
class Gauge {
public:
    void set(uint64_t v) noexcept { v_.store(v, std::memory_order_relaxed); }
    void add(uint64_t n = 1) noexcept { v_.fetch_add(n, std::memory_order_relaxed); }
    void sub(uint64_t n = 1) noexcept { v_.fetch_sub(n, std::memory_order_relaxed); }
    [[nodiscard]] uint64_t load() const noexcept { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> v_{0};
};

// A gauge on its own cache line, for engine-wide gauges written by several threads: writers of
// one gauge still contend, but never with writers of a neighbouring gauge.
struct alignas(kCacheLineSize) PaddedGauge : Gauge {};
static_assert(sizeof(PaddedGauge) == kCacheLineSize);

// An array indexed by an enum class whose enumerators are 0..N-1 (e.g. RequestKind):
//   EnumArray<RequestKind, Counter, 2> requests;  requests[RequestKind::Batch].add();
template <class Enum, class T, std::size_t N>
struct EnumArray {
    static_assert(std::is_enum_v<Enum>);
    std::array<T, N> items{};

    [[nodiscard]] static constexpr std::size_t size() noexcept { return N; }
    // Precondition: static_cast<size_t>(e) < N (enumerators are the dense range 0..N-1).
    [[nodiscard]] T& operator[](Enum e) noexcept { return items[static_cast<std::size_t>(e)]; }
    [[nodiscard]] const T& operator[](Enum e) const noexcept { return items[static_cast<std::size_t>(e)]; }
    [[nodiscard]] T& at_index(std::size_t i) noexcept { return items[i]; }
    [[nodiscard]] const T& at_index(std::size_t i) const noexcept { return items[i]; }
};

// Owns the shards of one statistics schema: a fixed set created up front (one per vCPU arena)
// that can grow later (a new session's arenas). Shards are never removed, so the totals a reader
// sums stay monotonic after a writer goes away; an engine may hand a departed arena's shard to a
// new one by index.
//
// Thread-safety: shard(), add() and for_each() take an internal mutex; call shard()/add() when an
// arena is set up and keep the returned reference (its address is stable for the set's
// lifetime). Writers then touch only their shard, never the mutex. for_each() (the reader) holds
// the mutex only against add(), never against writers.
template <class Shard>
class ShardSet {
public:
    explicit ShardSet(std::size_t initial_shards) {
        shards_.reserve(initial_shards);
        for (std::size_t i = 0; i < initial_shards; ++i) shards_.push_back(std::make_unique<Shard>());
    }
    ShardSet(const ShardSet&) = delete;
    ShardSet& operator=(const ShardSet&) = delete;

    [[nodiscard]] std::size_t size() const {
        std::lock_guard lock(mu_);
        return shards_.size();
    }
    // Precondition: i < size().
    [[nodiscard]] Shard& shard(std::size_t i) {
        std::lock_guard lock(mu_);
        return *shards_[i];
    }
    // Appends a fresh shard and returns it. May throw std::bad_alloc (setup path, not hot path).
    [[nodiscard]] Shard& add() {
        auto s = std::make_unique<Shard>();
        std::lock_guard lock(mu_);
        shards_.push_back(std::move(s));
        return *shards_.back();
    }
    // Calls f(const Shard&) for every shard, in index order.
    template <class F>
    void for_each(F&& f) const {
        std::lock_guard lock(mu_);
        for (const auto& s : shards_) f(*s);
    }

private:
    mutable std::mutex mu_;
    std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace coiommu::telemetry
