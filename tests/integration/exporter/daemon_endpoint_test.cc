// coiommud's metrics endpoint (exporter::DaemonMetrics over a real daemon::Server) with emulated
// VMs pinning through the real socket, scraped over HTTP: each session's series carry its VM's
// Hello name as `vm`; a session that closes leaves its counts in the sums; two VMMs that give one
// name are kept apart; a hostile Hello name is exported as a safe value; connections the daemon
// turns away are counted by reason.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/daemon/config.h"
#include "engine/daemon/emulated_vm.h"
#include "engine/daemon/server.h"
#include "exporter/daemon_metrics.h"
#include "exporter/engine_collector.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using std::chrono::milliseconds;
const std::string kEnded(kEndedVmLabel);

class DaemonEndpoint : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/coiommu-daemon-endpoint.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        const std::string socket = dir_ + "/d.sock";
        ASSERT_OK_AND_ASSIGN(auto args,
                             daemon::parse_args({"--socket", socket, "--metrics-address", "127.0.0.1:0", "--engine",
                                                 "unpin_policy=lru,unpin_interval=100ms", "--hello-timeout", "200ms"}));
        cfg_ = std::move(args.config);
        ASSERT_OK_AND_ASSIGN(server_, daemon::Server::start(cfg_.server_options()));
        ASSERT_OK(metrics_.start(cfg_, *server_, {}));
        const std::string url = metrics_.url();  // http://127.0.0.1:PORT/metrics
        ASSERT_TRUE(url.ends_with("/metrics")) << url;
        port_ = static_cast<uint16_t>(std::stoul(url.substr(url.rfind(':') + 1)));
    }
    void TearDown() override {
        vms_.clear();
        metrics_.stop();
        server_.reset();
        std::filesystem::remove_all(dir_);
    }

    daemon::EmulatedVm* start_vm(std::string name) {
        daemon::EmulatedVmOptions v;
        v.socket_path = cfg_.socket_path;
        v.name = std::move(name);
        v.vcpus = 1;
        v.ram_bytes = uint64_t{64} << 20;
        v.latency = daemon::proto::FakeLatency::None;
        v.balloon_interval = milliseconds(0);
        v.rate_per_vcpu = 2'000;
        auto vm = daemon::EmulatedVm::start(v);
        EXPECT_TRUE(vm.has_value()) << vm.error().message();
        if (!vm) return nullptr;
        vms_.push_back(std::move(*vm));
        return vms_.back().get();
    }

    testing::Exposition scrape() {
        auto resp = testing::http_get("127.0.0.1", port_, "/metrics");
        if (!resp || resp->status != 200) return {};
        auto e = testing::parse_exposition(resp->body);
        EXPECT_TRUE(e.has_value()) << e.error().message();
        return e ? *e : testing::Exposition{};
    }

    // Scrapes until `done` holds for a scrape (at most 10 s); returns the last scrape.
    template <class Pred>
    testing::Exposition scrape_until(Pred done) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        testing::Exposition e = scrape();
        while (!done(e) && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(milliseconds(50));
            e = scrape();
        }
        return e;
    }

    // A connection to the daemon's socket that has not said anything (yet).
    [[nodiscard]] UniqueFd raw_connection() const {
        UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, cfg_.socket_path.c_str(), sizeof addr.sun_path - 1);
        EXPECT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0)
            << std::strerror(errno);
        return fd;
    }

    static double refused(const testing::Exposition& e, const std::string& reason) {
        return e.value("coiommu_connections_refused_total", {{"reason", reason}});
    }

    static double pinned(const testing::Exposition& e, const std::string& vm) {
        return e.value("coiommu_pages_pinned_total", {{"vm", vm}});
    }

    static double pinned_sum(const testing::Exposition& e) {
        double sum = 0;
        for (const auto& s : e.find("coiommu_pages_pinned_total")) sum += s.value;
        return sum;
    }

    std::string dir_;
    daemon::DaemonConfig cfg_;
    std::unique_ptr<daemon::Server> server_;
    DaemonMetrics metrics_;
    uint16_t port_ = 0;
    std::vector<std::unique_ptr<daemon::EmulatedVm>> vms_;
};

