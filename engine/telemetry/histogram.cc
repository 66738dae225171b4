#include "engine/telemetry/histogram.h"

#include <algorithm>
#include <cmath>

namespace coiommu::telemetry {
namespace {

// Rank (1-based) of the q-quantile among `count` observations: ceil(q × count), at least 1.
// q is a binary fraction (0.9 is 0.9000000000000000222), so the product is shrunk by a relative
// 1e-12 before ceil: 0.9 × 100 must be rank 90, not 91.
uint64_t quantile_rank(double q, uint64_t count) noexcept {
    if (!(q > 0.0)) return 1;  // also catches NaN
    if (q >= 1.0) return count;
    const long double exact = static_cast<long double>(q) * static_cast<long double>(count);
    const auto rank = static_cast<uint64_t>(std::ceil(exact - exact * 1e-12L));
    return std::clamp<uint64_t>(rank, 1, count);
}

}  // namespace

uint64_t HistogramSnapshot::count() const noexcept {
    uint64_t n = 0;
    for (uint64_t b : buckets) n += b;
    return n;
}

void HistogramSnapshot::merge(const HistogramSnapshot& other) noexcept {
    for (std::size_t k = 0; k < kLog2Buckets; ++k) buckets[k] += other.buckets[k];
    sum += other.sum;
}

uint64_t HistogramSnapshot::percentile(double q) const noexcept {
    const uint64_t n = count();
    if (n == 0) return 0;
    const uint64_t rank = quantile_rank(q, n);
    uint64_t seen = 0;
    for (std::size_t k = 0; k < kLog2Buckets; ++k) {
        seen += buckets[k];
        if (seen >= rank) return log2_bucket_upper_bound(k);
    }
    return log2_bucket_upper_bound(kLog2Buckets - 1);  // unreachable: seen == n >= rank
}

HistogramSnapshot Log2Histogram::snapshot() const noexcept {
    HistogramSnapshot s;
    accumulate_into(s);
    return s;
}

void Log2Histogram::accumulate_into(HistogramSnapshot& out) const noexcept {
    // The sum is read first and the buckets after, so under racing writers the buckets tend to be
    // ahead of the sum rather than the sum counting observations no bucket shows yet.
    out.sum += sum_.load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < kLog2Buckets; ++k) out.buckets[k] += buckets_[k].load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------

uint64_t LogLinearSnapshot::count() const noexcept {
    uint64_t n = 0;
    for (uint64_t b : buckets) n += b;
    return n;
}

double LogLinearSnapshot::mean() const noexcept {
    const uint64_t n = count();
    return n == 0 ? 0.0 : static_cast<double>(sum) / static_cast<double>(n);
}

void LogLinearSnapshot::merge(const LogLinearSnapshot& other) noexcept {
    const bool had_values = count() != 0;
    const bool other_has_values = other.count() != 0;
    for (std::size_t i = 0; i < kLogLinearBuckets; ++i) buckets[i] += other.buckets[i];
    sum += other.sum;
    if (!other_has_values) return;
    min = had_values ? std::min(min, other.min) : other.min;
    max = had_values ? std::max(max, other.max) : other.max;
}

uint64_t LogLinearSnapshot::percentile(double q) const noexcept {
    const uint64_t n = count();
    if (n == 0) return 0;
    const uint64_t rank = quantile_rank(q, n);
    uint64_t seen = 0;
    for (std::size_t i = 0; i < kLogLinearBuckets; ++i) {
        seen += buckets[i];
        if (seen >= rank) return std::min(log_linear_bucket_highest(i), max);
    }
    return max;
}

void LogLinearHistogram::observe(uint64_t v) noexcept {
    buckets_[log_linear_bucket(v)].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
    update_extremes(v, v);
}

void LogLinearHistogram::update_extremes(uint64_t lo, uint64_t hi) noexcept {
    uint64_t cur_min = min_.load(std::memory_order_relaxed);
    while (lo < cur_min && !min_.compare_exchange_weak(cur_min, lo, std::memory_order_relaxed)) {}
    uint64_t cur_max = max_.load(std::memory_order_relaxed);
    while (hi > cur_max && !max_.compare_exchange_weak(cur_max, hi, std::memory_order_relaxed)) {}
}

LogLinearSnapshot LogLinearHistogram::snapshot() const {
    LogLinearSnapshot s;
    s.sum = sum_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < kLogLinearBuckets; ++i) s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    if (s.count() != 0) {
        s.min = min_.load(std::memory_order_relaxed);
        s.max = max_.load(std::memory_order_relaxed);
        // A racing writer may have bumped a bucket before publishing its extreme: keep the
        // snapshot self-consistent by widening min/max to the occupied buckets.
        for (std::size_t i = 0; i < kLogLinearBuckets; ++i) {
            if (s.buckets[i] != 0) {
                s.min = std::min(s.min, log_linear_bucket_highest(i));
                break;
            }
        }
        for (std::size_t i = kLogLinearBuckets; i-- > 0;) {
            if (s.buckets[i] != 0) {
                s.max = std::max(s.max, log_linear_bucket_lowest(i));
                break;
            }
        }
    }
    return s;
}

uint64_t LogLinearHistogram::max() const noexcept { return count() == 0 ? 0 : max_.load(std::memory_order_relaxed); }

uint64_t LogLinearHistogram::count() const noexcept {
    uint64_t n = 0;
    for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
    return n;
}

void LogLinearHistogram::merge(const LogLinearHistogram& other) noexcept {
    if (&other == this) return;
    uint64_t added = 0;
    for (std::size_t i = 0; i < kLogLinearBuckets; ++i) {
        const uint64_t b = other.buckets_[i].load(std::memory_order_relaxed);
        if (b == 0) continue;
        buckets_[i].fetch_add(b, std::memory_order_relaxed);
        added += b;
    }
    sum_.fetch_add(other.sum_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    if (added != 0)
        update_extremes(other.min_.load(std::memory_order_relaxed), other.max_.load(std::memory_order_relaxed));
}

}  // namespace coiommu::telemetry
