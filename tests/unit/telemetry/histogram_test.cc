#include "engine/telemetry/histogram.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace coiommu::telemetry {
namespace {

TEST(Log2Bucket, ZeroAndOneShareBucketZero) {
    EXPECT_EQ(log2_bucket(0), 0u);
    EXPECT_EQ(log2_bucket(1), 0u);
}

TEST(Log2Bucket, SmallValuesUseCeilLog2) {
    EXPECT_EQ(log2_bucket(2), 1u);
    EXPECT_EQ(log2_bucket(3), 2u);
    EXPECT_EQ(log2_bucket(4), 2u);
    EXPECT_EQ(log2_bucket(5), 3u);
}

TEST(Log2Bucket, PowerOfTwoIsTheTopOfItsBucket) {
    for (unsigned k = 1; k < 63; ++k) {
        EXPECT_EQ(log2_bucket(uint64_t{1} << k), k) << "2^" << k;
    }
}

TEST(Log2Bucket, OnePastAPowerOfTwoStartsTheNextBucket) {
    for (unsigned k = 1; k < 63; ++k) {
        EXPECT_EQ(log2_bucket((uint64_t{1} << k) + 1), k + 1) << "2^" << k << "+1";
    }
}

TEST(Log2Bucket, ValuesAbove2To63ClampIntoTheLastBucket) {
    EXPECT_EQ(log2_bucket(uint64_t{1} << 63), 63u);
    EXPECT_EQ(log2_bucket((uint64_t{1} << 63) + 1), 63u);
    EXPECT_EQ(log2_bucket(UINT64_MAX), 63u);
}

TEST(Log2Bucket, UpperBoundIsPowerOfTwoExceptTheLastBucket) {
    EXPECT_EQ(log2_bucket_upper_bound(0), 1u);
    EXPECT_EQ(log2_bucket_upper_bound(10), 1024u);
    EXPECT_EQ(log2_bucket_upper_bound(62), uint64_t{1} << 62);
    EXPECT_EQ(log2_bucket_upper_bound(63), UINT64_MAX);
}

TEST(Log2Bucket, EveryValueIsAtMostItsBucketBoundAndAboveThePrevious) {
    const uint64_t values[] = {0,
                               1,
                               2,
                               3,
                               4,
                               5,
                               7,
                               8,
                               9,
                               1000,
                               1023,
                               1024,
                               1025,
                               uint64_t{1} << 40,
                               (uint64_t{1} << 40) + 1,
                               UINT64_MAX - 1,
                               UINT64_MAX};
    for (uint64_t v : values) {
        const std::size_t k = log2_bucket(v);
        EXPECT_LE(v, log2_bucket_upper_bound(k)) << v;
        if (k > 0) {
            EXPECT_GT(v, log2_bucket_upper_bound(k - 1)) << v;
        }
    }
}

TEST(Log2Histogram, ObserveCountsIntoTheRightBucketAndSums) {
    Log2Histogram h;
    h.observe(3);
    h.observe(4);
    h.observe(1000);
    const HistogramSnapshot s = h.snapshot();
    EXPECT_EQ(s.buckets[2], 2u);
    EXPECT_EQ(s.buckets[10], 1u);
    EXPECT_EQ(s.sum, 1007u);
}

TEST(Log2Histogram, CountIsTheSumOfTheBuckets) {
    Log2Histogram h;
    const uint64_t values[] = {0, 1, 2, 3, 4, 5, 1u << 20, UINT64_MAX};
    for (uint64_t v : values) h.observe(v);
    const HistogramSnapshot s = h.snapshot();
    uint64_t by_hand = 0;
    for (uint64_t b : s.buckets) by_hand += b;
    EXPECT_EQ(s.count(), 8u);
    EXPECT_EQ(s.count(), by_hand);
}

TEST(Log2Histogram, MaxValueLandsInLastBucketAndSumWraps) {
    Log2Histogram h;
    h.observe(UINT64_MAX);
    h.observe(2);
    const HistogramSnapshot s = h.snapshot();
    EXPECT_EQ(s.buckets[63], 1u);
    EXPECT_EQ(s.sum, 1u);  // (2^64 - 1) + 2 mod 2^64: documented wrap
}

TEST(Log2Histogram, AccumulateIntoAddsToAnExistingSnapshot) {
    Log2Histogram a;
    Log2Histogram b;
    a.observe(8);
    b.observe(8);
    b.observe(9);
    HistogramSnapshot total;
    a.accumulate_into(total);
    b.accumulate_into(total);
    EXPECT_EQ(total.buckets[3], 2u);
    EXPECT_EQ(total.buckets[4], 1u);
    EXPECT_EQ(total.sum, 25u);
}

TEST(HistogramSnapshot, MergeAddsBucketsAndSums) {
    HistogramSnapshot a;
    a.buckets[1] = 2;
    a.sum = 4;
    HistogramSnapshot b;
    b.buckets[1] = 1;
    b.buckets[5] = 3;
    b.sum = 90;
    a.merge(b);
    EXPECT_EQ(a.buckets[1], 3u);
    EXPECT_EQ(a.buckets[5], 3u);
    EXPECT_EQ(a.sum, 94u);
    EXPECT_EQ(a.count(), 6u);
}

TEST(HistogramSnapshot, PercentileOfEmptyIsZero) {
    const HistogramSnapshot s;
    EXPECT_EQ(s.percentile(0.5), 0u);
}

TEST(HistogramSnapshot, PercentileReturnsTheBucketUpperBound) {
    Log2Histogram h;
    for (int i = 0; i < 90; ++i) h.observe(100);   // bucket 7 (le 128)
    for (int i = 0; i < 10; ++i) h.observe(5000);  // bucket 13 (le 8192)
    const HistogramSnapshot s = h.snapshot();
    EXPECT_EQ(s.percentile(0.5), 128u);
    EXPECT_EQ(s.percentile(0.90), 128u);   // rank 90 is the last 100
    EXPECT_EQ(s.percentile(0.91), 8192u);  // rank 91 is the first 5000
    EXPECT_EQ(s.percentile(1.0), 8192u);
}

TEST(HistogramSnapshot, PercentileClampsQIntoZeroToOne) {
    Log2Histogram h;
    h.observe(2);
    h.observe(1u << 12);
    const HistogramSnapshot s = h.snapshot();
    EXPECT_EQ(s.percentile(-1.0), 2u);
    EXPECT_EQ(s.percentile(0.0), 2u);
    EXPECT_EQ(s.percentile(7.0), 4096u);
}

}  // namespace
}  // namespace coiommu::telemetry
