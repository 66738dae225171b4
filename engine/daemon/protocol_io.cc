#include "engine/daemon/protocol_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

namespace coiommu::daemon {

namespace proto {

std::optional<MsgType> request_type(uint16_t raw) {
    switch (raw) {
        case 1:
        case 2:
        case 3:
        case 4:
        case 5:
        case 6:
        case 7:
        case 8:
        case 9:
        case 10:
        case 11:
        case 12: return static_cast<MsgType>(raw);
        default: return std::nullopt;
    }
}

std::string_view to_string(MsgType t) {
    switch (t) {
        case MsgType::Hello: return "Hello";
        case MsgType::SetMemory: return "SetMemory";
        case MsgType::SetTopology: return "SetTopology";
        case MsgType::SetBackend: return "SetBackend";
        case MsgType::SetTriggers: return "SetTriggers";
        case MsgType::MmioRead: return "MmioRead";
        case MsgType::MmioWrite: return "MmioWrite";
        case MsgType::BalloonUnpin: return "BalloonUnpin";
        case MsgType::GetStats: return "GetStats";
        case MsgType::QueryMapped: return "QueryMapped";
        case MsgType::Close: return "Close";
        case MsgType::Resume: return "Resume";
        case MsgType::Error: return "Error";
    }
    return "unknown";
}

}  // namespace proto

namespace {

using Clock = std::chrono::steady_clock;

// Room for kMaxFdsPerMessage ints in one SCM_RIGHTS control message.
constexpr std::size_t kControlSize = CMSG_SPACE(sizeof(int) * proto::kMaxFdsPerMessage);

// Takes ownership of every fd in the control messages at once, so that no early return leaks one.
void collect_fds(msghdr& mh, std::vector<UniqueFd>& out) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const auto* data = CMSG_DATA(c);
        for (std::size_t i = 0; i < n; ++i) {
            int fd = -1;
            std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
            out.emplace_back(fd);
        }
    }
}

// The kernel sets MSG_CTRUNC when the fds do not fit the control buffer (more than
// kMaxFdsPerMessage: it installs exactly that many) and when it cannot install one (this process
// is at RLIMIT_NOFILE, or the system at fs.file-max: fewer arrive, maybe none). `installed` fds of
// the message arrived and are still open, so a probe for one more descriptor (a dup of `sock`)
// fails the same way when the cause was the limit.
Error truncated_fds_error(int sock, std::size_t installed) {
    if (installed >= proto::kMaxFdsPerMessage) {
        return Error{ETOOMANYREFS, fmt::format("more than {} fds in one message", proto::kMaxFdsPerMessage)};
    }
    const UniqueFd probe(::fcntl(sock, F_DUPFD_CLOEXEC, 0));
    const int code = !probe && errno == ENFILE ? ENFILE : EMFILE;
    rlimit lim{};
    const std::string limit = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY
                                  ? fmt::format("RLIMIT_NOFILE {}", lim.rlim_cur)
                                  : std::string("RLIMIT_NOFILE");
    return Error{code, fmt::format("out of file descriptors: only {} fds of the message could be received ({}{})",
                                   installed, code == ENFILE ? "the system's file table is full, " : "", limit)};
}

// The check of this thread's recv_message, if any (ScopedReceiveCheck).
thread_local ReceiveCheck* t_receive_check = nullptr;

}  // namespace

Status attach_fds(msghdr& mh, std::span<unsigned char> control, std::span<const int> fds) {
    if (fds.empty()) return ok();
    if (control.size() < CMSG_SPACE(sizeof(int) * fds.size())) return make_error(EMSGSIZE, "too many fds");
    std::memset(control.data(), 0, control.size());
    mh.msg_control = control.data();
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    if (c == nullptr) return make_error(EMSGSIZE, "no room for SCM_RIGHTS");
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    return ok();
}

Status check_header(const proto::Header& h, std::size_t payload_bytes) {
    if (h.magic != proto::kMagic) return make_error(EPROTO, fmt::format("bad magic {:#x}", h.magic));
    if (h.version != proto::kVersion) {
        return make_error(EPROTONOSUPPORT, fmt::format("protocol version {} not supported (this daemon speaks {})",
                                                       h.version, proto::kVersion));
    }
    if (h.flags != 0) return make_error(EPROTO, fmt::format("reserved flags {:#x} set", h.flags));
    if (h.length != payload_bytes) {
        return make_error(EBADMSG,
                          fmt::format("header says {} payload bytes, the datagram has {}", h.length, payload_bytes));
    }
    return ok();
}

