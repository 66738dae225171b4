// The exporter end to end over real HTTP: an exposer on an ephemeral loopback port serving the
// engine collector (over a synthetic StatsRegistry written by a thread) and the process
// collector; the scrape must pass `promtool check metrics` with no findings and parse cleanly.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>

#include "engine/telemetry/engine_stats.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#include "tests/integration/exporter/synthetic_load.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace std::chrono_literals;

class LiveExporter : public ::testing::Test {
protected:
    void SetUp() override {
        auto set = std::make_shared<CollectorSet>();
        ASSERT_OK(set->add("engine", std::make_shared<EngineCollector>([this] { return stats_.snapshot(); },
                                                                       EngineInfo{this_build(), ConfigInfo{}})));
        ASSERT_OK(set->add("process", std::make_shared<ProcessCollector>()));
        ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
        exposer_ = std::make_unique<Exposer>(std::move(exposer));
        ASSERT_OK(exposer_->register_collectable(set));
        load_ = std::make_unique<testing::SyntheticLoad>(stats_, 10us);
        // Long enough for every periodic event of the synthetic load (scans, balloon) to occur.
        while (load_->requests() < 5000) std::this_thread::sleep_for(10ms);
    }
    void TearDown() override {
        load_.reset();
        exposer_.reset();
    }

    std::string scrape() {
        auto resp = testing::http_get("127.0.0.1", exposer_->port(), "/metrics");
        EXPECT_TRUE(resp.has_value()) << resp.error().message();
        if (!resp) return {};
        EXPECT_EQ(resp->status, 200);
        return resp->body;
    }

    telemetry::StatsRegistry stats_{1};
    std::unique_ptr<Exposer> exposer_;
    std::unique_ptr<testing::SyntheticLoad> load_;
};

TEST_F(LiveExporter, ScrapePassesPromtoolCheckMetricsWithNoFindings) {
    const std::string body = scrape();
    ASSERT_FALSE(body.empty());
    auto lint = testing::promtool_check_metrics(body);
    if (!lint && lint.error().code == ENOENT) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
    ASSERT_OK(lint);
    EXPECT_EQ(lint->exit_status, 0) << lint->output;
    EXPECT_EQ(lint->output, "") << "promtool findings:\n" << lint->output;
}

TEST_F(LiveExporter, ScrapeParsesWithConsistentHistograms) {
    ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(scrape()));
    const auto problems = testing::check_histograms(e);
    EXPECT_TRUE(problems.empty()) << problems.front();
    for (const auto& [family, type] : e.types) {
        EXPECT_FALSE(e.help.count(family) == 0 || e.help.at(family).empty()) << family << " has no help";
    }
}

TEST_F(LiveExporter, ScrapeHasEngineProcessSelfAndExposerMetrics) {
    ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(scrape()));
    for (const char* family :
         {"coiommu_pin_requests_total", "coiommu_pin_request_duration_seconds", "coiommu_dma_call_duration_seconds",
          "coiommu_unpin_scan_duration_seconds", "coiommu_build_info", "process_cpu_seconds_total",
          "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
          "coiommu_exporter_collect_duration_seconds", "coiommu_exporter_collect_errors_total",
          "exposer_scrapes_total"}) {
        EXPECT_EQ(e.types.count(family), 1u) << family;
    }
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "engine"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "process"}}), 1.0);
}

TEST_F(LiveExporter, EveryHistogramSeriesHasDataUnderLoad) {
    ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(scrape()));
    for (const auto& [family, type] : e.types) {
        if (type != "histogram" || family.rfind("coiommu_", 0) != 0) continue;
        for (const auto& s : e.find(family + "_count")) {
            // The ended VMs' series stays at 0: no VM ended here.
            const auto vm = s.labels.find("vm");
            if (vm != s.labels.end() && vm->second == kEndedVmLabel) continue;
            EXPECT_GT(s.value, 0.0) << family;
        }
    }
}

TEST_F(LiveExporter, CountersNeverDecreaseBetweenScrapes) {
    ASSERT_OK_AND_ASSIGN(const auto first, testing::parse_exposition(scrape()));
    std::this_thread::sleep_for(50ms);
    ASSERT_OK_AND_ASSIGN(const auto second, testing::parse_exposition(scrape()));
    for (const auto& s : first.samples) {
        const auto t = first.types.find(s.name);
        if (t == first.types.end() || t->second != "counter") continue;
        const auto later = second.find(s.name, s.labels);
        ASSERT_EQ(later.size(), 1u) << s.name;
        EXPECT_GE(later.front().value, s.value) << s.name;
    }
}

}  // namespace
}  // namespace coiommu::exporter
