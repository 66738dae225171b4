// The session state machine over a real SOCK_SEQPACKET socketpair, with real memfds and eventfds:
// the setup sequence, BAR0 forwarding, and every class of bad input (malformed, truncated,
// oversized, out of order, missing or extra fds, wrong versions, disconnects, slow peers) ->
// an Error reply or a closed session, and no fd left behind.
#include "engine/daemon/session.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "engine/core/spec.h"
#include "engine/daemon/client.h"
#include "tests/testing/expect.h"
#include "tests/unit/daemon/fd_count.h"

namespace coiommu::daemon {
namespace {

using proto::MsgType;
using std::chrono::milliseconds;

constexpr uint32_t kVcpus = 2;
constexpr uint16_t kBdf = 0x0008;

class SessionTest : public ::testing::Test {
protected:
    void SetUp() override { fds_before_ = testing::open_fds(); }

    void TearDown() override {
        finish();
        client_.reset();
        mem_ = GuestMemory();
        dev_ = DeviceMemfds();
        triggers_.clear();
        EXPECT_EQ(testing::open_fds(), fds_before_) << "fd leak";
    }

    void start(SessionPolicy policy = {}, SessionLimits limits = {}) {
        int sv[2] = {-1, -1};
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
        server_fd_ = UniqueFd(sv[0]);
        client_ = Client::adopt(UniqueFd(sv[1]));
        client_->set_timeout(milliseconds(5000));
        auto stop = EventFd::create();
        ASSERT_TRUE(stop);
        stop_ = std::move(*stop);
        session_ = std::make_unique<Session>(7, std::move(policy));
        thread_ = std::thread([this, limits] {
            end_ = serve(*session_, server_fd_.get(), stop_.fd(), limits);
            server_fd_.reset();  // as the server does: the VMM sees end of stream at once
        });
    }

    SessionEnd finish() {
        if (thread_.joinable()) {
            (void)stop_.signal();
            thread_.join();
        }
        server_fd_.reset();
        session_.reset();
        stop_ = EventFd();
        return end_;
    }

    // Waits for serve() to return on its own (the session closed itself).
    SessionEnd wait_end() {
        if (thread_.joinable()) thread_.join();
        return end_;
    }

    // The session closed its end: the next receive sees end of stream.
    void expect_closed() {
        auto m = client_->receive();
        ASSERT_TRUE(m) << m.error().message();
        EXPECT_FALSE(*m) << "the session sent another message instead of closing";
    }

    void setup_memory() {
        const RegionSpec r{Gpa{0}, uint64_t{64} << 20};
        auto mem = GuestMemory::create(std::span<const RegionSpec>(&r, 1));
        ASSERT_TRUE(mem);
        mem_ = std::move(*mem);
        ASSERT_OK(client_->set_memory(mem_));
    }

    void setup_running() {
        ASSERT_OK(client_->hello("test", proto::kAllFeatures));
        setup_memory();
        const uint16_t bdf = kBdf;
        ASSERT_OK_AND_ASSIGN(dev_, client_->set_topology(kVcpus, std::span<const uint16_t>(&bdf, 1)));
        ASSERT_OK(client_->set_backend_fake({}));
        std::vector<int> fds;
        triggers_.clear();
        for (uint32_t i = 0; i < kVcpus; ++i) {
            ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
            fds.push_back(ev.fd());
            triggers_.push_back(std::move(ev));
        }
        ASSERT_OK_AND_ASSIGN(bool running, client_->set_triggers(fds));
        ASSERT_TRUE(running);
    }

    Status write_reg(uint64_t off, uint64_t v) {
        std::byte b[8];
        std::memcpy(b, &v, 8);
        return client_->mmio_write(off, b);
    }

