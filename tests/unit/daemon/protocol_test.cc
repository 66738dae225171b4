#include "engine/daemon/protocol.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/daemon/protocol_io.h"
#include "tests/testing/expect.h"
#include "tests/unit/daemon/fd_count.h"

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;

struct Pair {
    UniqueFd a, b;
};

Pair seqpacket_pair() {
    int fds[2] = {-1, -1};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

TEST(Protocol, HeaderIsTwentyFourLittleEndianBytes) {
    proto::Header h;
    h.type = 0x0102;
    h.length = 0x03040506;
    h.seq = 0x0708;
    std::byte raw[sizeof h];
    std::memcpy(raw, &h, sizeof h);
    EXPECT_EQ(sizeof h, 24u);
    EXPECT_EQ(raw[0], std::byte{'C'});  // magic "CIOM"
    EXPECT_EQ(raw[3], std::byte{'M'});
    EXPECT_EQ(raw[6], std::byte{0x02});  // type, low byte first
    EXPECT_EQ(raw[12], std::byte{0x06});
    EXPECT_EQ(raw[16], std::byte{0x08});
}

TEST(Protocol, RequestTypesAreKnownAndRepliesAreNot) {
    EXPECT_EQ(proto::request_type(1), proto::MsgType::Hello);
    EXPECT_EQ(proto::request_type(11), proto::MsgType::Close);
    EXPECT_EQ(proto::request_type(12), proto::MsgType::Resume);
    EXPECT_FALSE(proto::request_type(0));
    EXPECT_FALSE(proto::request_type(13));
    EXPECT_FALSE(proto::request_type(proto::reply_type(proto::MsgType::Hello)));
    EXPECT_FALSE(proto::request_type(static_cast<uint16_t>(proto::MsgType::Error)));
}

TEST(Protocol, MessageWithFdsRoundTrips) {
    auto [a, b] = seqpacket_pair();
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    const int fd = ev.fd();
    const proto::SetTriggersReq req{0, 1};
    ASSERT_OK(send_message(a.get(), static_cast<uint16_t>(proto::MsgType::SetTriggers), 42, as_bytes_of(req),
                           std::span<const int>(&fd, 1), milliseconds(100)));
    std::vector<std::byte> buf;
    ASSERT_OK_AND_ASSIGN(auto m, recv_message(b.get(), buf));
    ASSERT_TRUE(m);
    EXPECT_OK(check_header(m->header, m->payload.size()));
    EXPECT_EQ(m->header.seq, 42u);
    ASSERT_EQ(m->fds.size(), 1u);
    EXPECT_NE(m->fds[0].get(), fd);  // a new descriptor for the same eventfd
    ASSERT_OK(ev.signal());
    ASSERT_OK_AND_ASSIGN(auto v, EventFd::adopt(std::move(m->fds[0])).read());
    EXPECT_EQ(v, 1u);
    auto r = read_wire<proto::SetTriggersReq>(m->payload);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->count, 1u);
}

TEST(Protocol, CheckHeaderRefusesBadMagicVersionFlagsAndLength) {
    proto::Header h;
    h.length = 4;
    EXPECT_OK(check_header(h, 4));
    EXPECT_ERR(check_header(h, 5), EBADMSG);
    proto::Header bad_magic = h;
    bad_magic.magic = 0xdeadbeef;
    EXPECT_ERR(check_header(bad_magic, 4), EPROTO);
    proto::Header v2 = h;
    v2.version = 2;
    EXPECT_ERR(check_header(v2, 4), EPROTONOSUPPORT);
    proto::Header flagged = h;
    flagged.flags = 1;
    EXPECT_ERR(check_header(flagged, 4), EPROTO);
}

TEST(Protocol, OversizedDatagramIsRefusedAsTruncated) {
    auto [a, b] = seqpacket_pair();
    int sndbuf = 1 << 20;
    ASSERT_EQ(::setsockopt(a.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
    std::vector<std::byte> big(proto::kMaxMessageSize + 100);
    ASSERT_GT(::send(a.get(), big.data(), big.size(), 0), 0);
    std::vector<std::byte> buf;
    EXPECT_ERR(recv_message(b.get(), buf), EMSGSIZE);
}

TEST(Protocol, SenderRefusesPayloadAboveTheBound) {
    auto [a, b] = seqpacket_pair();
    std::vector<std::byte> big(proto::kMaxPayload + 1);
    EXPECT_ERR(send_message(a.get(), 1, 1, big, {}, milliseconds(10)), EMSGSIZE);
}

TEST(Protocol, TooManyFdsAreRefusedAndNoneLeaks) {
    auto [a, b] = seqpacket_pair();
    std::vector<EventFd> evs;
    std::vector<int> fds;
    for (std::size_t i = 0; i < proto::kMaxFdsPerMessage + 8; ++i) {
        ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
        fds.push_back(ev.fd());
        evs.push_back(std::move(ev));
    }
    // Raw sendmsg: send_message itself refuses this many.
    std::vector<unsigned char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    proto::Header h;
    iovec iov{&h, sizeof h};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.data();
    mh.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    ASSERT_GT(::sendmsg(a.get(), &mh, 0), 0);
    const std::size_t before = testing::open_fds();
    std::vector<std::byte> buf;
    EXPECT_ERR(recv_message(b.get(), buf), ETOOMANYREFS);
    EXPECT_EQ(testing::open_fds(), before);
}

// This process's RLIMIT_NOFILE lowered so that exactly `room` more descriptors fit, for one test.
// The kernel gives out the lowest free numbers and refuses numbers >= the limit, so the limit is
// the number below which `room` are free (the process may have holes below its highest fd).
class FdLimitForTest {
public:
    explicit FdLimitForTest(int room) {
        EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &saved_), 0);
        int limit = 0;
        for (int free = 0; free < room || ::fcntl(limit, F_GETFD) >= 0; ++limit) {
            if (::fcntl(limit, F_GETFD) < 0) ++free;
        }
        // limit is now the first number past the room-th free one, plus any open ones right after
        // (harmless: they are not free).
        const rlimit low{static_cast<rlim_t>(limit), saved_.rlim_max};
        EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    }
    ~FdLimitForTest() { EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &saved_), 0); }
    FdLimitForTest(const FdLimitForTest&) = delete;
    FdLimitForTest& operator=(const FdLimitForTest&) = delete;

