// Wait-free histograms for the engine's stats shards and the load generator.
//
// Log2Histogram     64 power-of-two buckets plus a sum: the engine's latency and size histograms.
//                   Bucket k maps exactly onto a Prometheus `le = 2^k × unit` bound (the ceil(log2)
//                   convention of ebpf_exporter's log2 histograms, and of bpf/).
// LogLinearHistogram HDR-style: 16 linear sub-buckets per power of two, relative error < 1/16.
//                   For the load generator's p50/p90/p99/p99.9/max.
//
// Writers: observe() is a relaxed fetch_add per touched word, so it is wait-free (the max/min
// tracking of LogLinearHistogram is a CAS loop that only retries when another writer raced it:
// wait-free for a single writer, lock-free otherwise). Each histogram is meant to have one writer
// (it lives in a per-vCPU stats shard) but several writers are safe; they only contend.
//
// Readers: snapshot() may run on any thread at any time, concurrently with writers. It reads each
// bucket once, so a snapshot is not an atomic cut: `sum` may lag or lead the buckets by the few
// observations in flight. `count()` is *defined* as the sum of the buckets, so the exported
// `+Inf` bucket equals `_count` in every scrape, and successive snapshots never see a bucket or
// the count go down.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace coiommu::telemetry {

inline constexpr std::size_t kLog2Buckets = 64;

// Index of the Log2Histogram bucket holding `v`: ceil(log2(v)), with 0 and 1 in bucket 0 and
// everything above 2^63 clamped into the last bucket (63).
[[nodiscard]] constexpr std::size_t log2_bucket(uint64_t v) noexcept {
    if (v <= 1) return 0;
    const auto k = static_cast<std::size_t>(64 - std::countl_zero(v - 1));  // ceil(log2(v)), 1..64
    return k < kLog2Buckets ? k : kLog2Buckets - 1;
}

// Inclusive upper bound of bucket k: 2^k, except the last bucket, which also holds the clamped
// values above 2^63 and so is bounded by UINT64_MAX.
[[nodiscard]] constexpr uint64_t log2_bucket_upper_bound(std::size_t k) noexcept {
    return k + 1 >= kLog2Buckets ? UINT64_MAX : uint64_t{1} << k;
}

// A plain copy of a Log2Histogram. Not thread-safe itself (it is a value).
struct HistogramSnapshot {
    std::array<uint64_t, kLog2Buckets> buckets{};
    // Sum of observed values, modulo 2^64 (2^64 ns is 584 years of latency).
    uint64_t sum = 0;

    // Number of observations = sum of the buckets (so `+Inf` == `_count` by construction).
    [[nodiscard]] uint64_t count() const noexcept;
    // Adds another snapshot bucket by bucket (and the sums).
    void merge(const HistogramSnapshot& other) noexcept;
    // Upper bound of the bucket that holds the q-quantile, q clamped to [0, 1]: the smallest
    // bucket bound b with at least ceil(q × count) observations ≤ b (at least one). 0 if empty.
    [[nodiscard]] uint64_t percentile(double q) const noexcept;
};

class Log2Histogram {
public:
    Log2Histogram() = default;
    Log2Histogram(const Log2Histogram&) = delete;
    Log2Histogram& operator=(const Log2Histogram&) = delete;

    // Records one value. Wait-free: two relaxed fetch_adds, no allocation, no lock.
    void observe(uint64_t v) noexcept {
        buckets_[log2_bucket(v)].fetch_add(1, std::memory_order_relaxed);
        sum_.fetch_add(v, std::memory_order_relaxed);
    }

    // Reads every bucket once (relaxed). Safe concurrently with observe() on other threads.
    [[nodiscard]] HistogramSnapshot snapshot() const noexcept;
    // Adds this histogram's current contents into `out` (the shard-summing form of snapshot()).
    void accumulate_into(HistogramSnapshot& out) const noexcept;

private:
    std::array<std::atomic<uint64_t>, kLog2Buckets> buckets_{};
    std::atomic<uint64_t> sum_{0};
};

// ---------------------------------------------------------------------------------------------
// LogLinearHistogram: values 0..15 each get their own bucket; above that every power of two
// [2^e, 2^(e+1)) is split into 16 equal sub-buckets of width 2^(e-4). A bucket's width is at
// most 1/16 of its lower bound, so reporting a bucket's highest value over-estimates any value in
// it by less than 6.25%. Covers the full uint64 range in 976 buckets (7.8 KiB).

