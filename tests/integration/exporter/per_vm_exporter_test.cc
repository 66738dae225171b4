// The vm label end to end over real HTTP: an exposer on an ephemeral loopback port serving the
// engine collector over a per-VM source. VMs named "a" and "b" get one series set each; a VM that
// ends leaves its counts in the sums (under vm="(ended)"); two VMs with one name are kept apart;
// a hostile name (too long, quotes, newline, backslash, invalid UTF-8) is exported as a safe
// value and the scrape still passes `promtool check metrics`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "engine/telemetry/engine_stats.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using telemetry::DmaOp;
using telemetry::RequestKind;

const std::set<std::string> kProcessWide{"coiommu_build_info", "coiommu_config_info", "coiommu_unpin_interval_seconds",
                                         "coiommu_unpin_gen_threshold", "coiommu_active_sessions"};
const std::string kEnded(kEndedVmLabel);

// The engine families of a scrape (the collector set's and the exposer's own are not).
bool is_engine_family(const std::string& family) {
    return family.rfind("coiommu_", 0) == 0 && family.rfind("coiommu_exporter_", 0) != 0 &&
           kProcessWide.count(family) == 0;
}

// A VM whose counters and gauges all move: `scale` tells two VMs apart.
VmSnapshot busy_vm(uint64_t key, std::string name, uint64_t scale) {
    telemetry::StatsRegistry stats(1);
    auto& shard = stats.shard(0);
    shard.requests[RequestKind::Single].add(scale);
    shard.requests[RequestKind::Batch].add(2 * scale);
    shard.pages_requested.add(10 * scale);
    shard.pages_pinned.add(9 * scale);
    shard.dma_calls[DmaOp::Map].add(3 * scale);
    shard.dma_call_latency_ns[DmaOp::Map].observe(2'000 * scale);
    shard.request_latency_ns[RequestKind::Batch].observe(5'000 * scale);
    shard.pages_per_request.observe(4);
    stats.gauges().pinned_pages.set(100 * scale);
    stats.gauges().dma_entries.set(7 * scale);
    stats.gauges().dma_entry_limit.set(65535);
    return VmSnapshot{key, std::move(name), stats.snapshot()};
}

class PerVmExporter : public ::testing::Test {
protected:
    void SetUp() override {
        auto set = std::make_shared<CollectorSet>();
        ASSERT_OK(set->add("engine", std::make_shared<EngineCollector>(
                                         [this] {
                                             std::lock_guard lock(mu_);
                                             return report_;
                                         },
                                         EngineInfo{this_build(), ConfigInfo{}})));
        ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
        exposer_ = std::make_unique<Exposer>(std::move(exposer));
        ASSERT_OK(exposer_->register_collectable(set));
    }

    void report(std::vector<VmSnapshot> vms) {
        std::lock_guard lock(mu_);
        report_.vms = std::move(vms);
        report_.active_sessions = report_.vms.size();
    }

    // VM `key` ends: its totals move to the ended VMs' in the same report, as daemon::Server does.
    void end_vm(uint64_t key) {
        std::lock_guard lock(mu_);
        auto& vms = report_.vms;
        const auto it = std::find_if(vms.begin(), vms.end(), [key](const VmSnapshot& v) { return v.key == key; });
        ASSERT_NE(it, vms.end());
        telemetry::merge(report_.ended, it->snapshot.totals);
        vms.erase(it);
        report_.active_sessions = vms.size();
    }

    std::string scrape_body() {
        auto resp = testing::http_get("127.0.0.1", exposer_->port(), "/metrics");
        EXPECT_TRUE(resp.has_value()) << resp.error().message();
        if (!resp) return {};
        EXPECT_EQ(resp->status, 200);
        return resp->body;
    }

    testing::Exposition scrape() {
        auto e = testing::parse_exposition(scrape_body());
        EXPECT_TRUE(e.has_value()) << e.error().message();
        return e ? *e : testing::Exposition{};
    }

    std::mutex mu_;
    VmSnapshots report_;
    std::unique_ptr<Exposer> exposer_;
};

// Sum over `vm` of every counter sample, keyed by sample name and its other labels.
std::map<std::string, double> sums_over_vm(const testing::Exposition& e) {
    std::map<std::string, double> sums;
    for (const auto& s : e.samples) {
        std::string family = s.name;
        for (const char* suffix : {"_bucket", "_count", "_sum"}) {
            if (family.ends_with(suffix) && e.types.count(family.substr(0, family.size() - std::strlen(suffix)))) {
                family.resize(family.size() - std::strlen(suffix));
            }
        }
        const auto type = e.types.find(family);
        if (type == e.types.end() || !is_engine_family(family) || type->second == "gauge") continue;
        std::string key = s.name;
        for (const auto& [label, value] : s.labels) {
            if (label != "vm") key.append(",").append(label).append("=").append(value);
        }
        sums[key] += s.value;
    }
    return sums;
}

TEST_F(PerVmExporter, TwoVmsNamedAAndBExposeTwoSeriesPerFamily) {
    report({busy_vm(1, "a", 1), busy_vm(2, "b", 2)});
    const auto e = scrape();
    int families = 0;
    for (const auto& [family, type] : e.types) {
        if (!is_engine_family(family)) continue;
        SCOPED_TRACE(family);
        ++families;
        const std::string sample = type == "histogram" ? family + "_count" : family;
        const auto a = e.find(sample, {{"vm", "a"}});
        const auto b = e.find(sample, {{"vm", "b"}});
        EXPECT_FALSE(a.empty());
        EXPECT_EQ(a.size(), b.size());
        const std::size_t ended = e.find(sample, {{"vm", kEnded}}).size();
        EXPECT_EQ(ended, type == "gauge" ? 0 : a.size()) << "counters and histograms also carry (ended)";
        EXPECT_EQ(e.find(sample).size(), a.size() + b.size() + ended) << "no series without a vm label";
    }
    EXPECT_EQ(families, 29);
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "a"}}), 9.0);
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "b"}}), 18.0);
    EXPECT_EQ(e.value("coiommu_pin_requests_total", {{"vm", "b"}, {"kind", "batch"}}), 4.0);
    EXPECT_EQ(e.value("coiommu_pinned_pages", {{"vm", "a"}}), 100.0);
    EXPECT_EQ(e.value("coiommu_dma_mappings", {{"vm", "b"}}), 14.0);
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_count", {{"vm", "a"}, {"op", "map"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_active_sessions"), 2.0);
}

