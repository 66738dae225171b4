// The real coiommud binary on a temporary socket, driven by emulated VMs through the protocol
// exactly as a VMM would: pins go through the socket path, the safety invariant holds (checked
// with QueryMapped after every DMA map), both sides' statistics agree, Close leaves no mapping,
// SIGTERM exits 0 with nothing left, and a flood of 200 connections does not stop the service.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"
#ifdef COIOMMUD_HAS_EXPORTER
#include "tests/unit/exporter/scrape_support.h"
#endif

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::TempDir;

// coiommud with what every story here shares; `extra` flags come last (a --metrics-address in
// them replaces "none").
Result<DaemonProcess> start_daemon(const std::vector<std::string>& extra = {}) {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommud-it"));
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.socket = dir.path("coiommud.sock");
    o.args = {"--socket",    o.socket, "--tracing", "off",
              "--log-level", "warn",   "--engine",  "unpin_policy=lru,unpin_interval=200ms"};
    if (std::ranges::none_of(extra, [](const std::string& e) { return e.starts_with("--metrics-address"); })) {
        o.args.insert(o.args.end(), {"--metrics-address", "none"});
    }
    o.args.insert(o.args.end(), extra.begin(), extra.end());
    return DaemonProcess::start(std::move(dir), std::move(o));
}

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
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
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
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "victim")));
    std::this_thread::sleep_for(milliseconds(500));
    vm->stop();
    EXPECT_EQ(d.terminate(), 0);
    EXPECT_FALSE(std::filesystem::exists(d.socket()));
    EXPECT_FALSE(vm->client().stats());  // the session is gone
}

TEST(CoiommudIntegration, FloodOfConnectionsDoesNotStopTheService) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({"--max-sessions", "32", "--setup-timeout", "500ms"}));
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
TEST(CoiommudIntegration, EmbeddedExporterServesEverySessionUnderItsVmName) {
    ASSERT_OK_AND_ASSIGN(const uint16_t port, exporter::testing::free_loopback_port());
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({"--metrics-address", "127.0.0.1:" + std::to_string(port)}));
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "scraped")));
    // The socket appears before the exporter binds: retry until it answers.
    std::string body;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
        auto resp = exporter::testing::http_get("127.0.0.1", port, "/metrics", 1000);
        body = resp ? resp->body : std::string{};
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
