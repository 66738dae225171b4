// The listener: socket mode, credentials, the session bound, floods, isolation between VMs, the
// aggregate statistics, and an orderly stop - with emulated VMs pinning through the real socket.
#include "engine/daemon/server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "tests/testing/expect.h"
#include "tests/unit/daemon/fd_count.h"

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;

class ServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/coiommud-server-test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/d.sock";
        fds_before_ = testing::open_fds();
    }
    void TearDown() override {
        server_.reset();
        EXPECT_EQ(testing::open_fds(), fds_before_) << "fd leak";
        std::filesystem::remove_all(dir_);
    }

    ServerOptions options() {
        ServerOptions o;
        o.socket_path = path_;
        o.limits.setup_timeout = milliseconds(2000);
        o.limits.io_timeout = milliseconds(1000);
        o.policy.engine.unpin_policy = workers::UnpinPolicy::Lru;
        o.policy.engine.unpin_interval = milliseconds(100);
        return o;
    }

    void start(ServerOptions o) {
        auto s = Server::start(std::move(o));
        ASSERT_TRUE(s) << s.error().message();
        server_ = std::move(*s);
    }

    EmulatedVmOptions vm_options(std::string name) {
        EmulatedVmOptions v;
        v.socket_path = path_;
        v.name = std::move(name);
        v.vcpus = 2;
        v.ram_bytes = uint64_t{64} << 20;
        v.latency = proto::FakeLatency::None;
        v.balloon_interval = milliseconds(50);
        v.check_invariant = CheckInvariant::Yes;
        v.rate_per_vcpu = 20'000;
        return v;
    }

    template <class Pred>
    bool eventually(Pred p, milliseconds limit = milliseconds(5000)) {
        const auto until = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < until) {
            if (p()) return true;
            std::this_thread::sleep_for(milliseconds(10));
        }
        return p();
    }

    std::string dir_, path_;
    std::size_t fds_before_ = 0;
    std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, SocketIsCreatedOwnerOnly) {
    start(options());
    struct stat st {};
    ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ServerTest, StopRemovesTheSocketFile) {
    start(options());
    server_->stop();
    EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(ServerTest, LiveSocketIsNotStolenButAStaleOneIsReplaced) {
    start(options());
    EXPECT_ERR(Server::start(options()), EADDRINUSE);
    // A daemon that died left its socket file: a new one takes over.
    UniqueFd stale(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
    server_.reset();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    ASSERT_EQ(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    stale.reset();  // bound, never listening, file left behind
    ASSERT_TRUE(std::filesystem::exists(path_));
    start(options());
}

TEST_F(ServerTest, PathThatIsNotASocketIsLeftAlone) {
    { std::ofstream f(path_); }
    EXPECT_ERR(Server::start(options()), EEXIST);
    EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(ServerTest, UidNotAllowedIsRefusedWithEacces) {
    auto o = options();
    o.allowed_uids = {::geteuid() + 4242};
    start(std::move(o));
    auto c = Client::connect(path_, "intruder");
    EXPECT_ERR(c, EACCES);
    EXPECT_EQ(server_->counters().refused_credentials.load(), 1u);
    EXPECT_EQ(server_->session_count(), 0u);
}

TEST_F(ServerTest, SessionsBeyondTheMaximumAreRefusedWithEbusy) {
    auto o = options();
    o.max_sessions = 2;
    start(std::move(o));
    ASSERT_OK_AND_ASSIGN(auto a, Client::connect(path_, "a"));
    ASSERT_OK_AND_ASSIGN(auto b, Client::connect(path_, "b"));
    EXPECT_ERR(Client::connect(path_, "c"), EBUSY);
    ASSERT_OK(a->close());
    a.reset();
    ASSERT_TRUE(eventually([&] { return server_->session_count() == 1; }));
    EXPECT_OK(Client::connect(path_, "d"));
}

TEST_F(ServerTest, FloodOfConnectionsLeavesTheDaemonServing) {
    auto o = options();
    o.max_sessions = 16;
    o.limits.setup_timeout = milliseconds(300);
    start(std::move(o));
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options("steady")));
    std::vector<UniqueFd> flood;
    for (int i = 0; i < 200; ++i) {
        auto fd = connect_seqpacket(path_);
        if (fd) flood.push_back(std::move(*fd));
    }
    EXPECT_GE(flood.size(), 100u);
    flood.clear();
    // The flood is refused or times out; the running VM keeps pinning meanwhile.
    const uint64_t maps_before = vm->counters().maps;
    ASSERT_TRUE(eventually([&] { return vm->counters().maps > maps_before + 100; }));
    ASSERT_TRUE(eventually([&] { return server_->session_count() == 1; }));
    ASSERT_OK_AND_ASSIGN(auto c, vm->close());
    EXPECT_EQ(c.dma_entries_after, 0u);
    const auto vc = vm->counters();
    EXPECT_EQ(vc.invariant_violations, 0u);
    EXPECT_EQ(vc.map_failures, 0u);
}

TEST_F(ServerTest, GarbageFromOneVmDoesNotDisturbAnother) {
    start(options());
    ASSERT_OK_AND_ASSIGN(auto good, EmulatedVm::start(vm_options("good")));
    ASSERT_OK_AND_ASSIGN(auto bad, Client::connect(path_, "bad"));
    const std::byte junk[40] = {std::byte{0xff}};
    ASSERT_OK(bad->send_raw(junk));
    ASSERT_OK_AND_ASSIGN(auto reply, bad->receive());
    ASSERT_TRUE(reply);  // the Error
    ASSERT_OK_AND_ASSIGN(auto end, bad->receive());
    EXPECT_FALSE(end);  // then closed
    const uint64_t maps = good->counters().maps;
    ASSERT_TRUE(eventually([&] { return good->counters().maps > maps + 100; }));
    ASSERT_OK_AND_ASSIGN(auto c, good->close());
    EXPECT_EQ(c.dma_entries_after, 0u);
    EXPECT_EQ(good->counters().invariant_violations, 0u);
    EXPECT_GT(good->counters().invariant_checks, 0u);
}

TEST_F(ServerTest, CrashedVmmLeavesNoMappingAndCountersStayMonotonic) {
    start(options());
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options("crashing")));
    ASSERT_TRUE(eventually([&] { return server_->aggregate().totals.pages_pinned > 100; }));
    vm->stop();
    const auto before = server_->aggregate();
    ::shutdown(vm->client().fd(), SHUT_RDWR);  // the VMM dies without Close
    ASSERT_TRUE(eventually([&] { return server_->session_count() == 0; }));
    const auto after = server_->aggregate();
    EXPECT_GE(after.totals.pages_pinned, before.totals.pages_pinned);
    EXPECT_GE(after.totals.requests[telemetry::RequestKind::Batch],
              before.totals.requests[telemetry::RequestKind::Batch]);
    // Everything the engine mapped was unmapped at teardown.
    EXPECT_EQ(after.totals.dma_bytes[telemetry::DmaOp::Map], after.totals.dma_bytes[telemetry::DmaOp::Unmap]);
    EXPECT_EQ(after.gauges.pinned_pages, 0u);
    EXPECT_EQ(after.gauges.active_sessions, 0u);
}

