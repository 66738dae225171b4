// fuzz_protocol_session: the VMM protocol (engine/daemon/protocol.h, protocol_io.h) and the
// session state machine (engine/daemon/session.h) as a hostile VMM drives them.
//
// Each input is a VMM on one end of a SOCK_SEQPACKET socketpair and a real daemon::Session on the
// other, both on this thread. The VMM sends messages with the real send_message (or raw datagrams
// with ::send), with real fds attached where the fuzzer says: its guest RAM memfd (sealed), fresh
// sealed and unsealed memfds, eventfds, a pipe, /dev/null, a fake backend's shared-state memfd,
// and the notifymap / topologymap / host record fds a SetTopology reply handed back. The daemon
// side runs in one of two modes (the input's first byte):
//   step   recv_message -> Session::handle -> send_message per message, with the VMM reading each
//          reply before its next request: the VMM can use what a reply gave it (it maps the
//          notifymap, writes pin requests into its slots and signals its trigger eventfds, with
//          the DTT it wrote into its guest RAM), and start a new session (Close, then Resume
//          with the old session's fds);
//   serve  the VMM sends everything, shuts its side down, and daemon::serve() (the real I/O loop)
//          runs the session to its end; then the VMM reads the replies.
// The engine behind a Running session is the real workers::Engine (fake / null backend); it
// starts its threads at ACTIVATE, and every session is torn down (threads joined) before the
// input ends.
//
// Aborts (FUZZ_CHECK) when:
//  - a reply's header does not pass check_header, its seq is not the request's, its type is
//    neither the request's reply type nor Error, or an Error payload does not decode;
//  - a Close reply of a session whose backend was not shared reports DMA entries left;
//  - the input leaves a file descriptor open (compared with the count before it), or (ASan's
//    LeakSanitizer) memory.
#include <fcntl.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/core/spec.h"
#include "engine/daemon/protocol.h"
#include "engine/daemon/protocol_io.h"
#include "engine/daemon/session.h"
#include "engine/dma/fake_backend.h"
#include "engine/workers/config.h"
#include "tests/fuzz/fuzz_support.h"

