// Resumable sessions through libcoiommu-client's C ABI (protocol minor 2, COIOMMU_CLIENT_0.3)
// against the real coiommud: a VMM in C keeps the host record, sees the daemon's kill -9 as a lost
// connection, reconnects with backoff and resumes with the next daemon, and the guest keeps every
// pin. The VMM side is the C API only; the guest (its RAM, DTT and driver) is the project's emulator,
// and the fake container's mapping set is read from its memfd as a test reads a container's.
#include <coiommu/client.h>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/unique_fd.h"
#include "engine/daemon/client.h"
#include "engine/daemon/protocol_io.h"
#include "engine/dma/fake_backend.h"
#include "engine/emulator/guest_driver.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu {
namespace {

using testing::DaemonProcess;
using testing::TempDir;

constexpr uint16_t kBdf = 0x0008;
constexpr uint32_t kReconnectMs = 10'000;
constexpr uint64_t kResumeFeatures = COIOMMU_CLIENT_FEATURES_ALL | COIOMMU_CLIENT_FEATURE_RESUME;

Result<DaemonProcess> start_daemon_at(const std::string& socket) {
    return testing::start_daemon_at(
        COIOMMUD_PATH, socket,
        {"--tracing", "off", "--log-level", "warn", "--metrics-address", "none", "--backends", "fake,null"},
        "coiommud-c-resume");
}

std::vector<Gfn> gfns(uint64_t first, uint64_t n) {
    std::vector<Gfn> g;
    for (uint64_t i = 0; i < n; ++i) g.push_back(Gfn{first + i});
    return g;
}

// A VMM written against the C API: its guest's RAM (a DttBuilder guest), one vCPU's trigger, the
// fake container's state, and the three device fds it keeps for a resume.
class CVmm {
public:
    CVmm() { EXPECT_EQ(coiommu_client_new(&c_), 0); }
    ~CVmm() {
        coiommu_client_free(c_);
        for (int fd : {notifymap_, topologymap_, record_, state_}) {
            if (fd >= 0) ::close(fd);
        }
    }
    CVmm(const CVmm&) = delete;
    CVmm& operator=(const CVmm&) = delete;

    [[nodiscard]] coiommu_client* c() const { return c_; }
    [[nodiscard]] std::string error() const { return coiommu_client_last_error(c_); }
    [[nodiscard]] int notifymap() const { return notifymap_; }
    [[nodiscard]] int record() const { return record_; }
    [[nodiscard]] int state() const { return state_; }
    [[nodiscard]] testing::DttBuilder& guest() { return *guest_; }
    [[nodiscard]] int trigger() const { return trigger_->fd(); }

    // Hello (with FEATURE_RESUME) .. SetTriggers, then the guest driver's ACTIVATE. `connect`
    // replaces coiommu_client_connect (another way to the daemon, such as connect_fd).
    void start(const std::string& socket, const std::function<int(coiommu_client_hello*)>& connect = {}) {
        guest_.emplace(testing::must(testing::DttBuilder::create({}), "guest"));
        trigger_.emplace(testing::must(EventFd::create(), "trigger eventfd"));
        ASSERT_EQ(coiommu_client_fake_state_create(4096, &state_), 0);
        coiommu_client_hello hello{};
        const int rc = connect ? connect(&hello)
                               : coiommu_client_connect(c_, socket.c_str(), "c-resume-test", kResumeFeatures, &hello);
        ASSERT_EQ(rc, 0) << error();
        ASSERT_NE(hello.features & COIOMMU_CLIENT_FEATURE_RESUME, 0u);
        ASSERT_EQ(hello.minor, COIOMMU_CLIENT_PROTOCOL_MINOR);
        ASSERT_NO_FATAL_FAILURE(set_memory());
        ASSERT_EQ(coiommu_client_set_topology_resumable(c_, 1, &kBdf, 1, &notifymap_, &topologymap_, &record_), 0)
            << error();
        ASSERT_GE(record_, 0) << "the host record comes with FEATURE_RESUME";
        ASSERT_EQ(coiommu_client_set_backend_fake_shared(c_, COIOMMU_CLIENT_FAKE_LATENCY_NONE, state_, nullptr), 0)
            << error();
        ASSERT_NO_FATAL_FAILURE(set_triggers());
        ASSERT_NO_FATAL_FAILURE(write_reg(COIOMMU_CLIENT_REG_DTT_ROOT, raw(guest_->root())));
        ASSERT_NO_FATAL_FAILURE(write_reg(COIOMMU_CLIENT_REG_DTT_LEVEL, guest_->levels()));
        ASSERT_NO_FATAL_FAILURE(write_reg(COIOMMU_CLIENT_REG_CMD, COIOMMU_CLIENT_CMD_ACTIVATE));
    }

