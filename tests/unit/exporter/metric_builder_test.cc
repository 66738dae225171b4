#include "exporter/metric_builder.h"

#include <gtest/gtest.h>

#include <cmath>

#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using telemetry::HistogramSnapshot;
using telemetry::Log2Histogram;

TEST(MetricBuilder, FamiliesCarryNameHelpAndType) {
    const auto c = counter_family("x_total", "help c");
    const auto g = gauge_family("y", "help g");
    const auto h = histogram_family("z_seconds", "help h");
    EXPECT_EQ(c.name, "x_total");
    EXPECT_EQ(c.help, "help c");
    EXPECT_EQ(c.type, prometheus::MetricType::Counter);
    EXPECT_EQ(g.type, prometheus::MetricType::Gauge);
    EXPECT_EQ(h.type, prometheus::MetricType::Histogram);
}

TEST(MetricBuilder, AddCounterAppendsALabelledSample) {
    auto f = counter_family("x_total", "h");
    add_counter(f, 42, {{"kind", "batch"}});
    ASSERT_EQ(f.metric.size(), 1u);
    EXPECT_EQ(f.metric[0].counter.value, 42.0);
    ASSERT_EQ(f.metric[0].label.size(), 1u);
    EXPECT_EQ(f.metric[0].label[0].name, "kind");
    EXPECT_EQ(f.metric[0].label[0].value, "batch");
}

TEST(MetricBuilder, BucketBoundsArePowersOfTwoTimesTheUnit) {
    EXPECT_DOUBLE_EQ(bucket_bound(10, kNanosecondsToSeconds), 1.024e-06);
    EXPECT_DOUBLE_EQ(bucket_bound(36, kNanosecondsToSeconds), 68.719476736);
    EXPECT_DOUBLE_EQ(bucket_bound(3, kCountBuckets), 8.0);
}

TEST(MetricBuilder, HistogramEmitsTheFixedContiguousRangeEvenWhenEmpty) {
    const HistogramSnapshot empty;
    const auto h = to_client_histogram(empty, kNanosecondsToSeconds);
    ASSERT_EQ(h.bucket.size(), 27u);
    EXPECT_DOUBLE_EQ(h.bucket.front().upper_bound, 1.024e-06);
    EXPECT_DOUBLE_EQ(h.bucket.back().upper_bound, 68.719476736);
    EXPECT_EQ(h.sample_count, 0u);
    EXPECT_EQ(h.bucket.back().cumulative_count, 0u);
}

TEST(MetricBuilder, HistogramBucketsAreCumulative) {
    Log2Histogram src;
    src.observe(1000);       // bucket 10 (le 1.024 µs)
    src.observe(1500);       // bucket 11
    src.observe(1'000'000);  // bucket 20
    const auto h = to_client_histogram(src.snapshot(), kNanosecondsToSeconds);
    EXPECT_EQ(h.bucket[0].cumulative_count, 1u);   // le 2^10 ns
    EXPECT_EQ(h.bucket[1].cumulative_count, 2u);   // le 2^11 ns
    EXPECT_EQ(h.bucket[9].cumulative_count, 2u);   // le 2^19 ns
    EXPECT_EQ(h.bucket[10].cumulative_count, 3u);  // le 2^20 ns
    EXPECT_EQ(h.bucket.back().cumulative_count, 3u);
    EXPECT_EQ(h.sample_count, 3u);
}

TEST(MetricBuilder, ValuesBelowTheRangeFoldIntoTheFirstBound) {
    Log2Histogram src;
    src.observe(5);  // 5 ns: bucket 3, below the first emitted bucket (10)
    const auto h = to_client_histogram(src.snapshot(), kNanosecondsToSeconds);
    EXPECT_EQ(h.bucket.front().cumulative_count, 1u);
}

TEST(MetricBuilder, ValuesAboveTheRangeCountOnlyInTheTotal) {
    Log2Histogram src;
    src.observe(uint64_t{1} << 40);  // ~18 min: above the top bound (2^36 ns)
    src.observe(2000);
    const auto h = to_client_histogram(src.snapshot(), kNanosecondsToSeconds);
    EXPECT_EQ(h.bucket.back().cumulative_count, 1u);
    EXPECT_EQ(h.sample_count, 2u);  // what the serializer writes as +Inf and _count
}

TEST(MetricBuilder, SumIsConvertedToTheBaseUnit) {
    Log2Histogram src;
    src.observe(1'500'000'000);  // 1.5 s in ns
    const auto h = to_client_histogram(src.snapshot(), kNanosecondsToSeconds);
    EXPECT_DOUBLE_EQ(h.sample_sum, 1.5);
}

TEST(MetricBuilder, SerializedHistogramHasInfBucketEqualToCount) {
    Log2Histogram src;
    src.observe(3000);
    src.observe(uint64_t{1} << 50);
    auto f = histogram_family("coiommu_test_duration_seconds", "test");
    add_histogram(f, src.snapshot(), kNanosecondsToSeconds, {{"op", "map"}});
    const std::string text = prometheus::TextSerializer().Serialize({f});
    auto parsed = testing::parse_exposition(text);
    ASSERT_TRUE(parsed.has_value()) << parsed.error().message();
    EXPECT_TRUE(testing::check_histograms(*parsed).empty());
    EXPECT_EQ(parsed->value("coiommu_test_duration_seconds_bucket", {{"le", "+Inf"}, {"op", "map"}}), 2.0);
    EXPECT_EQ(parsed->value("coiommu_test_duration_seconds_count", {{"op", "map"}}), 2.0);
}

}  // namespace
}  // namespace coiommu::exporter