private:
    rlimit saved_{};
};

TEST(Protocol, FdsThisProcessHasNoRoomForAreEmfileNotTooManyRefs) {
    auto [a, b] = seqpacket_pair();
    std::vector<EventFd> evs;
    std::vector<int> fds;
    for (std::size_t i = 0; i < proto::kMaxFdsPerMessage; ++i) {  // as many as a message may carry
        ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
        fds.push_back(ev.fd());
        evs.push_back(std::move(ev));
    }
    ASSERT_OK(send_message(a.get(), static_cast<uint16_t>(proto::MsgType::SetTriggers), 1, {}, fds, milliseconds(100)));
    const std::size_t before = testing::open_fds();
    std::vector<std::byte> buf;
    Result<std::optional<Message>> in;
    {
        const FdLimitForTest low(10);  // room for 10 of the 64
        in = recv_message(b.get(), buf);
    }
    ASSERT_FALSE(in);
    EXPECT_EQ(in.error().code, EMFILE) << in.error().message();
    EXPECT_NE(in.error().context.find("only 10 fds"), std::string::npos) << in.error().context;
    EXPECT_NE(in.error().context.find("RLIMIT_NOFILE"), std::string::npos) << in.error().context;
    EXPECT_EQ(testing::open_fds(), before);
}

class RefuseFds final : public ReceiveCheck {
public:
    Status check(const Message& msg) override {
        ++seen;
        if (!msg.fds.empty()) return make_error(EMFILE, "no fds here");
        return ok();
    }
    int seen = 0;
};

TEST(Protocol, AReceiveCheckRefusesAMessageOnItsThreadAndItsFdsAreClosed) {
    auto [a, b] = seqpacket_pair();
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    const int fd = ev.fd();
    const auto type = static_cast<uint16_t>(proto::MsgType::SetTriggers);
    ASSERT_OK(send_message(a.get(), type, 1, {}, std::span<const int>(&fd, 1), milliseconds(100)));
    ASSERT_OK(send_message(a.get(), type, 2, {}, {}, milliseconds(100)));
    ASSERT_OK(send_message(a.get(), type, 3, {}, std::span<const int>(&fd, 1), milliseconds(100)));
    std::vector<std::byte> buf;
    RefuseFds check;
    {
        const ScopedReceiveCheck scope(check);
        const std::size_t before = testing::open_fds();
        EXPECT_ERR(recv_message(b.get(), buf), EMFILE);
        EXPECT_EQ(testing::open_fds(), before);
        ASSERT_OK_AND_ASSIGN(auto second, recv_message(b.get(), buf));
        ASSERT_TRUE(second);
        EXPECT_EQ(second->header.seq, 2u);
        // Another thread has no check.
        const int sock = b.get();  // (a structured binding cannot be captured before C++20 in clang 14)
        std::thread([sock] {
            std::vector<std::byte> other;
            auto third = recv_message(sock, other);
            EXPECT_TRUE(third && *third && (*third)->fds.size() == 1);
        }).join();
    }
    EXPECT_EQ(check.seen, 2);
}

TEST(Protocol, ShortDatagramIsBadMessage) {
    auto [a, b] = seqpacket_pair();
    const char junk[5] = {1, 2, 3, 4, 5};
    ASSERT_EQ(::send(a.get(), junk, sizeof junk, 0), 5);
    std::vector<std::byte> buf;
    EXPECT_ERR(recv_message(b.get(), buf), EBADMSG);
}

TEST(Protocol, PeerCloseIsEndOfStream) {
    auto [a, b] = seqpacket_pair();
    a.reset();
    std::vector<std::byte> buf;
    ASSERT_OK_AND_ASSIGN(auto m, recv_message(b.get(), buf));
    EXPECT_FALSE(m);
}

TEST(Protocol, SendTimesOutWhenThePeerDoesNotRead) {
    auto [a, b] = seqpacket_pair();
    std::vector<std::byte> payload(16 * 1024);
    Status st = ok();
    for (int i = 0; i < 10'000 && st; ++i) st = send_message(a.get(), 1, 1, payload, {}, milliseconds(20));
    EXPECT_ERR(st, ETIMEDOUT);
}

TEST(Protocol, ErrorPayloadRoundTripsAndIsBounded) {
    const auto p = encode_error(EINVAL, 3, std::string(5000, 'x'));
    ASSERT_OK_AND_ASSIGN(auto e, decode_error(p));
    EXPECT_EQ(e.code, EINVAL);
    EXPECT_EQ(e.request_type, 3);
    EXPECT_EQ(e.text.size(), proto::kMaxErrorText);
    std::vector<std::byte> cut(p.begin(), p.begin() + 20);
    EXPECT_ERR(decode_error(cut), EBADMSG);
}

TEST(Protocol, ReadWireRefusesShortPayloads) {
    std::vector<std::byte> p(7);
    EXPECT_FALSE(read_wire<proto::SetMemoryReq>(p));
    EXPECT_FALSE(read_wire<uint32_t>(p, 5));
    EXPECT_TRUE(read_wire<uint32_t>(p, 3));
}

}  // namespace
}  // namespace coiommu::daemon
