// Sending and receiving protocol messages (protocol.h) over a Unix SOCK_SEQPACKET socket, with
// fds as SCM_RIGHTS. Both sides (daemon and client) use these.
//
// Bounds: a datagram is at most kMaxMessageSize bytes and carries at most kMaxFdsPerMessage fds.
// A longer datagram arrives with MSG_TRUNC, more fds with MSG_CTRUNC: both are refused
// (EMSGSIZE / ETOOMANYREFS), and every fd that did arrive is closed (owned by UniqueFd from the
// moment recvmsg returns). Received fds carry O_CLOEXEC. MSG_CTRUNC also says that the kernel
// could not install every fd because the receiver is out of descriptors: that is EMFILE (ENFILE
// when the system is), not ETOOMANYREFS (recv_message tells the two apart).
//
// Thread-safety: free functions; one socket must not be read (or written) by two threads at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/socket.h>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/daemon/protocol.h"

namespace coiommu::daemon {

struct Message {
    proto::Header header;
    std::vector<std::byte> payload;
    std::vector<UniqueFd> fds;
};

// Checks a received header against the datagram: magic (EPROTO), version (EPROTONOSUPPORT),
// flags 0 (EPROTO), length == payload bytes received (EBADMSG).
[[nodiscard]] Status check_header(const proto::Header& h, std::size_t payload_bytes);

// Waits up to `timeout` for the socket to be writable when the send buffer is full, then sends
// one datagram. Errors: ETIMEDOUT (the peer does not read), EPIPE/ECONNRESET (gone), EMSGSIZE
// (payload above kMaxPayload or more than kMaxFdsPerMessage fds), errno of sendmsg.
[[nodiscard]] Status send_message(int sock, uint16_t type, uint64_t seq, std::span<const std::byte> payload,
                                  std::span<const int> fds, std::chrono::milliseconds timeout);

// Receives one datagram (blocking unless the socket is non-blocking: EAGAIN then). nullopt at
// end of stream (the peer closed). The header is parsed but not checked (see check_header), except
// that a datagram shorter than a header is EBADMSG. Errors: EMSGSIZE (truncated datagram),
// ETOOMANYREFS (more than kMaxFdsPerMessage fds), EMFILE/ENFILE (fds this process had no room
// for: the text says how many arrived and names RLIMIT_NOFILE), EBADMSG, errno of recvmsg, the
// error of this thread's ReceiveCheck. `buf` is scratch (kept between calls).
[[nodiscard]] Result<std::optional<Message>> recv_message(int sock, std::vector<std::byte>& buf);

// A check of every message recv_message returns on one thread: the daemon's fd budgets
// (fd_budget.h), applied in a session's thread without its I/O loop (serve(), session.cc) having
// to know of them. An error refuses the message: recv_message returns it instead, and the
// message's fds are closed.
class ReceiveCheck {
public:
    [[nodiscard]] virtual Status check(const Message& msg) = 0;

protected:
    ~ReceiveCheck() = default;
};
// Installs `check` for recv_message on the calling thread while it lives; the one it replaced, if
// any, is restored on destruction. `check` must outlive it.
class ScopedReceiveCheck {
public:
    explicit ScopedReceiveCheck(ReceiveCheck& check);
    ~ScopedReceiveCheck();
    ScopedReceiveCheck(const ScopedReceiveCheck&) = delete;
    ScopedReceiveCheck& operator=(const ScopedReceiveCheck&) = delete;

private:
    ReceiveCheck* previous_;
};

// Waits until `sock` is readable or `stop_fd` (may be -1) is; returns true when sock is readable
// (or hung up), false on timeout or when stop_fd fired first. A negative timeout waits forever.
// `stopped` (may be null) is set when stop_fd fired.
[[nodiscard]] Result<bool> wait_readable(int sock, int stop_fd, std::chrono::milliseconds timeout, bool* stopped);

// Attaches `fds` to `mh` as one SCM_RIGHTS control message built in `control` (no-op when empty).
// Precondition: `control` is cmsghdr-aligned. Errors: EMSGSIZE when `control` is too small.
[[nodiscard]] Status attach_fds(msghdr& mh, std::span<unsigned char> control, std::span<const int> fds);

// Payload helpers: a wire struct as bytes, and reading one from a payload (bounds-checked).
template <class T>
[[nodiscard]] std::span<const std::byte> as_bytes_of(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return {reinterpret_cast<const std::byte*>(&v), sizeof(T)};
}
template <class T>
[[nodiscard]] std::optional<T> read_wire(std::span<const std::byte> payload, std::size_t offset = 0) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (offset > payload.size() || payload.size() - offset < sizeof(T)) return std::nullopt;
    T out;
    std::memcpy(&out, payload.data() + offset, sizeof(T));
    return out;
}
// Appends the bytes of `v` to `out`.
template <class T>
void append_wire(std::vector<std::byte>& out, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const std::size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
}

// The payload of an Error message with `text` cut to kMaxErrorText bytes.
[[nodiscard]] std::vector<std::byte> encode_error(int code, uint16_t request_type, std::string_view text);
struct DecodedError {
    int code = 0;
    uint16_t request_type = 0;
    std::string text;
};
// Errors: EBADMSG when the payload is shorter than it says.
[[nodiscard]] Result<DecodedError> decode_error(std::span<const std::byte> payload);

}  // namespace coiommu::daemon
