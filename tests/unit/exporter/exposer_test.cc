#include "exporter/exposer.h"

#include <sys/socket.h>

#include <gtest/gtest.h>

#include <memory>

#include "engine/telemetry/engine_stats.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

TEST(ListenAddress, ParsesIpv4AndPort) {
    ASSERT_OK_AND_ASSIGN(const ListenAddress a, parse_listen_address("127.0.0.1:9464"));
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 9464);
    EXPECT_EQ(a.family, AF_INET);
    EXPECT_EQ(a.to_string(), "127.0.0.1:9464");
}

TEST(ListenAddress, ParsesBracketedIpv6) {
    ASSERT_OK_AND_ASSIGN(const ListenAddress a, parse_listen_address("[::1]:0"));
    EXPECT_EQ(a.host, "::1");
    EXPECT_EQ(a.port, 0);
    EXPECT_EQ(a.family, AF_INET6);
    EXPECT_EQ(a.to_string(), "[::1]:0");
}

TEST(ListenAddress, RejectsMalformedAddresses) {
    EXPECT_ERR(parse_listen_address("9464"), EINVAL);
    EXPECT_ERR(parse_listen_address("localhost:9464"), EINVAL);
    EXPECT_ERR(parse_listen_address("127.0.0.1:"), EINVAL);
    EXPECT_ERR(parse_listen_address("127.0.0.1:65536"), EINVAL);
    EXPECT_ERR(parse_listen_address("127.0.0.1:94x"), EINVAL);
    EXPECT_ERR(parse_listen_address("[::1:9464"), EINVAL);
    EXPECT_ERR(parse_listen_address(""), EINVAL);
}

TEST(ListenAddress, DefaultIsLoopback9464) {
    ASSERT_OK_AND_ASSIGN(const ListenAddress a, parse_listen_address(kDefaultListenAddress));
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 9464);
}

TEST(Exposer, PortZeroBindsAnEphemeralPort) {
    ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
    EXPECT_NE(exposer.port(), 0);
    EXPECT_EQ(exposer.url(), "http://127.0.0.1:" + std::to_string(exposer.port()) + "/metrics");
}

TEST(Exposer, PortInUseIsAClearError) {
    ASSERT_OK_AND_ASSIGN(auto first, Exposer::start({.address = "127.0.0.1:0"}));
    auto second = Exposer::start({.address = first.address()});
    ASSERT_FALSE(second.has_value());
    EXPECT_EQ(second.error().code, EADDRINUSE);
    EXPECT_NE(second.error().message().find("address in use"), std::string::npos) << second.error().message();
}

TEST(Exposer, BadAddressOrThreadCountIsInvalid) {
    EXPECT_ERR(Exposer::start({.address = "not-an-address"}), EINVAL);
    EXPECT_ERR(Exposer::start({.address = "127.0.0.1:0", .threads = 0}), EINVAL);
}

TEST(Exposer, NullCollectableOrBadUriIsInvalid) {
    ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
    EXPECT_ERR(exposer.register_collectable(nullptr), EINVAL);
    EXPECT_ERR(exposer.register_collectable(std::make_shared<CollectorSet>(), "metrics"), EINVAL);
}

TEST(Exposer, ServesRegisteredCollectorsOverHttp) {
    telemetry::StatsRegistry stats(1);
    stats.shard(0).pages_pinned.add(77);
    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK(set->add("engine", std::make_shared<EngineCollector>([&] { return stats.snapshot(); }, EngineInfo{})));
    ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
    ASSERT_OK(exposer.register_collectable(set));

    ASSERT_OK_AND_ASSIGN(const auto resp, testing::http_get("127.0.0.1", exposer.port(), "/metrics"));
    EXPECT_EQ(resp.status, 200);
    EXPECT_EQ(resp.content_type.rfind("text/plain", 0), 0u) << resp.content_type;
    ASSERT_OK_AND_ASSIGN(const auto e, testing::parse_exposition(resp.body));
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", std::string(kUnnamedVmLabel)}}), 77.0);
}

TEST(Exposer, MovedExposerKeepsServing) {
    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK_AND_ASSIGN(auto original, Exposer::start({.address = "127.0.0.1:0"}));
    ASSERT_OK(original.register_collectable(set));
    Exposer moved = std::move(original);
    ASSERT_OK_AND_ASSIGN(const auto resp, testing::http_get("127.0.0.1", moved.port(), "/metrics"));
    EXPECT_EQ(resp.status, 200);
}

TEST(Exposer, StoppedExposerRefusesConnections) {
    uint16_t port = 0;
    {
        ASSERT_OK_AND_ASSIGN(auto exposer, Exposer::start({.address = "127.0.0.1:0"}));
        port = exposer.port();
    }
    EXPECT_ERR(testing::http_get("127.0.0.1", port, "/metrics"), ECONNREFUSED);
}

}  // namespace
}  // namespace coiommu::exporter
