#include "exporter/engine_collector.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>

#include <prometheus/check_names.h>
#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace telemetry;

EngineInfo test_info() {
    EngineInfo info;
    info.build = {"0.1.0", "abc123"};
    info.config = ConfigInfo{"lru", "on", "fake", 60.0, 10};
    return info;
}

const prometheus::MetricFamily* find_family(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
    for (const auto& f : fs) {
        if (f.name == name) return &f;
    }
    return nullptr;
}

testing::Exposition scrape_text(const StatsSnapshot& s) {
    const std::string text = prometheus::TextSerializer().Serialize(engine_families(s, test_info()));
    auto parsed = testing::parse_exposition(text);
    EXPECT_TRUE(parsed.has_value()) << parsed.error().message();
    return parsed ? *parsed : testing::Exposition{};
}

TEST(EngineCollector, EmitsTheCatalogue) {
    const StatsRegistry stats(1);
    const auto fs = engine_families(stats.snapshot(), test_info());
    for (const char* name : {"coiommu_build_info",
                             "coiommu_config_info",
                             "coiommu_unpin_interval_seconds",
                             "coiommu_unpin_gen_threshold",
                             "coiommu_pin_requests_total",
                             "coiommu_pin_attempts_total",
                             "coiommu_pages_pinned_total",
                             "coiommu_pages_already_pinned_total",
                             "coiommu_pin_failures_total",
                             "coiommu_guest_dma_map_failures_total",
                             "coiommu_pin_request_duration_seconds",
                             "coiommu_pages_per_request",
                             "coiommu_dma_calls_total",
                             "coiommu_dma_call_failures_total",
                             "coiommu_dma_bytes_total",
                             "coiommu_dma_call_duration_seconds",
                             "coiommu_dma_mappings",
                             "coiommu_dma_entry_limit",
                             "coiommu_pinned_pages",
                             "coiommu_pinned_bytes",
                             "coiommu_pin_queue_depth",
                             "coiommu_pages_unpinned_total",
                             "coiommu_unpin_attempts_total",
                             "coiommu_unpin_scans_total",
                             "coiommu_unpin_scan_duration_seconds",
                             "coiommu_unpin_last_run_timestamp_seconds",
                             "coiommu_unpin_worker_parked",
                             "coiommu_balloon_requests_total",
                             "coiommu_viommu_requests_total",
                             "coiommu_viommu_request_failures_total",
                             "coiommu_viommu_fault_events_total",
                             "coiommu_guest_ram_bytes",
                             "coiommu_vcpus",
                             "coiommu_active_sessions"}) {
        EXPECT_NE(find_family(fs, name), nullptr) << name;
    }
    EXPECT_EQ(fs.size(), 34u);
}

TEST(EngineCollector, NamesFollowThePrometheusConventions) {
    const StatsRegistry stats(1);
    const std::regex snake("^[a-z][a-z0-9_]*[a-z0-9]$");
    const std::regex abbreviated_unit("_(ms|us|ns|msec|usec|nsec|secs|kb|mb|gb|kib|mib|pct|percent)(_|$)");
    std::set<std::string> names;
    for (const auto& f : engine_families(stats.snapshot(), test_info())) {
        SCOPED_TRACE(f.name);
        EXPECT_TRUE(names.insert(f.name).second) << "duplicate family";
        EXPECT_TRUE(prometheus::CheckMetricName(f.name));
        EXPECT_TRUE(std::regex_match(f.name, snake));
        EXPECT_EQ(f.name.rfind("coiommu_", 0), 0u) << "missing the coiommu_ prefix";
        EXPECT_FALSE(std::regex_search(f.name, abbreviated_unit)) << "abbreviated or non-base unit";
        EXPECT_FALSE(f.help.empty());
        const bool ends_total = f.name.size() > 6 && f.name.compare(f.name.size() - 6, 6, "_total") == 0;
        EXPECT_EQ(f.type == prometheus::MetricType::Counter, ends_total) << "_total iff counter";
        if (f.type == prometheus::MetricType::Histogram && f.name.find("duration") != std::string::npos) {
            EXPECT_EQ(f.name.compare(f.name.size() - 8, 8, "_seconds"), 0) << "durations in seconds";
        }
        EXPECT_FALSE(f.name.ends_with("_info") && f.type != prometheus::MetricType::Gauge);
    }
}

TEST(EngineCollector, LabelsAreBoundedAndNeverIdentifiers) {
    const StatsRegistry stats(1);
    const std::set<std::string> forbidden{"pid", "tid", "gfn", "gpa", "iova", "hva", "address", "addr", "vcpu", "le"};
    for (const auto& f : engine_families(stats.snapshot(), test_info())) {
        SCOPED_TRACE(f.name);
        EXPECT_LE(f.metric.size(), 10u) << "cardinality above ~10 series";
        EXPECT_GE(f.metric.size(), 1u) << "family without samples";
        std::set<std::vector<std::pair<std::string, std::string>>> seen;
        for (const auto& m : f.metric) {
            std::vector<std::pair<std::string, std::string>> key;
            for (const auto& l : m.label) {
                EXPECT_TRUE(prometheus::CheckLabelName(l.name)) << l.name;
                EXPECT_EQ(forbidden.count(l.name), 0u) << l.name;
                key.emplace_back(l.name, l.value);
            }
            EXPECT_TRUE(seen.insert(key).second) << "duplicate series";
        }
    }
}