    // After coiommu_client_reconnect: the rest of the resume, in protocol order.
    void resume(coiommu_client_resume_info* info) {
        ASSERT_NO_FATAL_FAILURE(set_memory());
        ASSERT_EQ(coiommu_client_resume(c_, 1, &kBdf, 1, notifymap_, topologymap_, record_, info), 0) << error();
        ASSERT_EQ(coiommu_client_set_backend_fake_shared(c_, COIOMMU_CLIENT_FAKE_LATENCY_NONE, state_, nullptr), 0)
            << error();
        ASSERT_NO_FATAL_FAILURE(set_triggers());
    }

    void write_reg(uint64_t off, uint64_t v) {
        ASSERT_EQ(coiommu_client_mmio_write(c_, off, &v, sizeof v), 0) << off << ": " << error();
    }

    [[nodiscard]] std::vector<dma::FakeMapping> container() const {
        return testing::must(dma::FakeBackend::read_shared_state(state_), "the fake container");
    }

private:
    void set_memory() {
        std::vector<coiommu_client_region> regions;
        for (const RegionLayout& r : guest_->mem().layout()) {
            regions.push_back({r.fd, 0, raw(r.base), r.size, r.fd_offset});
        }
        ASSERT_EQ(coiommu_client_set_memory(c_, regions.data(), regions.size()), 0) << error();
    }
    void set_triggers() {
        const int fd = trigger_->fd();
        bool running = false;
        ASSERT_EQ(coiommu_client_set_triggers(c_, &fd, 1, &running), 0) << error();
        ASSERT_TRUE(running);
    }

    coiommu_client* c_ = nullptr;
    std::optional<testing::DttBuilder> guest_;
    std::optional<EventFd> trigger_;
    int notifymap_ = -1, topologymap_ = -1, record_ = -1, state_ = -1;
};

// The guest's driver on vCPU 0, speaking through the VMM's notifymap and trigger.
std::unique_ptr<emulator::GuestDriver> guest_driver(CVmm& vmm) {
    emulator::GuestDriverConfig gcfg;
    gcfg.mem = &vmm.guest().mem();
    gcfg.dtt = &vmm.guest().dtt();
    gcfg.notifymap_fd = vmm.notifymap();
    gcfg.trigger_fds = {vmm.trigger()};
    return testing::must(emulator::GuestDriver::create(std::move(gcfg)), "guest driver");
}

bool lost(int rc) { return rc == -EPIPE || rc == -ECONNRESET || rc == -ENOTCONN; }

// A daemon on a socket in its own directory and a C VMM for it; each story starts the VMM, kills
// the daemon and brings the next one up on the same socket.
class CClientResumeSession : public ::testing::Test {
protected:
    void SetUp() override {
        dir_.emplace(testing::must(TempDir::create("coiommu-c-resume"), "temp dir"));
        socket_ = dir_->path("coiommud.sock");
        ASSERT_NO_FATAL_FAILURE(start_daemon());
    }

    void start_daemon() { d_.emplace(testing::must(start_daemon_at(socket_), "daemon")); }
    void kill_nine() {
        ASSERT_OK(d_->signal(SIGKILL));
        ASSERT_TRUE(d_->wait_for_exit(std::chrono::seconds(5)).has_value());
        d_.reset();
    }
    // The VMM's reconnect to the next daemon, with the test's patience.
    void reconnect(coiommu_client_hello* hello = nullptr) {
        ASSERT_EQ(coiommu_client_reconnect(vmm_.c(), socket_.c_str(), kReconnectMs, hello), 0) << vmm_.error();
    }