    std::size_t fds_before_ = 0;
    UniqueFd server_fd_;
    EventFd stop_;
    std::unique_ptr<Session> session_;
    std::unique_ptr<Client> client_;
    std::thread thread_;
    SessionEnd end_ = SessionEnd::IoError;
    GuestMemory mem_;
    DeviceMemfds dev_;
    std::vector<EventFd> triggers_;
};

TEST_F(SessionTest, SetupReachesRunningAndCloseUnmapsEverything) {
    start();
    ASSERT_OK_AND_ASSIGN(auto h, client_->hello("vmm", proto::kAllFeatures));
    EXPECT_EQ(h.version, proto::kVersion);
    EXPECT_EQ(h.session_id, 7u);
    EXPECT_EQ(session_->state(), SessionState::AwaitMemory);
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK_AND_ASSIGN(auto dev, client_->set_topology(kVcpus, std::span<const uint16_t>(&bdf, 1)));
    // The topologymap the VMM maps at BAR4 lists our endpoint.
    uint16_t topo[2] = {};
    ASSERT_EQ(::pread(dev.topologymap.get(), topo, sizeof topo, 0), static_cast<ssize_t>(sizeof topo));
    EXPECT_EQ(topo[0], 1);
    EXPECT_EQ(topo[1], kBdf);
    ASSERT_OK_AND_ASSIGN(auto b, client_->set_backend_fake({proto::FakeLatency::None, 1000}));
    EXPECT_EQ(b.name, "fake");
    EXPECT_EQ(b.entry_limit, 1000u);
    std::vector<int> fds;
    for (uint32_t i = 0; i < kVcpus; ++i) {
        ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
        fds.push_back(ev.fd());
        triggers_.push_back(std::move(ev));
    }
    ASSERT_OK_AND_ASSIGN(bool running, client_->set_triggers(fds));
    EXPECT_TRUE(running);
    EXPECT_EQ(session_->state(), SessionState::Running);
    ASSERT_OK_AND_ASSIGN(auto s, client_->stats());
    EXPECT_EQ(s.head.active, 0u);
    EXPECT_EQ(s.snapshot.gauges.vcpus, kVcpus);
    EXPECT_EQ(s.snapshot.gauges.guest_ram_bytes, uint64_t{64} << 20);
    ASSERT_OK_AND_ASSIGN(auto c, client_->close());
    EXPECT_EQ(c.dma_entries_after, 0u);
    expect_closed();
    EXPECT_EQ(wait_end(), SessionEnd::Closed);
}

TEST_F(SessionTest, Bar0RegistersAreForwardedSynchronously) {
    start();
    setup_running();
    ASSERT_OK(write_reg(core::kRegDttRoot, 0x10000));
    std::byte back[8] = {};
    ASSERT_OK(client_->mmio_read(core::kRegDttRoot, back));
    uint64_t v = 0;
    std::memcpy(&v, back, 8);
    EXPECT_EQ(v, 0x10000u);
    ASSERT_OK(write_reg(core::kRegDttLevel, 4));
    ASSERT_OK(write_reg(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)));
    ASSERT_OK_AND_ASSIGN(auto s, client_->stats());
    EXPECT_EQ(s.head.active, 1u);  // ACTIVATE reached the engine before the reply
}

TEST_F(SessionTest, TrappedTriggerByteSignalsTheVmmEventfd) {
    start();
    setup_running();
    // Before ACTIVATE the engine does not consume triggers: the signal stays visible.
    const std::byte one{1};
    ASSERT_OK(client_->mmio_write(core::kRegTriggerBase + 1, std::span<const std::byte>(&one, 1)));
    ASSERT_OK_AND_ASSIGN(bool sig, triggers_[1].is_signaled());
    EXPECT_TRUE(sig);
}

TEST_F(SessionTest, MmioOutsideBar0IsAnErrorButTheSessionGoesOn) {
    start();
    setup_running();
    std::byte b[8] = {};
    EXPECT_ERR(client_->mmio_read(core::kMmioBarSize, b), EINVAL);
    ASSERT_OK(client_->mmio_read(core::kRegCmd, b));
}

TEST_F(SessionTest, BalloonBeforeActivateIsRefusedForThatRequestOnly) {
    start();
    setup_running();
    const GfnRange r{Gfn{0}, 16};
    EXPECT_ERR(client_->balloon_unpin(std::span<const GfnRange>(&r, 1)), EAGAIN);
    EXPECT_OK(client_->stats());
}

TEST_F(SessionTest, QueryMappedAnswersForTheFakeBackend) {
    start();
    setup_running();
    ASSERT_OK_AND_ASSIGN(bool mapped, client_->query_mapped(Iova{0}, 4096));
    EXPECT_FALSE(mapped);
}

TEST_F(SessionTest, OutOfOrderMessageGetsEprotoAndClosesTheSession) {
    start();
    const uint16_t bdf = kBdf;
    EXPECT_ERR(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)), EPROTO);
    expect_closed();
    EXPECT_EQ(wait_end(), SessionEnd::ProtocolError);
}

TEST_F(SessionTest, SecondHelloIsOutOfOrder) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    EXPECT_ERR(client_->hello("b", 0), EPROTO);
    expect_closed();
}

