#include "exporter/server_collector.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "tests/testing/expect.h"

namespace coiommu::exporter {
namespace {

const prometheus::MetricFamily* family(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
    for (const auto& f : fs) {
        if (f.name == name) return &f;
    }
    return nullptr;
}

double single(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
    const auto* f = family(fs, name);
    if (f == nullptr || f->metric.size() != 1) return -1;
    return f->metric.front().counter.value;
}

TEST(ServerCollector, EveryRefusalReasonIsPresentAtZeroBeforeAnyHappened) {
    const auto fs = server_families(ServerStats{});
    const auto* refused = family(fs, "coiommu_connections_refused_total");
    ASSERT_NE(refused, nullptr);
    EXPECT_EQ(refused->type, prometheus::MetricType::Counter);
    std::set<std::string> reasons;
    for (const auto& m : refused->metric) {
        ASSERT_EQ(m.label.size(), 1u);
        EXPECT_EQ(m.label.front().name, "reason");
        reasons.insert(m.label.front().value);
        EXPECT_EQ(m.counter.value, 0.0);
    }
    EXPECT_EQ(reasons, (std::set<std::string>{"credentials", "busy", "uid_busy", "fd_budget", "out_of_fds",
                                              "bad_handshake", "hello_timeout", "evicted_pending"}));
}

TEST(ServerCollector, EachCounterCarriesItsOwnSourceField) {
    ServerStats s;
    s.accepted = 7;
    s.resumed = 3;
    s.ended = 5;
    s.failed = 1;
    s.accept_pauses = 2;
    s.refused[static_cast<std::size_t>(Refusal::FdBudget)] = 11;
    s.refused[static_cast<std::size_t>(Refusal::HelloTimeout)] = 13;
    const auto fs = server_families(s);
    EXPECT_EQ(single(fs, "coiommu_sessions_accepted_total"), 7.0);
    EXPECT_EQ(single(fs, "coiommu_sessions_resumed_total"), 3.0);
    EXPECT_EQ(single(fs, "coiommu_sessions_ended_total"), 5.0);
    EXPECT_EQ(single(fs, "coiommu_sessions_failed_total"), 1.0);
    EXPECT_EQ(single(fs, "coiommu_accept_pauses_total"), 2.0);
    const auto* refused = family(fs, "coiommu_connections_refused_total");
    ASSERT_NE(refused, nullptr);
    for (const auto& m : refused->metric) {
        const std::string& r = m.label.front().value;
        const double want = r == "fd_budget" ? 11.0 : r == "hello_timeout" ? 13.0 : 0.0;
        EXPECT_EQ(m.counter.value, want) << r;
    }
}

TEST(ServerCollector, WithoutASourceItFailsAndAppendsNothing) {
    const ServerCollector c{ServerCollector::Source{}};
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), EINVAL);
    EXPECT_TRUE(out.empty());
}

TEST(ServerCollector, ReadsItsSourceAtEveryScrape) {
    uint64_t accepted = 0;
    const ServerCollector c([&] {
        ServerStats s;
        s.accepted = ++accepted;
        return s;
    });
    std::vector<prometheus::MetricFamily> first, second;
    ASSERT_OK(c.collect_into(first));
    ASSERT_OK(c.collect_into(second));
    EXPECT_EQ(single(first, "coiommu_sessions_accepted_total"), 1.0);
    EXPECT_EQ(single(second, "coiommu_sessions_accepted_total"), 2.0);
}

}  // namespace
}  // namespace coiommu::exporter
