// Scrapes race a writer: every histogram's +Inf bucket equals its _count in every scrape, and
// counters never go down between scrapes.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include <prometheus/text_serializer.h>

#include "engine/telemetry/engine_stats.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace telemetry;

// Writes requests into shard 0 until told to stop, as a vCPU arena would, flat out.
class Writer {
public:
    explicit Writer(StatsRegistry& stats) : stats_(stats), thread_([this] { run(); }) {}
    ~Writer() {
        stop_.store(true, std::memory_order_relaxed);
        thread_.join();
    }

private:
    void run() {
        StatsShard& s = stats_.shard(0);
        uint64_t i = 0;
        while (!stop_.load(std::memory_order_relaxed)) {
            s.requests[RequestKind::Batch].add();
            s.pages_requested.add(8);
            s.pages_pinned.add(8);
            s.request_latency_ns[RequestKind::Batch].observe(500 + (i * 7919) % 5'000'000);
            s.dma_call_latency_ns[DmaOp::Map].observe(1000 + i % 4096);
            s.pages_per_request.observe(8);
            stats_.gauges().pinned_pages.add(8);
            ++i;
        }
    }

    StatsRegistry& stats_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

TEST(ExporterConcurrency, InfBucketEqualsCountInEveryScrapeWhileAWriterRaces) {
    StatsRegistry stats(1);
    const EngineCollector collector([&] { return stats.snapshot(); }, EngineInfo{});
    Writer writer(stats);
    double last_requests = 0;
    for (int scrape = 0; scrape < 200; ++scrape) {
        std::vector<prometheus::MetricFamily> families;
        ASSERT_OK(collector.collect_into(families));
        auto parsed = testing::parse_exposition(prometheus::TextSerializer().Serialize(families));
        ASSERT_TRUE(parsed.has_value()) << parsed.error().message();
        const auto problems = testing::check_histograms(*parsed);
        ASSERT_TRUE(problems.empty()) << problems.front();
        const double requests =
            parsed->value("coiommu_pin_requests_total", {{"kind", "batch"}, {"vm", std::string(kUnnamedVmLabel)}});
        ASSERT_GE(requests, last_requests);
        last_requests = requests;
    }
    EXPECT_GT(last_requests, 0.0);
}

TEST(ExporterConcurrency, HttpScrapesEvery10msWhileAWriterRacesStayConsistent) {
    StatsRegistry stats(1);
    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK(set->add("engine", std::make_shared<EngineCollector>([&] { return stats.snapshot(); }, EngineInfo{})));
    ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
    ASSERT_OK(exposer.register_collectable(set));
    Writer writer(stats);
    double last_pinned = 0;
    for (int scrape = 0; scrape < 50; ++scrape) {
        ASSERT_OK_AND_ASSIGN(const auto resp, testing::http_get("127.0.0.1", exposer.port(), "/metrics"));
        ASSERT_EQ(resp.status, 200);
        ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(resp.body));
        const auto problems = testing::check_histograms(e);
        ASSERT_TRUE(problems.empty()) << problems.front();
        const double pinned = e.value("coiommu_pages_pinned_total", {{"vm", std::string(kUnnamedVmLabel)}});
        ASSERT_GE(pinned, last_pinned);
        last_pinned = pinned;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GT(last_pinned, 0.0);
}

}  // namespace
}  // namespace coiommu::exporter