TEST_F(SessionTest, RunningMessageDuringSetupIsOutOfOrder) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    EXPECT_ERR(client_->stats(), EPROTO);
    expect_closed();
}

TEST_F(SessionTest, WrongHeaderVersionIsRefused) {
    start();
    proto::Header h;
    h.version = 9;
    h.type = static_cast<uint16_t>(MsgType::Hello);
    h.length = sizeof(proto::HelloReq);
    std::vector<std::byte> d(sizeof h + sizeof(proto::HelloReq));
    std::memcpy(d.data(), &h, sizeof h);
    ASSERT_OK(client_->send_raw(d));
    ASSERT_OK_AND_ASSIGN(auto m, client_->receive());
    ASSERT_TRUE(m);
    ASSERT_EQ(m->header.type, static_cast<uint16_t>(MsgType::Error));
    ASSERT_OK_AND_ASSIGN(auto e, decode_error(m->payload));
    EXPECT_EQ(e.code, EPROTONOSUPPORT);
    expect_closed();
}

TEST_F(SessionTest, UnsupportedVersionRangeInHelloIsRefused) {
    start();
    proto::HelloReq req;
    req.min_version = 2;
    req.max_version = 3;
    EXPECT_ERR(client_->call(MsgType::Hello, as_bytes_of(req)), EPROTONOSUPPORT);
    expect_closed();
}

TEST_F(SessionTest, UnknownMessageTypeIsRefused) {
    start();
    EXPECT_ERR(client_->call(static_cast<MsgType>(99), {}), EPROTO);
    expect_closed();
}