namespace coiommu::fuzz {
namespace {

using daemon::Message;
using daemon::proto::MsgType;
namespace proto = daemon::proto;

constexpr uint64_t kGuestPages = 64;  // the VMM's guest RAM memfd
constexpr uint64_t kGuestBytes = kGuestPages * kPageSize;
constexpr std::size_t kMaxOps = 128;
constexpr std::size_t kMaxSessions = 4;
constexpr std::size_t kMaxQueued = 48;  // serve mode: messages sent before serve() reads them
constexpr std::chrono::milliseconds kNoWait{0};
constexpr auto kPinWait = std::chrono::milliseconds(50);

enum Op : uint8_t {
    kSend = 0,     // u16 type, u16 length, payload, u8 fd count, fd kinds
    kRaw,          // u16 length, datagram bytes (no fds)
    kHello,        // u64 features, u8 version tweak
    kSetMemory,    // u8 regions, per region: u16 gpa page, u8 pages, u8 fd offset page, u8 fd kind
    kSetTopology,  // u16 vcpus, u8 endpoints, u16 bdf each
    kResume,       // as SetTopology, then u8 fd selector
    kSetBackend,   // u8 kind, u32 param, u64 entry limit, u8 fd kind (0xff: none)
    kSetTriggers,  // u16 first vcpu, u8 count, u8 wrong-kind selector
    kMmioWrite,    // u16 offset, u8 len, u64 data, u8 seq tweak
    kMmioRead,     // u16 offset, u8 len
    kBalloon,      // u8 ranges, per range: u32 start gfn, u16 count
    kStats,
    kQuery,  // u32 gfn, u16 pages
    kClose,
    kGuestWrite,  // u16 word index, u64 value: the VMM writes its guest RAM (DTT, batches)
    kPin,         // u8 vcpu, u64 slot value: the guest's pin request, its trigger, the wait
    kNewSession,  // end this session (as a VMM that disconnects) and connect a new one
    kDetach,      // daemon shutdown: detach the session (a resumable one keeps its mappings)
    kOpCount,
};

// The fds a message may carry.
enum FdKind : uint8_t {
    kGuestMemfd = 0,
    kSealedMemfd,
    kUnsealedMemfd,
    kEventfd,
    kPipe,
    kDevNull,
    kFakeState,
    kNotifymap,
    kTopologymap,
    kRecord,
    kLastFakeState,  // the shared state sent last (a VMM resuming with the same fake container)
    kFdKindCount,
};

class Mapping {
public:
    Mapping() = default;
    Mapping(int fd, std::size_t len) : len_(len) {
        void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) addr_ = static_cast<std::byte*>(p);
    }
    ~Mapping() { reset(); }
    Mapping(Mapping&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), len_(o.len_) {}
    Mapping& operator=(Mapping&& o) noexcept {
        if (this != &o) {
            reset();
            addr_ = std::exchange(o.addr_, nullptr);
            len_ = o.len_;
        }
        return *this;
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    [[nodiscard]] std::byte* get() const { return addr_; }
    void reset() {
        if (addr_ != nullptr) ::munmap(addr_, len_);
        addr_ = nullptr;
    }

private:
    std::byte* addr_ = nullptr;
    std::size_t len_ = 0;
};

UniqueFd make_memfd(uint64_t bytes, bool seal) {
    UniqueFd fd(::memfd_create("fuzz-vmm", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return {};
    if (seal) (void)::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK);
    return fd;
}

UniqueFd dup_fd(int fd) { return fd < 0 ? UniqueFd() : UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

// The VMM: its guest RAM, what replies gave it, its trigger eventfds.
struct Vmm {
    UniqueFd guest;  // the guest RAM memfd (sealed against shrinking)
    Mapping guest_map;
    std::array<UniqueFd, 3> topo;  // the last SetTopology reply's notifymap, topologymap, record
    Mapping notifymap;
    std::vector<UniqueFd> triggers;  // dups of the eventfds sent in SetTriggers, in vCPU order
    UniqueFd fake_state;             // the last fake shared state sent
};

class Harness {
public:
    Harness(bool serve_mode, const daemon::SessionPolicy& policy) : serve_mode_(serve_mode), policy_(policy) {
        vmm_.guest = make_memfd(kGuestBytes, true);
        if (vmm_.guest) vmm_.guest_map = Mapping(vmm_.guest.get(), kGuestBytes);
    }
    ~Harness() { end_session(); }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    void run(Reader& in) {
        for (std::size_t n = 0; n < kMaxOps && !in.exhausted(); ++n) {
            if (!step(in)) break;
        }
        if (serve_mode_) serve_all();
    }

private:
    // --- the connection ------------------------------------------------------------------------

    bool start_session() {
        if (sessions_ == kMaxSessions) return false;
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) return false;
        vmm_sock_.reset(sv[0]);
        daemon_sock_.reset(sv[1]);
        session_ = std::make_unique<daemon::Session>(static_cast<uint32_t>(++sessions_), policy_);
        shared_backend_ = false;
        queued_ = 0;
        return true;
    }

    void end_session(bool detach = false) {
        if (session_) {
            if (detach) {
                (void)session_->detach();
                detached_ = true;
            }
            (void)session_->teardown();
            FUZZ_CHECK(session_->state() == daemon::SessionState::Closed);
        }
        session_.reset();
        vmm_sock_.reset();
        daemon_sock_.reset();
        // The VMM keeps its notifymap mapped (a Resume carries on with it); its triggers are per
        // connection.
        vmm_.triggers.clear();
    }

    // --- building messages ---------------------------------------------------------------------

    // Appends an fd of `kind` to `fds` (owned by `keep` until the message is sent).
    void add_fd(uint8_t kind, std::vector<UniqueFd>& keep) {
        UniqueFd fd;
        switch (kind % kFdKindCount) {
            case kGuestMemfd: fd = dup_fd(vmm_.guest.get()); break;
            case kSealedMemfd: fd = make_memfd(16 * kPageSize, true); break;
            case kUnsealedMemfd: fd = make_memfd(16 * kPageSize, false); break;
            case kEventfd: {
                fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
                if (fd) vmm_.triggers.push_back(dup_fd(fd.get()));
                break;
            }
            case kPipe: {
                int p[2];
                if (::pipe2(p, O_CLOEXEC) == 0) {
                    fd = UniqueFd(p[0]);
                    ::close(p[1]);
                }
                break;
            }
            case kDevNull: fd = UniqueFd(::open("/dev/null", O_RDWR | O_CLOEXEC)); break;
            case kFakeState: {
                auto st = dma::FakeBackend::create_shared_state(64);
                if (st) {
                    fd = std::move(*st);
                    vmm_.fake_state = dup_fd(fd.get());
                }
                break;
            }
            case kLastFakeState:
                fd = dup_fd(vmm_.fake_state.get());
                // It may hold what a detached session left mapped, which this one need not own.
                if (detached_) shared_backend_ = true;
                break;
            case kNotifymap: fd = dup_fd(vmm_.topo[0].get()); break;
            case kTopologymap: fd = dup_fd(vmm_.topo[1].get()); break;
            case kRecord: fd = dup_fd(vmm_.topo[2].get()); break;
            default: break;
        }
        if (fd) keep.push_back(std::move(fd));
    }

    // --- sending and answering -----------------------------------------------------------------

    // Sends one request (a raw datagram when `raw`), then (step mode) has the session answer it
    // and reads the reply. Returns false when the input should stop.
    bool exchange(uint16_t type, std::span<const std::byte> payload, const std::vector<UniqueFd>& fds,
                  bool raw = false) {
        if (!session_ && !start_session()) return false;
        if (serve_mode_ && queued_ == kMaxQueued) return false;
        std::vector<int> raw_fds;
        for (const UniqueFd& f : fds) raw_fds.push_back(f.get());
        const uint64_t seq = ++seq_;
        FUZZ_TRACE("send seq %llu type %#x, %zu bytes, %zu fds%s\n", static_cast<unsigned long long>(seq), type,
                   payload.size(), fds.size(), raw ? " (raw)" : "");
        bool sent = false;
        if (raw) {
            sent = ::send(vmm_sock_.get(), payload.data(), payload.size(), MSG_NOSIGNAL) >= 0;
        } else {
            sent = daemon::send_message(vmm_sock_.get(), type, seq, payload, raw_fds, kNoWait).has_value();
        }
        if (!sent) return true;  // refused by send_message (size, fd count) or the kernel
        if (serve_mode_) {
            ++queued_;
            expected_.push_back(Expected{raw ? uint16_t{0} : type, raw ? 0 : seq});
            return true;
        }
        answer_one();
        read_reply(raw ? std::optional<Expected>() : Expected{type, seq});
        return true;
    }

    // One turn of serve()'s loop, on the daemon side.
    void answer_one() {
        auto in = daemon::recv_message(daemon_sock_.get(), buf_);
        if (!in) {
            const auto payload = daemon::encode_error(in.error().code, 0, in.error().message());
            (void)daemon::send_message(daemon_sock_.get(), static_cast<uint16_t>(MsgType::Error), 0, payload, {},
                                       kNoWait);
            closing_ = true;
            return;
        }
        if (!*in) {  // a zero-length datagram reads as the end of the stream
            closing_ = true;
            return;
        }
        Message& msg = **in;
        daemon::Reply reply = session_->handle(msg);
        auto sent =
            daemon::send_message(daemon_sock_.get(), reply.type, msg.header.seq, reply.payload, reply.fds, kNoWait);
        if (!sent || reply.close_after) closing_ = true;
    }

    struct Expected {
        uint16_t type = 0;  // 0: a raw datagram (any reply)
        uint64_t seq = 0;
    };

    void check_reply(const Message& r, const std::optional<Expected>& want) {
        FUZZ_CHECK(daemon::check_header(r.header, r.payload.size()).has_value());
        const bool is_error = r.header.type == static_cast<uint16_t>(MsgType::Error);
        if (tracing()) {
            auto e = is_error ? daemon::decode_error(r.payload) : Result<daemon::DecodedError>();
            FUZZ_TRACE("reply seq %llu type %#x, %zu bytes, %zu fds%s%s\n",
                       static_cast<unsigned long long>(r.header.seq), r.header.type, r.payload.size(), r.fds.size(),
                       is_error ? ": " : "", is_error && e ? e->text.c_str() : "");
        }
        if (is_error) {
            FUZZ_CHECK(r.fds.empty());
            FUZZ_CHECK(daemon::decode_error(r.payload).has_value());
        }
        if (!want || want->type == 0) return;
        if (is_error) {
            FUZZ_CHECK(r.header.seq == want->seq || r.header.seq == 0);
            return;
        }
        FUZZ_CHECK(r.header.seq == want->seq);
        const auto req = proto::request_type(want->type);
        FUZZ_CHECK(req.has_value() && r.header.type == proto::reply_type(*req));
        if (*req == MsgType::Close && !shared_backend_) {
            auto rep = daemon::read_wire<proto::CloseRep>(r.payload);
            FUZZ_CHECK(rep.has_value() && rep->dma_entries_after == 0);
        }
    }

    // Reads the reply to the request just answered (step mode) and keeps what it carries.
    void read_reply(const std::optional<Expected>& want) {
        auto r = daemon::recv_message(vmm_sock_.get(), reply_buf_);
        if (r && *r) {
            Message& m = **r;
            check_reply(m, want);
            if (want && want->type == static_cast<uint16_t>(MsgType::SetTopology) &&
                m.header.type == proto::reply_type(MsgType::SetTopology)) {
                for (std::size_t i = 0; i < vmm_.topo.size(); ++i) {
                    vmm_.topo[i] = i < m.fds.size() ? std::move(m.fds[i]) : UniqueFd();
                }
                vmm_.notifymap = Mapping(vmm_.topo[0].get(), core::kNotifymapSize);
            }
        }
        if (closing_) {
            closing_ = false;
            end_session();
        }
    }

    // Serve mode: the VMM is done; serve() runs the session to its end, then the VMM reads.
    void serve_all() {
        if (!session_) return;
        ::shutdown(vmm_sock_.get(), SHUT_WR);
        daemon::SessionLimits limits;
        limits.setup_timeout = std::chrono::seconds(60);
        limits.io_timeout = std::chrono::milliseconds(0);
        (void)daemon::serve(*session_, daemon_sock_.get(), -1, limits);
        FUZZ_CHECK(session_->state() == daemon::SessionState::Closed);
        daemon_sock_.reset();
        std::size_t next = 0;
        for (;;) {
            auto r = daemon::recv_message(vmm_sock_.get(), reply_buf_);
            if (!r || !*r) break;
            // Replies come in request order; an Error for an unreadable message carries seq 0.
            const Message& m = **r;
            std::optional<Expected> want;
            if (next < expected_.size() && (m.header.seq == expected_[next].seq || expected_[next].type == 0)) {
                want = expected_[next++];
            }
            check_reply(m, want);
        }
        end_session();
    }

    // --- operations ----------------------------------------------------------------------------

    bool step(Reader& in) {
        const uint8_t op = in.u8() % kOpCount;
        switch (op) {
            case kSend: {
                const uint16_t type = in.u16();
                const auto bytes = in.bytes(in.u16() % (proto::kMaxPayload + 64));
                std::vector<UniqueFd> fds;
                const uint8_t n = in.u8() % 9;
                for (uint8_t i = 0; i < n; ++i) add_fd(in.u8(), fds);
                return exchange(type, std::as_bytes(bytes), fds);
            }
            case kRaw: {
                const auto bytes = in.bytes(in.u16() % 512);
                return exchange(0, std::as_bytes(bytes), {}, true);
            }
            case kHello: {
                proto::HelloReq req;
                req.features = in.u64();
                const uint8_t tweak = in.u8();
                if ((tweak & 1) != 0) req.min_version = 2;
                if ((tweak & 2) != 0) req.max_version = 0;
                if ((tweak & 4) != 0) req.pad = 1;
                std::memcpy(req.client_name, "fuzz\x01vmm", 8);
                return send_wire(MsgType::Hello, req);
            }
            case kSetMemory: {
                std::vector<std::byte> p;
                const uint8_t count = in.u8() % 4;
                proto::SetMemoryReq head;
                head.count = count;
                daemon::append_wire(p, head);
                std::vector<UniqueFd> fds;
                for (uint8_t i = 0; i < count; ++i) {
                    proto::MemRegionWire r;
                    r.gpa = uint64_t{in.u16()} << kPageShift;
                    r.size = uint64_t{in.u8()} << kPageShift;
                    r.fd_offset = uint64_t{in.u8()} << kPageShift;
                    daemon::append_wire(p, r);
                    add_fd(in.u8(), fds);
                }
                return exchange(static_cast<uint16_t>(MsgType::SetMemory), p, fds);
            }
            case kSetTopology:
            case kResume: {
                const bool resume = op == kResume;
                std::vector<std::byte> p;
                proto::SetTopologyReq head;
                head.vcpus = in.u16();
                head.endpoint_count = in.u8();
                daemon::append_wire(p, head);
                for (uint16_t i = 0; i < head.endpoint_count; ++i) daemon::append_wire(p, in.u16());
                if (!resume) return exchange(static_cast<uint16_t>(MsgType::SetTopology), p, {});
                // Resume: the old session's notifymap, topologymap and record, unless the selector
                // drops one (bit i) or sends an eventfd instead (bit i + 4).
                const uint8_t sel = in.u8();
                std::vector<UniqueFd> fds;
                for (uint8_t i = 0; i < 3; ++i) {
                    if ((sel >> i & 1) != 0) continue;
                    add_fd((sel >> (i + 4) & 1) != 0 ? kEventfd : static_cast<uint8_t>(kNotifymap + i), fds);
                }
                return exchange(static_cast<uint16_t>(MsgType::Resume), p, fds);
            }
            case kSetBackend: {
                proto::SetBackendReq req;
                req.kind = in.u8() % 6;
                req.param = in.u32() % 4;
                req.entry_limit = in.u64() % 70000;
                const uint8_t fd_kind = in.u8();
                std::vector<UniqueFd> fds;
                if (fd_kind != 0xff) add_fd(fd_kind, fds);
                return send_wire(MsgType::SetBackend, req, fds);
            }
            case kSetTriggers: {
                proto::SetTriggersReq req;
                req.first_vcpu = in.u16();
                req.count = in.u8() % 9;
                const uint8_t wrong = in.u8();
                std::vector<UniqueFd> fds;
                for (uint32_t i = 0; i < req.count; ++i) add_fd(i == wrong ? kPipe : kEventfd, fds);
                return send_wire(MsgType::SetTriggers, req, fds);
            }
            case kMmioWrite: {
                proto::MmioWriteReq req;
                req.offset = in.u16() % (core::kMmioBarSize + 8);
                req.len = in.u8() % 10;
                const uint64_t data = in.u64();
                std::memcpy(req.data, &data, sizeof data);
                if ((in.u8() & 1) != 0 && seq_ > 0) --seq_;  // a re-sent write reuses its seq
                return send_wire(MsgType::MmioWrite, req);
            }
            case kMmioRead: {
                proto::MmioReadReq req;
                req.offset = in.u16() % (core::kMmioBarSize + 8);
                req.len = in.u8() % 10;
                return send_wire(MsgType::MmioRead, req);
            }
            case kBalloon: {
                std::vector<std::byte> p;
                proto::BalloonReq head;
                head.count = in.u8() % 8;
                daemon::append_wire(p, head);
                for (uint32_t i = 0; i < head.count; ++i) {
                    proto::GfnRangeWire r;
                    r.start_gfn = in.u32();
                    const uint16_t c = in.u16();
                    r.count = c == 0xffff ? ~uint64_t{0} : c;
                    daemon::append_wire(p, r);
                }
                return exchange(static_cast<uint16_t>(MsgType::BalloonUnpin), p, {});
            }
            case kStats: return exchange(static_cast<uint16_t>(MsgType::GetStats), {}, {});
            case kQuery: {
                proto::QueryMappedReq req;
                req.iova = uint64_t{in.u32()} << kPageShift;
                req.size = uint64_t{in.u16()} << kPageShift;
                return send_wire(MsgType::QueryMapped, req);
            }
            case kClose: return exchange(static_cast<uint16_t>(MsgType::Close), {}, {});
            case kGuestWrite: {
                const uint64_t word = in.u16() % (kGuestBytes / 8);
                const uint64_t value = in.u64();
                if (vmm_.guest_map.get() != nullptr) std::memcpy(vmm_.guest_map.get() + word * 8, &value, 8);
                return true;
            }
            case kPin: pin(in.u8(), in.u64()); return true;
            case kNewSession: end_session(); return true;
            case kDetach: end_session(true); return true;
            default: return true;
        }
    }

    template <class T>
    bool send_wire(MsgType type, const T& body, const std::vector<UniqueFd>& fds = {}) {
        std::vector<std::byte> p;
        daemon::append_wire(p, body);
        return exchange(static_cast<uint16_t>(type), p, fds);
    }

    // The guest writes a request into its slot and rings its trigger; an active engine completes
    // the slot (sets it to 0) - the wait is bounded, a refused or inactive engine never does.
    void pin(uint8_t vcpu, uint64_t value) {
        if (serve_mode_ || !session_ || vmm_.notifymap.get() == nullptr || vcpu >= vmm_.triggers.size()) return;
        // Safety: slot `vcpu` of the notifymap (vcpu < 64 < kMaxVcpus, 8-byte aligned); the
        // engine reads it with acquire loads and stores 0 with release.
        auto* slot = reinterpret_cast<uint64_t*>(vmm_.notifymap.get()) + vcpu;
        std::atomic_ref<uint64_t>(*slot).store(value, std::memory_order_release);
        const uint64_t one = 1;
        if (::write(vmm_.triggers[vcpu].get(), &one, sizeof one) != sizeof one) return;
        const auto stats = session_->stats();
        if (!stats || stats->head.active == 0) return;
        const auto deadline = std::chrono::steady_clock::now() + kPinWait;
        while (std::atomic_ref<uint64_t>(*slot).load(std::memory_order_acquire) != 0 &&
               std::chrono::steady_clock::now() < deadline) {
            ::sched_yield();
        }
        FUZZ_TRACE(
            "pin vcpu %u %#llx: slot %s\n", vcpu, static_cast<unsigned long long>(value),
            std::atomic_ref<uint64_t>(*slot).load(std::memory_order_acquire) == 0 ? "completed" : "NOT completed");
    }

    const bool serve_mode_;
    const daemon::SessionPolicy policy_;
    Vmm vmm_;
    UniqueFd vmm_sock_;
    UniqueFd daemon_sock_;
    std::unique_ptr<daemon::Session> session_;
    std::size_t sessions_ = 0;
    uint64_t seq_ = 0;
    bool closing_ = false;
    bool shared_backend_ = false;  // a fake state a detached session left mappings in
    bool detached_ = false;
    std::size_t queued_ = 0;
    std::vector<Expected> expected_;
    std::vector<std::byte> buf_;
    std::vector<std::byte> reply_buf_;
};

int run_one(std::span<const uint8_t> data) {
    static bool first = true;
    const int fds_before = open_fd_count();
    {
        Reader in(data);
        const uint8_t flags = in.u8();
        daemon::SessionPolicy policy;
        policy.engine.workers = 0;
        policy.engine.spin_budget = std::chrono::nanoseconds(0);
        policy.engine.max_batch_pages = 256;
        if ((flags & 2) != 0) policy.engine.variant = workers::Variant::Seed;
        if ((flags & 4) != 0) {
            policy.engine.unpin_policy = workers::UnpinPolicy::Lru;
            policy.engine.unpin_interval = std::chrono::nanoseconds(0);  // no timer: ticks only on request
        }
        policy.features = (flags & 8) != 0 ? proto::kFeatureNullBackend : proto::kAllFeatures | proto::kFeatureResume;
        policy.max_guest_end = uint64_t{1} << 30;
        Harness h((flags & 1) != 0, policy);
        h.run(in);
    }
    if (!first) FUZZ_CHECK(open_fd_count() == fds_before);
    first = false;
    return 0;
}

// ---- seeds ---------------------------------------------------------------------------------

constexpr uint16_t kBdf = 0x0018;
constexpr uint64_t kLeafPage = 63;   // the DTT: one level, its leaf page at gfn 63
constexpr uint64_t kBatchPage = 10;  // a batch request's header and gfn list

void hello(SeedWriter& w, uint64_t features = proto::kAllFeatures | proto::kFeatureResume) {
    w.u8(kHello).u64(features).u8(0);
}
void set_memory(SeedWriter& w) { w.u8(kSetMemory).u8(1).u16(0).u8(kGuestPages).u8(0).u8(kGuestMemfd); }
void set_topology(SeedWriter& w, uint16_t vcpus) { w.u8(kSetTopology).u16(vcpus).u8(1).u16(kBdf); }
void set_backend(SeedWriter& w, proto::BackendKind kind, uint8_t fd_kind = 0xff) {
    w.u8(kSetBackend).u8(static_cast<uint8_t>(kind)).u32(0).u64(0).u8(fd_kind);
}
void set_triggers(SeedWriter& w, uint16_t first, uint8_t count) { w.u8(kSetTriggers).u16(first).u8(count).u8(0xff); }
void mmio_write(SeedWriter& w, uint64_t offset, uint64_t value) {
    w.u8(kMmioWrite).u16(static_cast<uint16_t>(offset)).u8(8).u64(value).u8(0);
}
// Leaf entries of gfns 0..7: map count 1 and ACCESSED (what the guest's DMA map writes).
void guest_dtt(SeedWriter& w) {
    const uint64_t e = core::kDtteAccessed | 1;
    for (uint64_t g = 0; g < 8; g += 2) {
        w.u8(kGuestWrite).u16(static_cast<uint16_t>((kLeafPage * kPageSize + g * 4) / 8)).u64(e | e << 32);
    }
}
// The guest unmapped gfns 0..7 again: map count 0, ACCESSED clear, the host's PINNED still set.
void guest_unmap(SeedWriter& w) {
    const uint64_t e = core::kDttePinned;
    for (uint64_t g = 0; g < 8; g += 2) {
        w.u8(kGuestWrite).u16(static_cast<uint16_t>((kLeafPage * kPageSize + g * 4) / 8)).u64(e | e << 32);
    }
}
void activate(SeedWriter& w) {
    mmio_write(w, core::kRegDttRoot, kLeafPage * kPageSize);
    mmio_write(w, core::kRegDttLevel, 1);
    mmio_write(w, core::kRegCmd, static_cast<uint64_t>(core::Command::Activate));
}
void setup(SeedWriter& w, proto::BackendKind kind = proto::BackendKind::Fake, uint8_t fd_kind = 0xff) {
    hello(w);
    set_memory(w);
    set_topology(w, 2);
    set_backend(w, kind, fd_kind);
    set_triggers(w, 0, 2);
    guest_dtt(w);
    activate(w);
}
void single_pin(SeedWriter& w, uint8_t vcpu, uint64_t gfn) { w.u8(kPin).u8(vcpu).u64(gfn << 16 | kBdf); }
void batch_pin(SeedWriter& w, uint8_t vcpu) {
    const uint16_t at = static_cast<uint16_t>(kBatchPage * kPageSize / 8);
    w.u8(kGuestWrite).u16(at).u64(kBdf);
    w.u8(kGuestWrite).u16(at + 1).u64(3);
    for (uint16_t i = 0; i < 3; ++i) w.u8(kGuestWrite).u16(at + 2 + i).u64(4 + i);
    w.u8(kPin).u8(vcpu).u64(kBatchPage * kPageSize | core::kPinPagesInBatch);
}

void make_seeds(const SeedSink& sink) {
    {  // the whole life of a session: setup, pins, every Running request, Close
        SeedWriter w;
        w.u8(0);
        setup(w);
        single_pin(w, 0, 2);
        batch_pin(w, 1);
        w.u8(kQuery).u32(2).u16(1);
        w.u8(kStats);
        w.u8(kMmioRead).u16(core::kRegDttRoot).u8(8);
        w.u8(kMmioWrite).u16(core::kRegTriggerBase + 1).u8(1).u64(1).u8(0);
        guest_unmap(w);
        w.u8(kBalloon).u8(2).u32(2).u16(1).u32(4).u16(0xffff);
        mmio_write(w, core::kRegCmd, static_cast<uint64_t>(core::Command::ParkUnpin));
        mmio_write(w, core::kRegCmd, static_cast<uint64_t>(core::Command::UnparkUnpin));
        w.u8(kClose);
        sink("step_full_session", w.data());
    }
    {  // the same requests through serve(), seed pinner and LRU, null backend
        SeedWriter w;
        w.u8(1 | 2 | 4);
        setup(w, proto::BackendKind::Null);
        w.u8(kStats);
        w.u8(kBalloon).u8(1).u32(0).u16(64);
        w.u8(kMmioRead).u16(core::kRegCmd).u8(8);
        w.u8(kClose);
        sink("serve_null_seed_lru", w.data());
    }
    {  // a resumable session on a shared fake state, detached, resumed by a second session
        SeedWriter w;
        w.u8(0);
        setup(w, proto::BackendKind::Fake, kFakeState);
        single_pin(w, 0, 3);
        w.u8(kDetach);
        hello(w);
        set_memory(w);
        w.u8(kResume).u16(2).u8(1).u16(kBdf).u8(0);
        set_backend(w, proto::BackendKind::Fake, kLastFakeState);
        set_triggers(w, 0, 2);
        w.u8(kQuery).u32(3).u16(1);
        single_pin(w, 1, 5);
        w.u8(kClose);
        sink("step_resume", w.data());
    }
    {  // protocol errors: out of order, bad header, truncated, fds where none belong, unknown type
        SeedWriter w;
        w.u8(0);
        w.u8(kStats);  // before Hello
        hello(w);
        const uint8_t bad_magic[24] = {'X', 'I', 'O', 'M', 1, 0, 1, 0};
        w.u8(kRaw).u16(sizeof bad_magic).bytes(bad_magic);
        hello(w);
        w.u8(kSend).u16(static_cast<uint16_t>(MsgType::SetMemory)).u16(4).u32(1).u8(1).u8(kUnsealedMemfd);
        w.u8(kNewSession);
        hello(w, proto::kFeatureNullBackend);
        set_memory(w);
        set_topology(w, 1);
        set_backend(w, proto::BackendKind::Fake);  // not offered
        w.u8(kNewSession);
        w.u8(kSend).u16(0x1234).u16(0).u8(2).u8(kEventfd).u8(kDevNull);
        w.u8(kNewSession);
        hello(w);
        set_memory(w);
        set_topology(w, 3);
        set_backend(w, proto::BackendKind::Fake);
        w.u8(kSetTriggers).u16(0).u8(2).u8(1);  // the second fd is a pipe
        sink("step_errors", w.data());
    }
}

}  // namespace
}  // namespace coiommu::fuzz

COIOMMU_FUZZ_ENTRY_POINTS()
