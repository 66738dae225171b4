// The real coiommud binary on a temporary socket, driven by emulated VMs through the protocol
// exactly as a VMM would: pins go through the socket path, the safety invariant holds (checked
// with QueryMapped after every DMA map), both sides' statistics agree, Close leaves no mapping,
// SIGTERM exits 0 with nothing left, and a flood of 200 connections does not stop the service.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "tests/testing/expect.h"

extern char** environ;

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;

class Daemon {
public:
    explicit Daemon(std::vector<std::string> extra = {}) {
        char tmpl[] = "/tmp/coiommud-it.XXXXXX";
        EXPECT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        socket_ = dir_ + "/coiommud.sock";
        std::vector<std::string> args{COIOMMUD_PATH, "--socket", socket_,
                                      "--tracing",   "off",      "--log-level",
                                      "warn",        "--engine", "unpin_policy=lru,unpin_interval=200ms"};
        bool metrics = false;
        for (const auto& e : extra) metrics = metrics || e.starts_with("--metrics-address");
        if (!metrics) {
            args.push_back("--metrics-address");
            args.push_back("none");
        }
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        EXPECT_EQ(::posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!std::filesystem::exists(socket_) && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(milliseconds(10));
        }
        EXPECT_TRUE(std::filesystem::exists(socket_)) << "coiommud did not create its socket";
    }
    ~Daemon() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        std::filesystem::remove_all(dir_);
    }

    // SIGTERM and the exit status (-1 if it did not exit within `limit`).
    int terminate(milliseconds limit = milliseconds(15000)) {
        ::kill(pid_, SIGTERM);
        const auto until = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < until) {
            int st = 0;
            if (::waitpid(pid_, &st, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            std::this_thread::sleep_for(milliseconds(10));
        }
        return -1;
    }

    [[nodiscard]] const std::string& socket() const { return socket_; }

private:
    std::string dir_, socket_;
    pid_t pid_ = -1;
};

EmulatedVmOptions vm_options(const std::string& socket, std::string name) {
    EmulatedVmOptions v;
    v.socket_path = socket;
    v.name = std::move(name);
    v.vcpus = 2;
    v.ram_bytes = uint64_t{128} << 20;
    v.latency = proto::FakeLatency::Typical;
    v.balloon_interval = milliseconds(100);
    v.check_invariant = CheckInvariant::Yes;
    return v;
}

TEST(CoiommudIntegration, PinsThroughTheSocketKeepTheInvariantAndStatsAgree) {
    Daemon d;
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "it-vm")));
    std::this_thread::sleep_for(std::chrono::seconds(2));
    vm->stop();  // every vCPU has unmapped what it held; the requests are all answered
    const VmCounters g = vm->counters();
    ASSERT_OK_AND_ASSIGN(auto s, vm->client().stats());
    const auto& t = s.snapshot.totals;

    EXPECT_GT(g.maps, 1000u);
    EXPECT_EQ(g.map_failures, 0u);
    EXPECT_GT(g.invariant_checks, 1000u);
    EXPECT_EQ(g.invariant_violations, 0u);
    EXPECT_EQ(g.check_errors, 0u);
    EXPECT_GT(g.balloon_success, 0u);
    EXPECT_EQ(g.balloon_failed, 0u);
    // Both sides count the same pin requests, and every requested page was pinned.
    EXPECT_EQ(t.requests[telemetry::RequestKind::Single] + t.requests[telemetry::RequestKind::Batch], g.notifications);
    EXPECT_EQ(t.requests_failed, 0u);
    EXPECT_EQ(t.pages_requested, t.pages_pinned + t.pages_already_pinned);
    EXPECT_EQ(t.balloon_requests[telemetry::BalloonResult::Success], g.balloon_success);
    EXPECT_GT(t.pages_unpinned, 0u);  // LRU and balloon ran
    EXPECT_EQ(s.head.backend_live_entries, s.snapshot.gauges.dma_entries);

    ASSERT_OK_AND_ASSIGN(auto c, vm->close());
    EXPECT_EQ(c.dma_entries_after, 0u);
    EXPECT_EQ(d.terminate(), 0);
}