    std::optional<TempDir> dir_;
    std::string socket_;
    std::optional<DaemonProcess> d_;  // declared before vmm_: the VMM goes first
    CVmm vmm_;
};

TEST(CClientResume, WithoutTheFeatureSetTopologyResumableGivesNoRecord) {
    ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommu-c-resume"));
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon_at(dir.path("coiommud.sock")));
    coiommu_client* c = nullptr;
    ASSERT_EQ(coiommu_client_new(&c), 0);
    ASSERT_EQ(coiommu_client_connect(c, d.socket().c_str(), "no-resume", COIOMMU_CLIENT_FEATURES_ALL, nullptr), 0);
    auto guest = testing::must(testing::DttBuilder::create({}), "guest");
    const RegionLayout r = guest.mem().layout().at(0);
    const coiommu_client_region region{r.fd, 0, raw(r.base), r.size, r.fd_offset};
    ASSERT_EQ(coiommu_client_set_memory(c, &region, 1), 0) << coiommu_client_last_error(c);
    int notifymap = -1, topologymap = -1, record = 7;
    ASSERT_EQ(coiommu_client_set_topology_resumable(c, 1, &kBdf, 1, &notifymap, &topologymap, &record), 0);
    EXPECT_GE(notifymap, 0);
    EXPECT_GE(topologymap, 0);
    EXPECT_EQ(record, -1);
    int state = -1;
    ASSERT_EQ(coiommu_client_fake_state_create(64, &state), 0);
    EXPECT_EQ(coiommu_client_set_backend_fake_shared(c, COIOMMU_CLIENT_FAKE_LATENCY_NONE, state, nullptr), -ENOTSUP);
    EXPECT_EQ(coiommu_client_resume(c, 1, &kBdf, 1, notifymap, topologymap, notifymap, nullptr), -ENOTSUP);
    for (int fd : {notifymap, topologymap, state}) ::close(fd);
    coiommu_client_free(c);
}

TEST(CClientResume, FakeStateCreateRefusesAZeroLimit) {
    int fd = 5;
    EXPECT_EQ(coiommu_client_fake_state_create(0, &fd), -EINVAL);
    EXPECT_EQ(fd, -1);
    EXPECT_EQ(coiommu_client_fake_state_create(16, nullptr), -EINVAL);
}

TEST(CClientResume, ReconnectBeforeAnyConnectIsEINVAL) {
    coiommu_client* c = nullptr;
    ASSERT_EQ(coiommu_client_new(&c), 0);
    EXPECT_EQ(coiommu_client_reconnect(c, "/nonexistent.sock", 100, nullptr), -EINVAL);
    EXPECT_NE(std::string(coiommu_client_last_error(c)).find("never connected"), std::string::npos);
    EXPECT_EQ(coiommu_client_reconnect(nullptr, "/nonexistent.sock", 100, nullptr), -EINVAL);
    coiommu_client_free(c);
}

// kill -9 with pages pinned: the next call says the connection is lost; reconnect + resume hand the
// new daemon the record, the pages stay mapped throughout, the guest is served again, and Close
// leaves the container empty.
TEST_F(CClientResumeSession, KillNineKeepsEveryPinAndTheNextDaemonServesTheGuest) {
    ASSERT_NO_FATAL_FAILURE(vmm_.start(socket_));
    auto driver = guest_driver(vmm_);
    ASSERT_OK_AND_ASSIGN(auto vcpu, driver->vcpu({0, kBdf, Gpa{0x100000}, 64}));
    ASSERT_OK(vcpu.map(gfns(0x200, 6)));
    const auto before = vmm_.container();
    ASSERT_FALSE(before.empty());

    ASSERT_NO_FATAL_FAILURE(kill_nine());
    coiommu_client_stats s{};
    const int rc = coiommu_client_get_stats(vmm_.c(), &s, sizeof s);
    EXPECT_TRUE(lost(rc)) << rc << " " << vmm_.error();
    EXPECT_EQ(vmm_.container().size(), before.size()) << "the container outlives the daemon";

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    coiommu_client_hello hello{};
    ASSERT_NO_FATAL_FAILURE(reconnect(&hello));
    EXPECT_NE(hello.features & COIOMMU_CLIENT_FEATURE_RESUME, 0u);
    coiommu_client_resume_info info{};
    ASSERT_NO_FATAL_FAILURE(vmm_.resume(&info));
    EXPECT_EQ(info.pages, 6u);
    EXPECT_EQ(info.in_progress, 0u);
    EXPECT_EQ(info.active, 1u);
    const auto after = vmm_.container();
    ASSERT_EQ(after.size(), before.size()) << "nothing mapped twice, nothing lost";
    for (std::size_t i = 0; i < after.size(); ++i) {
        EXPECT_EQ(raw(after[i].iova), raw(before[i].iova));
        EXPECT_EQ(after[i].size, before[i].size);
    }
    bool mapped = false;
    ASSERT_EQ(coiommu_client_query_mapped(vmm_.c(), 0x200ull << kPageShift, 6 * kPageSize, &mapped), 0) << vmm_.error();
    EXPECT_TRUE(mapped);

    ASSERT_OK_AND_ASSIGN(auto rep, vcpu.map(gfns(0x400, 3)));
    EXPECT_EQ(rep.pages, 3u) << "the new daemon serves the same notifymap and trigger";
    coiommu_client_close_info closed{1, 0};
    ASSERT_EQ(coiommu_client_close(vmm_.c(), &closed), 0) << vmm_.error();
    EXPECT_EQ(closed.dma_entries_after, 0u);
    EXPECT_TRUE(vmm_.container().empty());
}