TEST_F(PerVmExporter, TheTwoVmScrapePassesPromtoolCheckMetrics) {
    report({busy_vm(1, "a", 1), busy_vm(2, "b", 2)});
    auto lint = testing::promtool_check_metrics(scrape_body());
    if (!lint && lint.error().code == ENOENT) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
    ASSERT_OK(lint);
    EXPECT_EQ(lint->exit_status, 0) << lint->output;
    EXPECT_EQ(lint->output, "") << "promtool findings:\n" << lint->output;
}

TEST_F(PerVmExporter, AnEndedVmsCountsRemainInTheSumsOverVm) {
    report({busy_vm(1, "a", 1), busy_vm(2, "b", 2)});
    const auto before = scrape();
    end_vm(1);
    const auto after = scrape();
    EXPECT_TRUE(after.find("coiommu_pages_pinned_total", {{"vm", "a"}}).empty()) << "a's series are gone";
    EXPECT_TRUE(after.find("coiommu_pinned_pages", {{"vm", "a"}}).empty());
    EXPECT_EQ(after.value("coiommu_pages_pinned_total", {{"vm", kEnded}}), 9.0);
    EXPECT_EQ(after.value("coiommu_dma_call_duration_seconds_count", {{"vm", kEnded}, {"op", "map"}}), 1.0);
    const auto sums_before = sums_over_vm(before);
    const auto sums_after = sums_over_vm(after);
    ASSERT_FALSE(sums_before.empty());
    for (const auto& [key, value] : sums_before) {
        ASSERT_EQ(sums_after.count(key), 1u) << key;
        EXPECT_EQ(sums_after.at(key), value) << key << ": the sum over vm moved";
    }
}

TEST_F(PerVmExporter, TwoVmsWithOneNameAreKeptApart) {
    report({busy_vm(4, "dup", 1), busy_vm(9, "dup", 3)});
    const auto e = scrape();
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "dup"}}), 9.0) << "the lower key keeps the name";
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "dup#2"}}), 27.0);
    // The first one ends: the second keeps its value (a series that changed VM would break rate()).
    end_vm(4);
    const auto later = scrape();
    EXPECT_EQ(later.value("coiommu_pages_pinned_total", {{"vm", "dup#2"}}), 27.0);
    EXPECT_TRUE(later.find("coiommu_pages_pinned_total", {{"vm", "dup"}}).empty());
    EXPECT_EQ(later.value("coiommu_pages_pinned_total", {{"vm", kEnded}}), 9.0);
}

TEST_F(PerVmExporter, AHostileNameIsExportedAsASafeBoundedValue) {
    const std::string hostile = std::string("evil\"} 1\nfake_metric{x=\"\\") + "\xff\xfe\xc3" + std::string(80, 'z');
    report({busy_vm(1, hostile, 1), busy_vm(2, "b", 2)});
    const std::string body = scrape_body();
    EXPECT_EQ(body.find("fake_metric{"), std::string::npos) << "the name injected a line";
    EXPECT_TRUE(std::none_of(body.begin(), body.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
        << "a byte of the name reached the exposition as it was";
    ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(body));
    std::set<std::string> values;
    for (const auto& s : e.find("coiommu_pages_pinned_total")) values.insert(s.labels.at("vm"));
    ASSERT_EQ(values.size(), 3u);
    values.erase("b");
    values.erase(kEnded);
    const std::string label = *values.begin();
    EXPECT_TRUE(std::regex_match(label, std::regex("[A-Za-z0-9._-]{32}"))) << label;
    EXPECT_EQ(label, "evil___1_fake_metric_x______zzzz");
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", label}}), 9.0);
    auto lint = testing::promtool_check_metrics(body);
    if (!lint && lint.error().code == ENOENT) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
    ASSERT_OK(lint);
    EXPECT_EQ(lint->exit_status, 0) << lint->output;
}

TEST_F(PerVmExporter, WithoutVmsOnlyTheEndedTotalsAndProcessWideFamiliesHaveSeries) {
    report({});
    const auto e = scrape();
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", kEnded}}), 0.0);
    EXPECT_TRUE(e.find("coiommu_pinned_pages").empty());
    EXPECT_EQ(e.value("coiommu_active_sessions"), 0.0);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "engine"}}), 1.0);
}

}  // namespace
}  // namespace coiommu::exporter