TEST_F(SessionTest, TruncatedHelloIsBadMessage) {
    start();
    std::byte half[10] = {};
    EXPECT_ERR(client_->call(MsgType::Hello, half), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, DatagramShorterThanAHeaderClosesTheSession) {
    start();
    const std::byte junk[7] = {};
    ASSERT_OK(client_->send_raw(junk));
    ASSERT_OK_AND_ASSIGN(auto m, client_->receive());
    ASSERT_TRUE(m);
    ASSERT_OK_AND_ASSIGN(auto e, decode_error(m->payload));
    EXPECT_EQ(e.code, EBADMSG);
    expect_closed();
    EXPECT_EQ(wait_end(), SessionEnd::ProtocolError);
}

TEST_F(SessionTest, OversizedMessageClosesTheSession) {
    start();
    int sndbuf = 1 << 20;
    ASSERT_EQ(::setsockopt(client_->fd(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
    std::vector<std::byte> big(proto::kMaxMessageSize * 2);
    ASSERT_OK(client_->send_raw(big));
    ASSERT_OK_AND_ASSIGN(auto m, client_->receive());
    ASSERT_TRUE(m);
    ASSERT_OK_AND_ASSIGN(auto e, decode_error(m->payload));
    EXPECT_EQ(e.code, EMSGSIZE);
    expect_closed();
}

TEST_F(SessionTest, HeaderLengthDisagreeingWithTheDatagramIsBadMessage) {
    start();
    proto::Header h;
    h.type = static_cast<uint16_t>(MsgType::Hello);
    h.length = 1000;  // but only sizeof(HelloReq) follow
    std::vector<std::byte> d(sizeof h + sizeof(proto::HelloReq));
    std::memcpy(d.data(), &h, sizeof h);
    ASSERT_OK(client_->send_raw(d));
    ASSERT_OK_AND_ASSIGN(auto m, client_->receive());
    ASSERT_TRUE(m);
    ASSERT_OK_AND_ASSIGN(auto e, decode_error(m->payload));
    EXPECT_EQ(e.code, EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, ExtraFdOnHelloIsRefusedAndClosed) {
    start();
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    const int fd = ev.fd();
    proto::HelloReq req;
    EXPECT_ERR(client_->call(MsgType::Hello, as_bytes_of(req), std::span<const int>(&fd, 1)), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, SetMemoryWithoutItsFdsIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{1, 0});
    append_wire(p, proto::MemRegionWire{0, 1 << 20, 0});
    EXPECT_ERR(client_->call(MsgType::SetMemory, p), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, SetMemoryWithMoreFdsThanRegionsIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    const RegionSpec r{Gpa{0}, 1 << 20};
    ASSERT_OK_AND_ASSIGN(auto mem, GuestMemory::create(std::span<const RegionSpec>(&r, 1)));
    const int fd = mem.layout()[0].fd;
    std::vector<int> fds{fd, fd};
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{1, 0});
    append_wire(p, proto::MemRegionWire{0, 1 << 20, 0});
    EXPECT_ERR(client_->call(MsgType::SetMemory, p, fds), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, SetMemoryLengthMustMatchTheCount) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{2, 0});
    append_wire(p, proto::MemRegionWire{0, 1 << 20, 0});
    EXPECT_ERR(client_->call(MsgType::SetMemory, p), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, SetMemoryWithTooManyRegionsIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{proto::kMaxRegions + 1, 0});
    EXPECT_ERR(client_->call(MsgType::SetMemory, p), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, UnsealedMemfdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    UniqueFd memfd(::memfd_create("unsealed", MFD_CLOEXEC));
    ASSERT_TRUE(memfd);
    ASSERT_EQ(::ftruncate(memfd.get(), 1 << 20), 0);
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{1, 0});
    append_wire(p, proto::MemRegionWire{0, 1 << 20, 0});
    const int fd = memfd.get();
    EXPECT_ERR(client_->call(MsgType::SetMemory, p, std::span<const int>(&fd, 1)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, GuestMemoryBeyondThePolicyIsRefused) {
    SessionPolicy p;
    p.max_guest_end = uint64_t{32} << 20;
    start(p);
    ASSERT_OK(client_->hello("a", 0));
    const RegionSpec r{Gpa{0}, uint64_t{64} << 20};
    ASSERT_OK_AND_ASSIGN(auto mem, GuestMemory::create(std::span<const RegionSpec>(&r, 1)));
    EXPECT_ERR(client_->set_memory(mem), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, RegionLargerThanItsMemfdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    const RegionSpec r{Gpa{0}, 1 << 20};
    ASSERT_OK_AND_ASSIGN(auto mem, GuestMemory::create(std::span<const RegionSpec>(&r, 1)));
    std::vector<std::byte> p;
    append_wire(p, proto::SetMemoryReq{1, 0});
    append_wire(p, proto::MemRegionWire{0, 16 << 20, 0});
    const int fd = mem.layout()[0].fd;
    EXPECT_ERR(client_->call(MsgType::SetMemory, p, std::span<const int>(&fd, 1)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, TooManyVcpusIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    setup_memory();
    const uint16_t bdf = kBdf;
    EXPECT_ERR(client_->set_topology(5000, std::span<const uint16_t>(&bdf, 1)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, BackendNotAllowedByPolicyIsRefused) {
    SessionPolicy p;
    p.features = proto::kFeatureVfioBackend;
    start(p);
    ASSERT_OK_AND_ASSIGN(auto h, client_->hello("a", proto::kAllFeatures));
    EXPECT_EQ(h.features, proto::kFeatureVfioBackend);
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    EXPECT_ERR(client_->set_backend_fake({}), EPERM);
    expect_closed();
}

TEST_F(SessionTest, VfioBackendWithoutContainerFdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Vfio);
    EXPECT_ERR(client_->call(MsgType::SetBackend, as_bytes_of(req)), EBADMSG);
    expect_closed();
}

TEST_F(SessionTest, VfioBackendWithANonContainerFdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    // An eventfd is no VFIO container: GET_INFO fails.
    EXPECT_FALSE(client_->set_backend_vfio(UniqueFd(::dup(ev.fd()))));
    expect_closed();
}

// ---- the iommufd backend (protocol 1.1) -------------------------------------------------------

TEST_F(SessionTest, HelloReportsMinorVersionTwoWithTheIommufdFeature) {
    start();
    ASSERT_OK_AND_ASSIGN(auto h, client_->hello("a", proto::kAllFeatures));
    EXPECT_EQ(h.version, 1);
    EXPECT_EQ(h.minor, 2);
    EXPECT_NE(h.features & proto::kFeatureIommufdBackend, 0u);
    EXPECT_EQ(h.features & proto::kFeatureResume, 0u) << "resume is opt-in: not asked for, not offered";
}

TEST_F(SessionTest, IommufdBackendNotAllowedByPolicyIsRefusedByTheClient) {
    SessionPolicy p;
    p.features = proto::kFeatureVfioBackend;
    start(p);
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    // Not offered in Hello: the client does not send it at all.
    EXPECT_ERR(client_->set_backend_iommufd(UniqueFd(::dup(ev.fd())), 1), ENOTSUP);
}

TEST_F(SessionTest, IommufdBackendNotAllowedByPolicyIsRefusedByTheDaemon) {
    SessionPolicy p;
    p.features = proto::kFeatureVfioBackend;
    start(p);
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Iommufd);
    req.param = 1;
    const int fd = ev.fd();
    EXPECT_ERR(client_->call(MsgType::SetBackend, as_bytes_of(req), std::span<const int>(&fd, 1)), EPERM);
    expect_closed();
}

TEST_F(SessionTest, IommufdBackendWithoutAnIoasIdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    EXPECT_ERR(client_->set_backend_iommufd(UniqueFd(::dup(ev.fd())), 0), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, IommufdBackendWithANonIommufdFdIsRefusedWithTheKernelsErrno) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    // IOMMU_IOAS_IOVA_RANGES on an eventfd: ENOTTY.
    EXPECT_ERR(client_->set_backend_iommufd(UniqueFd(::dup(ev.fd())), 1), ENOTTY);
    expect_closed();
}

TEST_F(SessionTest, UnknownBackendKindIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    proto::SetBackendReq req;
    req.kind = 77;
    EXPECT_ERR(client_->call(MsgType::SetBackend, as_bytes_of(req)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, TriggerThatIsNotAnEventfdIsRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(1, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK(client_->set_backend_fake({}));
    int pipefd[2];
    ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
    UniqueFd r(pipefd[0]), w(pipefd[1]);
    const int fd = r.get();
    EXPECT_ERR(client_->set_triggers(std::span<const int>(&fd, 1)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, TriggersOutOfSequenceAreRefused) {
    start();
    ASSERT_OK(client_->hello("a", proto::kAllFeatures));
    setup_memory();
    const uint16_t bdf = kBdf;
    ASSERT_OK(client_->set_topology(2, std::span<const uint16_t>(&bdf, 1)));
    ASSERT_OK(client_->set_backend_fake({}));
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    const int fd = ev.fd();
    proto::SetTriggersReq req{1, 1};  // vCPU 0 first
    EXPECT_ERR(client_->call(MsgType::SetTriggers, as_bytes_of(req), std::span<const int>(&fd, 1)), EINVAL);
    expect_closed();
}

TEST_F(SessionTest, CloseDuringSetupIsOrderly) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    setup_memory();
    ASSERT_OK(client_->close());
    expect_closed();
    EXPECT_EQ(wait_end(), SessionEnd::Closed);
}

TEST_F(SessionTest, PeerDisconnectMidSetupTearsDown) {
    start();
    ASSERT_OK(client_->hello("a", 0));
    setup_memory();
    client_.reset();  // the VMM dies
    EXPECT_EQ(wait_end(), SessionEnd::PeerGone);
    EXPECT_EQ(session_->state(), SessionState::Closed);
}

TEST_F(SessionTest, PeerDisconnectWhileRunningStopsTheEngine) {
    start();
    setup_running();
    ::shutdown(client_->fd(), SHUT_RDWR);
    EXPECT_EQ(wait_end(), SessionEnd::PeerGone);
    EXPECT_EQ(session_->state(), SessionState::Closed);
    EXPECT_FALSE(session_->stats());
}

TEST_F(SessionTest, SilentPeerHitsTheSetupTimeout) {
    SessionLimits l;
    l.setup_timeout = milliseconds(200);
    start({}, l);
    ASSERT_OK(client_->hello("slow", 0));  // ... and then nothing
    EXPECT_EQ(wait_end(), SessionEnd::SetupTimeout);
    expect_closed();
}

TEST_F(SessionTest, PeerThatDoesNotReadRepliesIsClosedAfterTheIoTimeout) {
    SessionLimits l;
    l.io_timeout = milliseconds(200);
    start({}, l);
    setup_running();
    int small = 4096;
    ASSERT_EQ(::setsockopt(server_fd_.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    // Fire GetStats requests without reading a single reply.
    proto::Header h;
    h.type = static_cast<uint16_t>(MsgType::GetStats);
    for (int i = 0; i < 2000; ++i) {
        if (::send(client_->fd(), &h, sizeof h, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) break;
    }
    EXPECT_EQ(wait_end(), SessionEnd::IoError);
}

TEST_F(SessionTest, ShutdownSignalEndsARunningSession) {
    start();
    setup_running();
    EXPECT_EQ(finish(), SessionEnd::Stopped);
}

}  // namespace
}  // namespace coiommu::daemon