TEST(CoiommudIntegration, SigtermWithARunningVmExitsZeroAndRemovesTheSocket) {
    Daemon d;
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "victim")));
    std::this_thread::sleep_for(milliseconds(500));
    vm->stop();
    EXPECT_EQ(d.terminate(), 0);
    EXPECT_FALSE(std::filesystem::exists(d.socket()));
    EXPECT_FALSE(vm->client().stats());  // the session is gone
}

TEST(CoiommudIntegration, FloodOfConnectionsDoesNotStopTheService) {
    Daemon d({"--max-sessions", "32", "--setup-timeout", "500ms"});
    ASSERT_OK_AND_ASSIGN(auto steady, EmulatedVm::start(vm_options(d.socket(), "steady")));
    std::vector<UniqueFd> flood;
    for (int i = 0; i < 200; ++i) {
        auto fd = connect_seqpacket(d.socket());
        if (fd) flood.push_back(std::move(*fd));
    }
    EXPECT_GE(flood.size(), 100u);
    // Half of them say garbage, the rest stay silent until the setup timeout.
    const std::byte junk[30] = {std::byte{0x5a}};
    for (std::size_t i = 0; i < flood.size(); i += 2) (void)::send(flood[i].get(), junk, sizeof junk, MSG_NOSIGNAL);
    const uint64_t before = steady->counters().maps;
    std::this_thread::sleep_for(milliseconds(1000));
    EXPECT_GT(steady->counters().maps, before);
    flood.clear();
    // A new VM is served once the flood has gone.
    ASSERT_OK_AND_ASSIGN(auto late, EmulatedVm::start(vm_options(d.socket(), "late")));
    std::this_thread::sleep_for(milliseconds(300));
    ASSERT_OK_AND_ASSIGN(auto c1, late->close());
    ASSERT_OK_AND_ASSIGN(auto c2, steady->close());
    EXPECT_EQ(c1.dma_entries_after, 0u);
    EXPECT_EQ(c2.dma_entries_after, 0u);
    EXPECT_EQ(steady->counters().invariant_violations, 0u);
    EXPECT_EQ(d.terminate(), 0);
}

#ifdef COIOMMUD_HAS_EXPORTER
uint16_t free_port() {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    EXPECT_EQ(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    return ntohs(a.sin_port);
}

std::string http_get(uint16_t port, const std::string& path) {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) < 0) return {};
    std::string out;
    char buf[4096];
    ssize_t n = 0;
    while ((n = ::recv(s.get(), buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
    return out;
}

TEST(CoiommudIntegration, EmbeddedExporterServesEverySessionUnderItsVmName) {
    const uint16_t port = free_port();
    Daemon d({"--metrics-address", "127.0.0.1:" + std::to_string(port)});
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "scraped")));
    // The socket appears before the exporter binds: retry until it answers.
    std::string body;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
        body = http_get(port, "/metrics");
        if (body.find("coiommu_active_sessions 1") != std::string::npos) break;
        std::this_thread::sleep_for(milliseconds(100));
    }
    EXPECT_NE(body.find("coiommu_active_sessions 1"), std::string::npos) << body.substr(0, 2000);
    // The VM's Hello name is the vm label of its engine's series (exporter/METRICS.md).
    EXPECT_NE(body.find("coiommu_pin_requests_total{vm=\"scraped\",kind=\"batch\"}"), std::string::npos);
    EXPECT_NE(body.find("coiommu_pinned_pages{vm=\"scraped\"}"), std::string::npos);
    EXPECT_NE(body.find("coiommu_pages_pinned_total{vm=\"(ended)\"} 0"), std::string::npos);
    EXPECT_NE(body.find("process_open_fds"), std::string::npos);
    ASSERT_OK(vm->close());
    EXPECT_EQ(d.terminate(), 0);
}
#endif

}  // namespace
}  // namespace coiommu::daemon