TEST(EngineCollector, EveryLabelCombinationIsPreinitialisedToZero) {
    const StatsRegistry stats(1);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.find("coiommu_pin_requests_total").size(), kRequestKinds);
    EXPECT_EQ(e.find("coiommu_pin_failures_total").size(), kPinFailureReasons);
    EXPECT_EQ(e.find("coiommu_unpin_attempts_total").size(), kUnpinResults);
    EXPECT_EQ(e.find("coiommu_unpin_scans_total").size(), kScanKinds);
    EXPECT_EQ(e.find("coiommu_balloon_requests_total").size(), kBalloonResults);
    EXPECT_EQ(e.find("coiommu_dma_calls_total").size(), kDmaOps);
    EXPECT_EQ(e.find("coiommu_guest_dma_map_failures_total").size(), 2u);
    EXPECT_EQ(e.find("coiommu_pin_request_duration_seconds_count").size(), kRequestKinds);
    EXPECT_EQ(e.value("coiommu_pin_failures_total", {{"reason", "no_space"}}), 0.0);
    EXPECT_EQ(e.value("coiommu_unpin_attempts_total", {{"result", "parked"}}), 0.0);
}

TEST(EngineCollector, CountersCarryTheSnapshotTotals) {
    StatsRegistry stats(2);
    stats.shard(0).requests[RequestKind::Batch].add(3);
    stats.shard(1).requests[RequestKind::Batch].add(4);
    stats.shard(0).pin_failures[PinFailureReason::NoSpace].add(2);
    stats.shard(1).unpin_attempts[UnpinResult::NotUnpinned].add(9);
    stats.shard(1).dma_calls[DmaOp::Unmap].add(5);
    stats.shard(0).requests_failed.add(1);
    stats.shard(0).viommu_request_failures[DmaOp::Map].add(6);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_pin_requests_total", {{"kind", "batch"}}), 7.0);
    EXPECT_EQ(e.value("coiommu_pin_requests_total", {{"kind", "single"}}), 0.0);
    EXPECT_EQ(e.value("coiommu_pin_failures_total", {{"reason", "no_space"}}), 2.0);
    EXPECT_EQ(e.value("coiommu_unpin_attempts_total", {{"result", "not_unpinned"}}), 9.0);
    EXPECT_EQ(e.value("coiommu_dma_calls_total", {{"op", "unmap"}}), 5.0);
    EXPECT_EQ(e.value("coiommu_guest_dma_map_failures_total", {{"iommu", "coiommu"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_guest_dma_map_failures_total", {{"iommu", "virtio_iommu"}}), 6.0);
}

TEST(EngineCollector, GaugesAreConvertedToBaseUnits) {
    StatsRegistry stats(1);
    stats.gauges().pinned_pages.set(256);
    stats.gauges().last_unpin_run_unix_ns.set(1'700'000'000'500'000'000ull);
    stats.gauges().dma_entry_limit.set(65535);
    stats.gauges().unpin_worker_parked.set(1);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_pinned_pages"), 256.0);
    EXPECT_EQ(e.value("coiommu_pinned_bytes"), 256.0 * 4096.0);
    EXPECT_DOUBLE_EQ(e.value("coiommu_unpin_last_run_timestamp_seconds"), 1'700'000'000.5);
    EXPECT_EQ(e.value("coiommu_dma_entry_limit"), 65535.0);
    EXPECT_EQ(e.value("coiommu_unpin_worker_parked"), 1.0);
}

TEST(EngineCollector, HistogramsAreInSecondsWithInfEqualToCount) {
    StatsRegistry stats(1);
    stats.shard(0).dma_call_latency_ns[DmaOp::Map].observe(2'000);          // 2 µs
    stats.shard(0).dma_call_latency_ns[DmaOp::Map].observe(3'000'000'000);  // 3 s
    stats.shard(0).pages_per_request.observe(64);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_TRUE(testing::check_histograms(e).empty());
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_count", {{"op", "map"}}), 2.0);
    EXPECT_DOUBLE_EQ(e.value("coiommu_dma_call_duration_seconds_sum", {{"op", "map"}}), 3.000002);
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_bucket", {{"op", "map"}, {"le", "2.048e-06"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_pages_per_request_bucket", {{"le", "64"}}), 1.0);
}

TEST(EngineCollector, BuildAndConfigInfoAreOneWithTheirLabels) {
    const StatsRegistry stats(1);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_build_info", {{"version", "0.1.0"}, {"revision", "abc123"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_config_info", {{"unpin_policy", "lru"}, {"coalesce", "on"}, {"backend", "fake"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_unpin_interval_seconds"), 60.0);
}

TEST(EngineCollector, ThisBuildReportsTheProjectVersion) {
    const BuildInfo b = this_build();
    EXPECT_FALSE(b.version.empty());
    EXPECT_NE(b.version, "unknown");
    EXPECT_FALSE(b.revision.empty());
}

TEST(EngineCollector, CollectIntoCallsTheSourceOncePerScrape) {
    StatsRegistry stats(1);
    int calls = 0;
    const EngineCollector c(
        [&] {
            ++calls;
            return stats.snapshot();
        },
        test_info());
    std::vector<prometheus::MetricFamily> out;
    EXPECT_OK(c.collect_into(out));
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(out.size(), 34u);
}

TEST(EngineCollector, EmptySourceIsAnError) {
    const EngineCollector c(nullptr, test_info());
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), EINVAL);
    EXPECT_TRUE(c.Collect().empty());
}

}  // namespace
}  // namespace coiommu::exporter