TEST_F(DaemonEndpoint, EachSessionsSeriesCarryItsVmName) {
    ASSERT_NE(start_vm("a"), nullptr);
    ASSERT_NE(start_vm("b"), nullptr);
    const auto e = scrape_until([](const testing::Exposition& x) { return pinned(x, "a") > 0 && pinned(x, "b") > 0; });
    EXPECT_GT(pinned(e, "a"), 0.0);
    EXPECT_GT(pinned(e, "b"), 0.0);
    EXPECT_EQ(e.value("coiommu_active_sessions"), 2.0);
    EXPECT_EQ(e.find("coiommu_guest_ram_bytes").size(), 2u);
    EXPECT_EQ(e.value("coiommu_guest_ram_bytes", {{"vm", "a"}}), 64.0 * 1024 * 1024);
    EXPECT_EQ(e.value("coiommu_vcpus", {{"vm", "b"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_pin_requests_total", {{"vm", kEnded}, {"kind", "single"}}), 0.0);
}

TEST_F(DaemonEndpoint, ASessionThatClosesLeavesItsCountsInTheSum) {
    daemon::EmulatedVm* a = start_vm("a");
    ASSERT_NE(a, nullptr);
    ASSERT_NE(start_vm("b"), nullptr);
    const auto before = scrape_until([](const testing::Exposition& x) { return pinned(x, "a") > 0; });
    const double a_pinned = pinned(before, "a");
    ASSERT_GT(a_pinned, 0.0);
    const double sum_before = pinned_sum(before);
    ASSERT_OK(a->close());
    const auto after = scrape_until([](const testing::Exposition& x) {
        return x.find("coiommu_pages_pinned_total", {{"vm", "a"}}).empty();
    });
    EXPECT_TRUE(after.find("coiommu_pages_pinned_total", {{"vm", "a"}}).empty()) << "a's series outlived its session";
    EXPECT_TRUE(after.find("coiommu_pinned_pages", {{"vm", "a"}}).empty());
    EXPECT_GE(pinned(after, kEnded), a_pinned);
    EXPECT_GE(pinned_sum(after), sum_before);
    EXPECT_EQ(after.value("coiommu_active_sessions"), 1.0);
}

TEST_F(DaemonEndpoint, TwoVmmsGivingOneNameAreKeptApart) {
    ASSERT_NE(start_vm("dup"), nullptr);
    ASSERT_NE(start_vm("dup"), nullptr);
    const auto e =
        scrape_until([](const testing::Exposition& x) { return pinned(x, "dup") > 0 && pinned(x, "dup#2") > 0; });
    EXPECT_GT(pinned(e, "dup"), 0.0);
    EXPECT_GT(pinned(e, "dup#2"), 0.0);
    EXPECT_EQ(e.find("coiommu_pinned_pages").size(), 2u);
}

TEST_F(DaemonEndpoint, AHostileHelloNameIsExportedAsASafeValue) {
    // 32 bytes, the whole Hello name field: quotes, a backslash, a newline, bytes of no UTF-8.
    ASSERT_NE(start_vm("q\"\\\n}\xff\xc3 x" + std::string(30, 'y')), nullptr);
    const auto e = scrape_until([](const testing::Exposition& x) { return !x.find("coiommu_pinned_pages").empty(); });
    const auto series = e.find("coiommu_pinned_pages");
    ASSERT_EQ(series.size(), 1u);
    const std::string vm = series.front().labels.at("vm");
    EXPECT_EQ(vm, "q_______x" + std::string(23, 'y'));
    EXPECT_TRUE(std::regex_match(vm, std::regex("[A-Za-z0-9._-]{1,32}"))) << vm;
}

TEST_F(DaemonEndpoint, EveryRefusalReasonIsServedAtZeroFromTheFirstScrape) {
    const auto e = scrape();
    EXPECT_EQ(e.types.at("coiommu_connections_refused_total"), "counter");
    for (const char* r : {"credentials", "busy", "uid_busy", "fd_budget", "out_of_fds", "bad_handshake",
                          "hello_timeout", "evicted_pending"}) {
        EXPECT_EQ(refused(e, r), 0.0) << r;
    }
    EXPECT_EQ(e.value("coiommu_sessions_accepted_total"), 0.0);
    EXPECT_EQ(e.value("coiommu_sessions_resumed_total"), 0.0);
    EXPECT_EQ(e.value("coiommu_accept_pauses_total"), 0.0);
}

TEST_F(DaemonEndpoint, AConnectionThatNeverSaysHelloIsCountedAsAHelloTimeout) {
    const UniqueFd silent = raw_connection();
    const auto e = scrape_until([](const testing::Exposition& x) { return refused(x, "hello_timeout") == 1; });
    EXPECT_EQ(refused(e, "hello_timeout"), 1.0);
    EXPECT_EQ(refused(e, "bad_handshake"), 0.0);
    EXPECT_EQ(e.value("coiommu_sessions_accepted_total"), 0.0);
}

TEST_F(DaemonEndpoint, AFirstMessageThatIsNoHelloIsCountedAsABadHandshake) {
    const UniqueFd rude = raw_connection();
    const char junk[] = "GET / HTTP/1.0\r\n\r\n";
    ASSERT_GT(::send(rude.get(), junk, sizeof junk, MSG_NOSIGNAL), 0);
    const auto e = scrape_until([](const testing::Exposition& x) { return refused(x, "bad_handshake") == 1; });
    EXPECT_EQ(refused(e, "bad_handshake"), 1.0);
    EXPECT_EQ(e.value("coiommu_sessions_accepted_total"), 0.0);
}

TEST_F(DaemonEndpoint, ASessionThatClosesCountsAsAcceptedAndEndedButNotFailed) {
    daemon::EmulatedVm* a = start_vm("a");
    ASSERT_NE(a, nullptr);
    ASSERT_OK(a->close());
    const auto e =
        scrape_until([](const testing::Exposition& x) { return x.value("coiommu_sessions_ended_total") == 1; });
    EXPECT_EQ(e.value("coiommu_sessions_accepted_total"), 1.0);
    EXPECT_EQ(e.value("coiommu_sessions_ended_total"), 1.0);
    EXPECT_EQ(e.value("coiommu_sessions_failed_total"), 0.0);
    EXPECT_EQ(e.value("coiommu_sessions_resumed_total"), 0.0);
}

}  // namespace
}  // namespace coiommu::exporter