// The daemon is down when the VMM notices: reconnect keeps trying until it is back.
TEST_F(CClientResumeSession, ReconnectWaitsForTheDaemonToComeBack) {
    ASSERT_NO_FATAL_FAILURE(vmm_.start(socket_));
    ASSERT_NO_FATAL_FAILURE(kill_nine());
    int rc = -1;
    std::chrono::steady_clock::duration took{};
    std::thread reconnecting([&] {
        const auto t0 = std::chrono::steady_clock::now();
        rc = coiommu_client_reconnect(vmm_.c(), socket_.c_str(), kReconnectMs, nullptr);
        took = std::chrono::steady_clock::now() - t0;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    auto d2 = start_daemon_at(socket_);  // this thread: a DaemonProcess belongs to the thread that forked it
    reconnecting.join();
    ASSERT_OK(d2);
    ASSERT_EQ(rc, 0) << vmm_.error();
    EXPECT_GE(took, std::chrono::milliseconds(400)) << "it waited for the daemon";
    coiommu_client_resume_info info{};
    ASSERT_NO_FATAL_FAILURE(vmm_.resume(&info));
    EXPECT_EQ(info.active, 1u);
    EXPECT_EQ(coiommu_client_close(vmm_.c(), nullptr), 0) << vmm_.error();
}

TEST_F(CClientResumeSession, ReconnectGivesUpAfterItsTimeoutWithTheLastErrno) {
    ASSERT_NO_FATAL_FAILURE(vmm_.start(socket_));
    ASSERT_NO_FATAL_FAILURE(kill_nine());
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = coiommu_client_reconnect(vmm_.c(), socket_.c_str(), 300, nullptr);
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_TRUE(rc == -ENOENT || rc == -ECONNREFUSED) << rc << " " << vmm_.error();
    EXPECT_NE(vmm_.error().find("attempts"), std::string::npos) << vmm_.error();
    EXPECT_GE(took, std::chrono::milliseconds(300));
    EXPECT_LT(took, std::chrono::seconds(3));
}

// PARK_UNPIN sent to a daemon that has just died gets no reply; the VMM sends it again after the
// resume and the new daemon counts it once. Then the numbering carried on: a second PARK_UNPIN is a
// new request and counts again.
TEST_F(CClientResumeSession, ARegisterWriteReSentAfterTheResumeIsAppliedOnce) {
    ASSERT_NO_FATAL_FAILURE(vmm_.start(socket_));
    ASSERT_NO_FATAL_FAILURE(kill_nine());
    const uint64_t park = COIOMMU_CLIENT_CMD_PARK_UNPIN;
    const int rc = coiommu_client_mmio_write(vmm_.c(), COIOMMU_CLIENT_REG_CMD, &park, sizeof park);
    ASSERT_TRUE(lost(rc)) << rc << " " << vmm_.error();

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    ASSERT_NO_FATAL_FAILURE(reconnect());
    ASSERT_NO_FATAL_FAILURE(vmm_.resume(nullptr));
    ASSERT_NO_FATAL_FAILURE(vmm_.write_reg(COIOMMU_CLIENT_REG_CMD, park));
    coiommu_client_stats s{};
    ASSERT_EQ(coiommu_client_get_stats(vmm_.c(), &s, sizeof s), 0) << vmm_.error();
    EXPECT_EQ(s.park_count, 1u);
    ASSERT_NO_FATAL_FAILURE(vmm_.write_reg(COIOMMU_CLIENT_REG_CMD, park));
    ASSERT_EQ(coiommu_client_get_stats(vmm_.c(), &s, sizeof s), 0) << vmm_.error();
    EXPECT_EQ(s.park_count, 2u);
    EXPECT_EQ(coiommu_client_close(vmm_.c(), nullptr), 0) << vmm_.error();
}

// Between a VMM and the daemon, one request at a time: relays each request and its reply, fds
// included, except that once armed it swallows the reply to the next MmioWrite and hangs up on the
// VMM: a daemon that applied a write and died before its answer left.
class ReplyDroppingProxy {
public:
    // Errors: socketpair's and connect's errno.
    static Result<std::unique_ptr<ReplyDroppingProxy>> start(const std::string& socket) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return make_error(errno, "socketpair");
        UniqueFd vmm_end(sv[0]), proxy_end(sv[1]);
        COIOMMU_ASSIGN_OR_RETURN(auto daemon, daemon::connect_seqpacket(socket));
        std::unique_ptr<ReplyDroppingProxy> p(new ReplyDroppingProxy(std::move(vmm_end)));
        p->relay_ = std::thread([p = p.get(), vmm = std::move(proxy_end), d = std::move(daemon)]() mutable {
            p->run(std::move(vmm), std::move(d));
        });
        return p;
    }
    ~ReplyDroppingProxy() {
        vmm_end_.reset();  // ends the relay's wait for the VMM
        relay_.join();
    }
    ReplyDroppingProxy(const ReplyDroppingProxy&) = delete;
    ReplyDroppingProxy& operator=(const ReplyDroppingProxy&) = delete;

    // The VMM's end (for coiommu_client_connect_fd, which dups it).
    [[nodiscard]] int vmm_fd() const { return vmm_end_.get(); }
    void arm() { armed_ = true; }
    // Whether a reply was swallowed (read once the VMM saw the hang-up).
    [[nodiscard]] bool dropped() const { return dropped_; }

private:
    explicit ReplyDroppingProxy(UniqueFd vmm_end) : vmm_end_(std::move(vmm_end)) {}

    void run(UniqueFd vmm, UniqueFd d) {
        std::vector<std::byte> buf;
        for (;;) {
            auto req = daemon::recv_message(vmm.get(), buf);
            if (!req || !*req) return;  // the VMM hung up
            if (!forward(d.get(), **req)) return;
            auto rep = daemon::recv_message(d.get(), buf);
            if (!rep || !*rep) return;
            if (armed_ && (*req)->header.type == static_cast<uint16_t>(daemon::proto::MsgType::MmioWrite)) {
                // The daemon's side stays open (a hang-up would be the VMM's disconnect, and the
                // session's teardown): the test kills the daemon with the session still there.
                held_daemon_ = std::move(d);
                dropped_ = true;
                return;  // closes the VMM's side with the reply unsent
            }
            if (!forward(vmm.get(), **rep)) return;
        }
    }
    static bool forward(int to, const daemon::Message& m) {
        std::vector<int> fds;
        for (const UniqueFd& fd : m.fds) fds.push_back(fd.get());
        return daemon::send_message(to, m.header.type, m.header.seq, m.payload, fds, std::chrono::seconds(5))
            .has_value();
    }

    UniqueFd vmm_end_;
    UniqueFd held_daemon_;  // written by the relay before dropped_, read after join
    std::atomic<bool> armed_{false};
    std::atomic<bool> dropped_{false};
    std::thread relay_;
};

// The hard case of a re-sent write: the dead daemon had applied it (and recorded its seq) but its
// reply never came. Re-sent with the same request number, the next daemon answers it without
// applying it again: PARK_UNPIN is counted once, where a new number would count it twice.
TEST_F(CClientResumeSession, AWriteTheDeadDaemonAppliedIsNotAppliedAgainWhenReSent) {
    ASSERT_OK_AND_ASSIGN(auto proxy, ReplyDroppingProxy::start(socket_));
    ASSERT_NO_FATAL_FAILURE(vmm_.start(socket_, [&](coiommu_client_hello* hello) {
        return coiommu_client_connect_fd(vmm_.c(), proxy->vmm_fd(), "c-resume-test", kResumeFeatures, hello);
    }));
    proxy->arm();
    const uint64_t park = COIOMMU_CLIENT_CMD_PARK_UNPIN;
    const int rc = coiommu_client_mmio_write(vmm_.c(), COIOMMU_CLIENT_REG_CMD, &park, sizeof park);
    ASSERT_TRUE(lost(rc)) << rc << " " << vmm_.error();
    ASSERT_TRUE(proxy->dropped());
    ASSERT_NO_FATAL_FAILURE(kill_nine());
    proxy.reset();

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    ASSERT_NO_FATAL_FAILURE(reconnect());
    ASSERT_NO_FATAL_FAILURE(vmm_.resume(nullptr));
    coiommu_client_stats s{};
    ASSERT_EQ(coiommu_client_get_stats(vmm_.c(), &s, sizeof s), 0) << vmm_.error();
    EXPECT_EQ(s.park_count, 1u) << "the record restored the applied PARK_UNPIN";
    ASSERT_NO_FATAL_FAILURE(vmm_.write_reg(COIOMMU_CLIENT_REG_CMD, park));
    ASSERT_EQ(coiommu_client_get_stats(vmm_.c(), &s, sizeof s), 0) << vmm_.error();
    EXPECT_EQ(s.park_count, 1u) << "the re-sent PARK_UNPIN was applied again";
    EXPECT_EQ(coiommu_client_close(vmm_.c(), nullptr), 0) << vmm_.error();
}

}  // namespace
}  // namespace coiommu
