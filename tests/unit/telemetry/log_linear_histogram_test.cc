#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>
#include <algorithm>

#include "engine/telemetry/histogram.h"

namespace coiommu::telemetry {
namespace {

// The documented bound: a bucket is at most 1/16 of its lower bound wide.
constexpr double kMaxRelativeError = 1.0 / 16.0;

TEST(LogLinearBucket, SmallValuesAreExact) {
    for (uint64_t v = 0; v < 16; ++v) {
        EXPECT_EQ(log_linear_bucket(v), v);
        EXPECT_EQ(log_linear_bucket_lowest(v), v);
        EXPECT_EQ(log_linear_bucket_highest(v), v);
    }
}

TEST(LogLinearBucket, BucketsTileTheRangeWithoutGaps) {
    for (std::size_t i = 0; i + 1 < kLogLinearBuckets; ++i) {
        ASSERT_EQ(log_linear_bucket_highest(i) + 1, log_linear_bucket_lowest(i + 1)) << i;
    }
    EXPECT_EQ(log_linear_bucket_highest(kLogLinearBuckets - 1), UINT64_MAX);
}

TEST(LogLinearBucket, BoundsMapBackToTheirBucket) {
    for (std::size_t i = 0; i < kLogLinearBuckets; ++i) {
        ASSERT_EQ(log_linear_bucket(log_linear_bucket_lowest(i)), i);
        ASSERT_EQ(log_linear_bucket(log_linear_bucket_highest(i)), i);
    }
}

TEST(LogLinearBucket, WidthIsAtMostASixteenthOfTheLowestValue) {
    for (std::size_t i = kLogLinearSubBuckets; i < kLogLinearBuckets; ++i) {
        const double lo = static_cast<double>(log_linear_bucket_lowest(i));
        const double width = static_cast<double>(log_linear_bucket_highest(i) - log_linear_bucket_lowest(i)) + 1.0;
        ASSERT_LE(width / lo, kMaxRelativeError) << i;
    }
}

TEST(LogLinearHistogram, EmptyReportsZeros) {
    const LogLinearHistogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.max(), 0u);
    EXPECT_EQ(h.percentile(0.99), 0u);
    EXPECT_EQ(h.snapshot().min, 0u);
}

TEST(LogLinearHistogram, MaxAndMinAreExact) {
    LogLinearHistogram h;
    h.observe(123'457);
    h.observe(77);
    h.observe(5'000'001);
    const LogLinearSnapshot s = h.snapshot();
    EXPECT_EQ(h.max(), 5'000'001u);
    EXPECT_EQ(s.max, 5'000'001u);
    EXPECT_EQ(s.min, 77u);
    EXPECT_EQ(s.percentile(1.0), 5'000'001u);
}

TEST(LogLinearHistogram, PercentilesOfLatencyLikeDataStayWithinTheErrorBound) {
    // Log-normal latencies around 2 µs with a long tail, in ns, up to ~2^40.
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> dist(std::log(2000.0), 1.5);
    std::vector<uint64_t> values;
    LogLinearHistogram h;
    for (int i = 0; i < 100'000; ++i) {
        const auto v = static_cast<uint64_t>(std::min(dist(rng), 1e12));
        values.push_back(v);
        h.observe(v);
    }
    std::sort(values.begin(), values.end());
    const LogLinearSnapshot s = h.snapshot();
    for (double q : {0.5, 0.9, 0.99, 0.999}) {
        const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
        const double exact = static_cast<double>(values[rank - 1]);
        const double got = static_cast<double>(s.percentile(q));
        EXPECT_GE(got, exact) << "q=" << q;
        EXPECT_LE((got - exact) / exact, kMaxRelativeError) << "q=" << q;
    }
    EXPECT_EQ(s.percentile(1.0), values.back());
}

TEST(LogLinearHistogram, LargeValuesNear2To40KeepTheBound) {
    LogLinearHistogram h;
    const uint64_t v = (uint64_t{1} << 40) + 12345;
    h.observe(v);
    h.observe(1);
    const uint64_t p50 = h.percentile(0.5);
    EXPECT_EQ(p50, 1u);
    const uint64_t p99 = h.percentile(0.99);
    EXPECT_GE(p99, v);
    EXPECT_LE(static_cast<double>(p99 - v) / static_cast<double>(v), kMaxRelativeError);
}

TEST(LogLinearHistogram, MergeAddsCountsAndWidensExtremes) {
    LogLinearHistogram a;
    LogLinearHistogram b;
    a.observe(100);
    b.observe(10);
    b.observe(100'000);
    a.merge(b);
    const LogLinearSnapshot s = a.snapshot();
    EXPECT_EQ(s.count(), 3u);
    EXPECT_EQ(s.sum, 100'110u);
    EXPECT_EQ(s.min, 10u);
    EXPECT_EQ(s.max, 100'000u);
}

TEST(LogLinearHistogram, MergeOfAnEmptyHistogramChangesNothing) {
    LogLinearHistogram a;
    const LogLinearHistogram empty;
    a.observe(50);
    a.merge(empty);
    const LogLinearSnapshot s = a.snapshot();
    EXPECT_EQ(s.count(), 1u);
    EXPECT_EQ(s.min, 50u);
    EXPECT_EQ(s.max, 50u);
}

TEST(LogLinearSnapshot, MergeIntoEmptyTakesTheOthersExtremes) {
    LogLinearHistogram h;
    h.observe(7);
    h.observe(9000);
    LogLinearSnapshot total;
    total.merge(h.snapshot());
    EXPECT_EQ(total.count(), 2u);
    EXPECT_EQ(total.min, 7u);
    EXPECT_EQ(total.max, 9000u);
    EXPECT_DOUBLE_EQ(total.mean(), 4503.5);
}

}  // namespace
}  // namespace coiommu::telemetry