inline constexpr unsigned kLogLinearSubBucketBits = 4;
inline constexpr std::size_t kLogLinearSubBuckets = std::size_t{1} << kLogLinearSubBucketBits;
inline constexpr std::size_t kLogLinearBuckets =
    kLogLinearSubBuckets + (64 - kLogLinearSubBucketBits) * kLogLinearSubBuckets;  // 976

[[nodiscard]] constexpr std::size_t log_linear_bucket(uint64_t v) noexcept {
    if (v < kLogLinearSubBuckets) return static_cast<std::size_t>(v);
    const auto e = static_cast<unsigned>(63 - std::countl_zero(v));  // floor(log2 v), >= 4
    const auto sub = static_cast<std::size_t>((v >> (e - kLogLinearSubBucketBits)) & (kLogLinearSubBuckets - 1));
    return (e - kLogLinearSubBucketBits + 1) * kLogLinearSubBuckets + sub;
}

// Smallest value that falls into bucket i.
[[nodiscard]] constexpr uint64_t log_linear_bucket_lowest(std::size_t i) noexcept {
    if (i < kLogLinearSubBuckets) return i;
    const auto e = static_cast<unsigned>(i / kLogLinearSubBuckets) + kLogLinearSubBucketBits - 1;
    const auto sub = static_cast<uint64_t>(i % kLogLinearSubBuckets);
    return (kLogLinearSubBuckets + sub) << (e - kLogLinearSubBucketBits);
}

// Largest value that falls into bucket i (inclusive).
[[nodiscard]] constexpr uint64_t log_linear_bucket_highest(std::size_t i) noexcept {
    if (i < kLogLinearSubBuckets) return i;
    const auto e = static_cast<unsigned>(i / kLogLinearSubBuckets) + kLogLinearSubBucketBits - 1;
    return log_linear_bucket_lowest(i) + ((uint64_t{1} << (e - kLogLinearSubBucketBits)) - 1);
}

// A plain copy of a LogLinearHistogram (heap-allocated buckets: a value type for reports).
struct LogLinearSnapshot {
    std::vector<uint64_t> buckets = std::vector<uint64_t>(kLogLinearBuckets, 0);
    uint64_t sum = 0;  // modulo 2^64
    uint64_t min = 0;  // exact; 0 when empty
    uint64_t max = 0;  // exact; 0 when empty

    [[nodiscard]] uint64_t count() const noexcept;
    [[nodiscard]] double mean() const noexcept;  // 0 when empty
    void merge(const LogLinearSnapshot& other) noexcept;
    // The q-quantile (q clamped to [0, 1]) as the highest value of the bucket holding rank
    // ceil(q × count), capped at the exact max: within 6.25% above the true value, exact for
    // q = 1. 0 when empty.
    [[nodiscard]] uint64_t percentile(double q) const noexcept;
};

class LogLinearHistogram {
public:
    LogLinearHistogram() = default;
    LogLinearHistogram(const LogLinearHistogram&) = delete;
    LogLinearHistogram& operator=(const LogLinearHistogram&) = delete;

    // Records one value: two relaxed fetch_adds plus a min/max update that only writes when the
    // value is a new extreme. No allocation, no lock.
    void observe(uint64_t v) noexcept;

    // Safe concurrently with observe() (see the file comment for what "consistent" means).
    [[nodiscard]] LogLinearSnapshot snapshot() const;
    [[nodiscard]] uint64_t percentile(double q) const { return snapshot().percentile(q); }
    [[nodiscard]] uint64_t max() const noexcept;  // 0 when empty
    [[nodiscard]] uint64_t count() const noexcept;
    // Adds another histogram's current contents into this one (e.g. per-thread into a total).
    void merge(const LogLinearHistogram& other) noexcept;

private:
    void update_extremes(uint64_t lo, uint64_t hi) noexcept;

    std::array<std::atomic<uint64_t>, kLogLinearBuckets> buckets_{};
    std::atomic<uint64_t> sum_{0};
    std::atomic<uint64_t> min_{UINT64_MAX};
    std::atomic<uint64_t> max_{0};
};

}  // namespace coiommu::telemetry
