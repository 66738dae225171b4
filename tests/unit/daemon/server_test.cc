// The listener: socket mode, credentials, the session bound, floods, isolation between VMs, the
// aggregate statistics, and an orderly stop - with emulated VMs pinning through the real socket.
#include "engine/daemon/server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

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

    // A connection that says nothing: it waits for the daemon's verdict.
    std::vector<UniqueFd> idle_connections(int n) {
        std::vector<UniqueFd> out;
        for (int i = 0; i < n; ++i) {
            auto fd = connect_seqpacket(path_);
            EXPECT_TRUE(fd) << fd.error().message();
            if (fd) out.push_back(std::move(*fd));
        }
        return out;
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

// What the daemon sent on a connection that never said anything, and whether it closed it then.
struct Verdict {
    DecodedError error;
    bool closed_after = false;
};

Result<Verdict> verdict(UniqueFd sock, milliseconds limit) {
    auto c = Client::adopt(std::move(sock));
    c->set_timeout(limit);
    COIOMMU_ASSIGN_OR_RETURN(auto first, c->receive());
    if (!first) return make_error(ECONNRESET, "closed without an Error");
    if (first->header.type != static_cast<uint16_t>(proto::MsgType::Error)) return make_error(EPROTO, "not an Error");
    Verdict v;
    COIOMMU_ASSIGN_OR_RETURN(v.error, decode_error(first->payload));
    auto end = c->receive();
    v.closed_after = end && !*end;
    return v;
}

TEST_F(ServerTest, IdleConnectionsTakeNoSessionSlot) {
    start(options());  // max_sessions 64
    auto idle = idle_connections(64);
    ASSERT_OK_AND_ASSIGN(auto vmm, Client::connect(path_, "real"));
    EXPECT_EQ(server_->session_count(), 1u);
    EXPECT_OK(vmm->close());
}

TEST_F(ServerTest, ConnectionWithoutHelloIsClosedAfterTheHelloTimeout) {
    auto o = options();  // setup_timeout 2 s
    o.hello_timeout = milliseconds(200);
    start(std::move(o));
    auto idle = idle_connections(1);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_OK_AND_ASSIGN(auto v, verdict(std::move(idle[0]), milliseconds(1500)));
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(v.error.code, ETIMEDOUT) << v.error.text;
    EXPECT_NE(v.error.text.find("Hello"), std::string::npos) << v.error.text;
    EXPECT_TRUE(v.closed_after);
    EXPECT_GE(waited, milliseconds(150));
    EXPECT_LT(waited, milliseconds(1000));
}

TEST_F(ServerTest, FullPendingPoolEvictsItsOldestConnection) {
    auto o = options();
    o.max_pending = 4;
    o.hello_timeout = milliseconds(5000);
    start(std::move(o));
    auto idle = idle_connections(5);
    ASSERT_OK_AND_ASSIGN(auto v, verdict(std::move(idle[0]), milliseconds(1000)));
    EXPECT_EQ(v.error.code, EBUSY);
    EXPECT_NE(v.error.text.find("waiting for Hello"), std::string::npos) << v.error.text;
    EXPECT_TRUE(v.closed_after);
    // The newest four still wait, and a VMM that says Hello at once is served.
    ASSERT_OK_AND_ASSIGN(auto vmm, Client::connect(path_, "prompt"));
    EXPECT_OK(vmm->close());
}

TEST_F(ServerTest, UidAtItsSessionCapIsRefusedWithEbusy) {
    auto o = options();
    o.max_sessions = 8;
    o.max_sessions_per_uid = 2;
    start(std::move(o));
    ASSERT_OK_AND_ASSIGN(auto a, Client::connect(path_, "a"));
    ASSERT_OK_AND_ASSIGN(auto b, Client::connect(path_, "b"));
    auto c = Client::connect(path_, "c");
    EXPECT_ERR(c, EBUSY);
    if (!c) {
        EXPECT_NE(c.error().message().find("per uid"), std::string::npos) << c.error().message();
    }
    EXPECT_EQ(server_->session_count(), 2u);
    ASSERT_OK(a->close());
    ASSERT_TRUE(eventually([&] { return server_->session_count() == 1; }));
    EXPECT_OK(Client::connect(path_, "d"));
}

// A socket connected to `path` by a child running as `uid` (SO_PEERCRED is taken at connect).
Result<UniqueFd> connect_as(const std::string& path, uid_t uid) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof addr.sun_path - 1));
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return make_error(errno, "socketpair");
    UniqueFd parent_end(pair[0]), child_end(pair[1]);
    const pid_t pid = ::fork();
    if (pid < 0) return make_error(errno, "fork");
    if (pid == 0) {  // system calls only until _exit
        if (::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(1);
        const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) ::_exit(2);
        char byte = 0;
        iovec iov{&byte, 1};
        alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        if (!attach_fds(mh, control, std::span<const int>(&fd, 1))) ::_exit(3);
        ::_exit(::sendmsg(child_end.get(), &mh, 0) == 1 ? 0 : 4);
    }
    child_end.reset();
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return make_error(EPERM, fmt::format("child as uid {} failed: status {:#x}", uid, status));
    }
    char byte = 0;
    iovec iov{&byte, 1};
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    if (::recvmsg(parent_end.get(), &mh, MSG_CMSG_CLOEXEC) != 1) return make_error(errno, "recvmsg");
    const cmsghdr* cm = CMSG_FIRSTHDR(&mh);
    if (cm == nullptr || cm->cmsg_type != SCM_RIGHTS) return make_error(EBADMSG, "no fd from the child");
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return UniqueFd(fd);
}

TEST_F(ServerTest, AnotherUidGetsInWhileOneIsAtItsCap) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as a second uid";
    constexpr uid_t kTenant = 4242;
    auto o = options();
    o.allowed_uids = {::geteuid(), kTenant};
    o.max_sessions = 8;
    o.max_sessions_per_uid = 2;
    start(std::move(o));
    // The tenant's connect needs to reach the socket and write to it.
    ASSERT_EQ(::chmod(dir_.c_str(), 0711), 0);
    ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
    ASSERT_OK_AND_ASSIGN(auto a, Client::connect(path_, "a"));
    ASSERT_OK_AND_ASSIGN(auto b, Client::connect(path_, "b"));
    EXPECT_ERR(Client::connect(path_, "c"), EBUSY);
    ASSERT_OK_AND_ASSIGN(auto sock, connect_as(path_, kTenant));
    auto tenant = Client::adopt(std::move(sock));
    EXPECT_OK(tenant->hello("tenant", proto::kAllFeatures));
    EXPECT_EQ(server_->session_count(), 3u);
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