Status send_message(int sock, uint16_t type, uint64_t seq, std::span<const std::byte> payload, std::span<const int> fds,
                    std::chrono::milliseconds timeout) {
    if (payload.size() > proto::kMaxPayload) {
        return make_error(EMSGSIZE, fmt::format("payload of {} bytes exceeds {}", payload.size(), proto::kMaxPayload));
    }
    if (fds.size() > proto::kMaxFdsPerMessage) {
        return make_error(EMSGSIZE, fmt::format("{} fds exceed {}", fds.size(), proto::kMaxFdsPerMessage));
    }
    proto::Header h;
    h.type = type;
    h.length = static_cast<uint32_t>(payload.size());
    h.seq = seq;
    iovec iov[2];
    iov[0].iov_base = &h;
    iov[0].iov_len = sizeof h;
    iov[1].iov_base = const_cast<std::byte*>(payload.data());
    iov[1].iov_len = payload.size();
    alignas(cmsghdr) unsigned char control[kControlSize];
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = payload.empty() ? 1 : 2;
    if (auto st = attach_fds(mh, control, fds); !st) return st;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        const int err = errno;
        if (n >= 0) return ok();  // SEQPACKET: all or nothing
        if (err == EINTR) continue;
        if (err != EAGAIN && err != EWOULDBLOCK) return make_error(err, "sendmsg");
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return make_error(ETIMEDOUT, "send: the peer does not read its socket");
        pollfd p{sock, POLLOUT, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
        const int perr = errno;
        if (r < 0 && perr != EINTR) return make_error(perr, "poll (send)");
    }
}

Result<std::optional<Message>> recv_message(int sock, std::vector<std::byte>& buf) {
    buf.resize(proto::kMaxMessageSize);
    iovec iov{buf.data(), buf.size()};
    alignas(cmsghdr) unsigned char control[kControlSize];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = -1;
    int err = 0;
    do {
        n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        err = errno;
    } while (n < 0 && err == EINTR);
    if (n < 0) return make_error(err, "recvmsg");
    Message m;
    collect_fds(mh, m.fds);  // owned before any check can return
    if ((mh.msg_flags & MSG_CTRUNC) != 0) return coiommu::unexpected(truncated_fds_error(sock, m.fds.size()));
    if ((mh.msg_flags & MSG_TRUNC) != 0) {
        return make_error(EMSGSIZE, fmt::format("message larger than {} bytes", proto::kMaxMessageSize));
    }
    if (n == 0 && m.fds.empty()) return std::optional<Message>{};  // orderly shutdown by the peer
    const auto got = static_cast<std::size_t>(n);
    if (got < sizeof(proto::Header)) {
        return make_error(EBADMSG, fmt::format("datagram of {} bytes is shorter than a header", got));
    }
    std::memcpy(&m.header, buf.data(), sizeof(proto::Header));
    m.payload.assign(buf.begin() + sizeof(proto::Header), buf.begin() + static_cast<std::ptrdiff_t>(got));
    if (t_receive_check != nullptr) COIOMMU_TRY(t_receive_check->check(m));
    return std::optional<Message>(std::move(m));
}

ScopedReceiveCheck::ScopedReceiveCheck(ReceiveCheck& check) : previous_(t_receive_check) { t_receive_check = &check; }

ScopedReceiveCheck::~ScopedReceiveCheck() { t_receive_check = previous_; }

Result<bool> wait_readable(int sock, int stop_fd, std::chrono::milliseconds timeout, bool* stopped) {
    if (stopped != nullptr) *stopped = false;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        pollfd p[2] = {{sock, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int wait_ms = -1;
        if (timeout.count() >= 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            wait_ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, INT32_MAX));  // 0: just look
        }
        const int r = ::poll(p, stop_fd >= 0 ? 2 : 1, wait_ms);
        const int err = errno;
        if (r < 0) {
            if (err == EINTR) continue;
            return make_error(err, "poll");
        }
        if (r == 0) return false;
        if (stop_fd >= 0 && (p[1].revents & POLLIN) != 0) {
            if (stopped != nullptr) *stopped = true;
            return false;
        }
        if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) return true;
    }
}

std::vector<std::byte> encode_error(int code, uint16_t request_type, std::string_view text) {
    if (text.size() > proto::kMaxErrorText) text = text.substr(0, proto::kMaxErrorText);
    proto::ErrorRep e;
    e.code = code;
    e.request_type = request_type;
    e.text_len = static_cast<uint16_t>(text.size());
    std::vector<std::byte> out;
    append_wire(out, e);
    const std::size_t at = out.size();
    out.resize(at + text.size());
    if (!text.empty()) std::memcpy(out.data() + at, text.data(), text.size());
    return out;
}

Result<DecodedError> decode_error(std::span<const std::byte> payload) {
    auto e = read_wire<proto::ErrorRep>(payload);
    if (!e) return make_error(EBADMSG, "error reply shorter than its header");
    if (e->text_len > proto::kMaxErrorText || payload.size() - sizeof(proto::ErrorRep) < e->text_len) {
        return make_error(EBADMSG, "error reply text overruns the message");
    }
    DecodedError d;
    d.code = e->code;
    d.request_type = e->request_type;
    d.text.assign(reinterpret_cast<const char*>(payload.data() + sizeof(proto::ErrorRep)), e->text_len);
    return d;
}

}  // namespace coiommu::daemon