TEST_F(ServerTest, AggregateSumsConcurrentVms) {
    start(options());
    ASSERT_OK_AND_ASSIGN(auto a, EmulatedVm::start(vm_options("a")));
    ASSERT_OK_AND_ASSIGN(auto b, EmulatedVm::start(vm_options("b")));
    ASSERT_TRUE(eventually([&] {
        auto sa = a->client().stats();
        auto sb = b->client().stats();
        return sa && sb && sa->snapshot.totals.pages_pinned > 0 && sb->snapshot.totals.pages_pinned > 0;
    }));
    const auto agg = server_->aggregate();
    EXPECT_EQ(agg.gauges.active_sessions, 2u);
    EXPECT_EQ(agg.gauges.vcpus, 4u);
    EXPECT_EQ(agg.gauges.guest_ram_bytes, uint64_t{128} << 20);
    EXPECT_OK(a->close());
    EXPECT_OK(b->close());
}

TEST_F(ServerTest, StopTearsDownRunningSessions) {
    start(options());
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options("victim")));
    ASSERT_TRUE(eventually([&] { return server_->aggregate().gauges.pinned_pages > 0; }));
    vm->stop();
    server_->stop();
    const auto agg = server_->aggregate();
    EXPECT_EQ(agg.gauges.active_sessions, 0u);
    EXPECT_EQ(agg.totals.dma_bytes[telemetry::DmaOp::Map], agg.totals.dma_bytes[telemetry::DmaOp::Unmap]);
    EXPECT_FALSE(vm->close());  // the session is gone
}

}  // namespace
}  // namespace coiommu::daemon
