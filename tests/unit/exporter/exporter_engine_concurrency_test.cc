// The real engine flat out (guest vCPU threads pinning fresh pages, workers, LRU unpinner,
// balloons) while two scrapers pull /metrics over HTTP every 10 ms: every scrape parses, every
// histogram is cumulative with +Inf == _count, counters never go down, and (under the tsan preset)
// no data race is reported.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/engine_vm.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace std::chrono_literals;

// Counters checked for monotonicity in every scrape (the one VM's series, with the given labels).
const std::vector<std::pair<std::string, std::map<std::string, std::string>>> kCounters = {
    {"coiommu_pages_pinned_total", {{"vm", "(unnamed)"}}},
    {"coiommu_pin_attempts_total", {{"vm", "(unnamed)"}}},
    {"coiommu_pages_unpinned_total", {{"vm", "(unnamed)"}}},
    {"coiommu_pin_requests_total", {{"vm", "(unnamed)"}, {"kind", "batch"}}},
    {"coiommu_dma_calls_total", {{"vm", "(unnamed)"}, {"op", "map"}}},
    {"coiommu_dma_call_duration_seconds_count", {{"vm", "(unnamed)"}, {"op", "map"}}},
    {"coiommu_pin_request_duration_seconds_count", {{"vm", "(unnamed)"}, {"kind", "batch"}}},
    {"coiommu_balloon_requests_total", {{"vm", "(unnamed)"}, {"result", "success"}}},
};

struct ScrapeStats {
    int scrapes = 0;
    std::string failure;  // first problem seen
};

void scrape_loop(uint16_t port, const std::atomic<bool>& stop, ScrapeStats& out) {
    std::map<std::string, double> last;
    while (!stop.load(std::memory_order_relaxed) && out.failure.empty()) {
        auto resp = testing::http_get("127.0.0.1", port, "/metrics", 10'000);
        if (!resp || resp->status != 200) {
            out.failure = resp ? "HTTP status " + std::to_string(resp->status) : resp.error().message();
            break;
        }
        auto e = testing::parse_exposition(resp->body);
        if (!e) {
            out.failure = e.error().message();
            break;
        }
        if (auto problems = testing::check_histograms(*e); !problems.empty()) {
            out.failure = problems.front();
            break;
        }
        for (const auto& [name, labels] : kCounters) {
            const double v = e->value(name, labels);
            std::string key = name;
            for (const auto& [label, value] : labels) key.append(",").append(label).append("=").append(value);
            if (!(v >= last[key])) {
                out.failure = key + " went from " + std::to_string(last[key]) + " to " + std::to_string(v);
                break;
            }
            last[key] = v;
        }
        ++out.scrapes;
        std::this_thread::sleep_for(10ms);
    }
}

TEST(ExporterEngineConcurrency, ScrapingEvery10msWhileTheRealEngineRunsFlatOutStaysConsistent) {
    testing::EngineVmOptions opts;
    opts.pattern = testing::LoadPattern::Fresh;
    opts.latency.reset();  // no modelled kernel latency: the engine as fast as it goes
    opts.engine.unpin_interval = 5ms;
    ASSERT_OK_AND_ASSIGN(auto vm, testing::EngineVm::create(opts));

    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK(set->add("engine", std::make_shared<EngineCollector>([&vm] { return vm->stats(); }, vm->engine_info())));
    ASSERT_OK(set->add("process", std::make_shared<ProcessCollector>()));
    ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
    ASSERT_OK(exposer.register_collectable(set));

    vm->start();
    std::atomic<bool> stop{false};
    ScrapeStats a, b;
    std::thread ta([&] { scrape_loop(exposer.port(), stop, a); });
    std::thread tb([&] { scrape_loop(exposer.port(), stop, b); });
    std::this_thread::sleep_for(2s);
    stop.store(true, std::memory_order_relaxed);
    ta.join();
    tb.join();
    vm->stop();

    std::fprintf(stderr, "%d + %d scrapes, %lu guest maps, %lu pages pinned\n", a.scrapes, b.scrapes,
                 static_cast<unsigned long>(vm->guest_maps()),
                 static_cast<unsigned long>(vm->stats().totals.pages_pinned));
    EXPECT_EQ(a.failure, "");
    EXPECT_EQ(b.failure, "");
    EXPECT_GE(a.scrapes + b.scrapes, 20);
    const auto final_stats = vm->stats();
    EXPECT_GT(final_stats.totals.pages_pinned, 0u);
    EXPECT_GT(vm->guest_maps(), 0u);
    EXPECT_EQ(vm->guest_map_failures(), 0u);
}

// (pages_already_pinned needs two vCPUs to race for one page: it moves, but too rarely to wait for.)
TEST(ExporterEngineConcurrency, MixedLoadMovesEveryPartOfTheEngineCatalogue) {
    testing::EngineVmOptions opts;
    opts.latency.reset();
    opts.engine.unpin_interval = 5ms;
    opts.balloon_every = 20ms;
    ASSERT_OK_AND_ASSIGN(auto vm, testing::EngineVm::create(opts));
    vm->start();
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    auto done = [&vm] {
        const auto s = vm->stats();
        const auto& t = s.totals;
        return t.requests[telemetry::RequestKind::Single] > 0 && t.requests[telemetry::RequestKind::Batch] > 0 &&
               t.pages_unpinned > 0 && t.unpin_scans[telemetry::ScanKind::Lru] > 0 &&
               t.unpin_scans[telemetry::ScanKind::Balloon] > 0 &&
               t.balloon_requests[telemetry::BalloonResult::Success] > 0 && t.dma_calls[telemetry::DmaOp::Unmap] > 0 &&
               s.gauges.last_unpin_run_unix_ns > 0;
    };
    while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
    vm->stop();
    const auto s = vm->stats();
    const auto& t = s.totals;
    EXPECT_TRUE(done()) << "some engine counter never moved under the mixed load: single "
                        << t.requests[telemetry::RequestKind::Single] << " batch "
                        << t.requests[telemetry::RequestKind::Batch] << " already " << t.pages_already_pinned
                        << " unpinned " << t.pages_unpinned << " lru scans " << t.unpin_scans[telemetry::ScanKind::Lru]
                        << " balloon scans " << t.unpin_scans[telemetry::ScanKind::Balloon] << " balloons ok "
                        << t.balloon_requests[telemetry::BalloonResult::Success] << " failed "
                        << t.balloon_requests[telemetry::BalloonResult::Failed] << " unmaps "
                        << t.dma_calls[telemetry::DmaOp::Unmap] << " last run " << s.gauges.last_unpin_run_unix_ns;
    EXPECT_EQ(vm->guest_map_failures(), 0u);
}

}  // namespace
}  // namespace coiommu::exporter
