#include "engine/daemon/server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/base/quantity.h"
#include "engine/daemon/client.h"

namespace coiommu::daemon {
namespace {

constexpr std::string_view kLog = "server";

// epoll tokens: the listener, the stop event; every waiting connection has its own above these.
constexpr uint64_t kListenToken = 0;
constexpr uint64_t kStopToken = 1;
// The accept thread wakes at least this often: finished sessions are reaped even when nobody
// connects.
constexpr std::chrono::milliseconds kIdleWake{200};
constexpr int kMaxEvents = 64;
// Connections refused on the spare fd in one wake-up before the listener pauses: bounded work per
// kAcceptPause however fast they come.
constexpr uint32_t kMaxRefusalsPerWake = 64;

// Refuses a connection with an Error message the peer can read, then closes it. Never waits: the
// accept thread must not stall on one peer (a fresh socket's send buffer has room for one Error).
void refuse(UniqueFd sock, int code, std::string_view why) {
    const auto payload = encode_error(code, 0, why);
    (void)send_message(sock.get(), static_cast<uint16_t>(proto::MsgType::Error), 0, payload, {},
                       std::chrono::milliseconds(0));
}

// A descriptor that only holds a slot of the fd table (a dup of one the server has anyway).
UniqueFd open_spare(int any_fd) { return UniqueFd(::fcntl(any_fd, F_DUPFD_CLOEXEC, 0)); }

std::string nofile_limit() {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return "RLIMIT_NOFILE";
    return fmt::format("RLIMIT_NOFILE {}", lim.rlim_cur);
}

// The Error text for a connection refused because accept4 said EMFILE or ENFILE.
std::string out_of_fds_text(int err) {
    if (err == ENFILE) return "coiommud cannot accept: the system's file table is full (fs.file-max); try again later";
    return fmt::format("coiommud is out of file descriptors ({} reached): try again later, or raise LimitNOFILE",
                       nofile_limit());
}

Result<UniqueFd> bind_listener(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty()) return make_error(EINVAL, "empty socket path");
    if (path.size() >= sizeof addr.sun_path) {
        return make_error(ENAMETOOLONG,
                          fmt::format("socket path '{}' is longer than {} bytes", path, sizeof addr.sun_path - 1));
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return make_error(EEXIST, fmt::format("{} exists and is not a socket", path));
        }
        if (connect_seqpacket(path)) {
            return make_error(EADDRINUSE, fmt::format("{}: another coiommud is serving it", path));
        }
        ::unlink(path.c_str());  // stale: its daemon is gone
    }
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return make_error(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
    // Bound and listening under a temporary name, then renamed into place: a VMM that sees the
    // path can connect at once (no ECONNREFUSED window between bind and listen).
    const std::string tmp = fmt::format("{}.{}.tmp", path, ::getpid());
    if (tmp.size() >= sizeof addr.sun_path) {
        return make_error(ENAMETOOLONG, fmt::format("socket path '{}' leaves no room for its temporary name", path));
    }
    sockaddr_un tmp_addr{};
    tmp_addr.sun_family = AF_UNIX;
    std::memcpy(tmp_addr.sun_path, tmp.data(), tmp.size());
    ::unlink(tmp.c_str());
    // 0600 from the first instant: nobody else can connect between bind and chmod.
    const mode_t old = ::umask(0177);
    const int rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&tmp_addr), sizeof tmp_addr);
    const int err = errno;
    ::umask(old);
    if (rc != 0) return make_error(err, fmt::format("bind {}", tmp));
    auto fail = [&](int e, std::string what) {
        ::unlink(tmp.c_str());
        return make_error(e, std::move(what));
    };
    if (::chmod(tmp.c_str(), 0600) != 0) return fail(errno, fmt::format("chmod 0600 {}", tmp));
    if (::listen(fd.get(), 128) != 0) return fail(errno, fmt::format("listen {}", tmp));
    if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(errno, fmt::format("rename {} to {}", tmp, path));
    return fd;
}

}  // namespace

void merge_snapshot(telemetry::StatsSnapshot& into, const telemetry::StatsSnapshot& other) {
    telemetry::merge(into.totals, other.totals);
    auto& g = into.gauges;
    const auto& o = other.gauges;
    g.pinned_pages += o.pinned_pages;
    g.dma_entries += o.dma_entries;
    g.dma_entry_limit += o.dma_entry_limit;
    g.queue_depth += o.queue_depth;
    g.unpin_worker_parked += o.unpin_worker_parked;
    g.last_unpin_run_unix_ns = std::max(g.last_unpin_run_unix_ns, o.last_unpin_run_unix_ns);
    g.guest_ram_bytes += o.guest_ram_bytes;
    g.vcpus += o.vcpus;
    g.active_sessions += o.active_sessions;
    into.shards += other.shards;
}

Result<std::unique_ptr<Server>> Server::start(ServerOptions options) {
    if (options.max_sessions == 0) return make_error(EINVAL, "max_sessions must be at least 1");
    if (options.max_pending == 0) return make_error(EINVAL, "max_pending must be at least 1");
    if (options.hello_timeout.count() <= 0) return make_error(EINVAL, "hello_timeout must be above 0");
    if (options.allowed_uids.empty()) options.allowed_uids.push_back(::geteuid());
    std::unique_ptr<Server> s(new Server(std::move(options)));
    if (s->opts_.inherited_listener) {
        // systemd created it blocking; the accept loop needs EAGAIN, not a block, after epoll.
        const int fl = ::fcntl(s->opts_.inherited_listener.get(), F_GETFL);
        if (fl < 0 || ::fcntl(s->opts_.inherited_listener.get(), F_SETFL, fl | O_NONBLOCK) != 0) {
            return make_error(errno, "inherited listener: O_NONBLOCK");
        }
        s->listen_ = std::move(s->opts_.inherited_listener);
        s->owns_socket_file_ = false;
    } else {
        COIOMMU_ASSIGN_OR_RETURN(s->listen_, bind_listener(s->opts_.socket_path));
    }
    auto ev = EventFd::create(Blocking::No);
    if (!ev) {
        return coiommu::unexpected(with_context(ev.error(), "stop event"));
    }
    s->stop_ev_ = std::move(*ev);
    s->epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    if (!s->epoll_) return make_error(errno, "epoll_create1");
    s->spare_ = open_spare(s->stop_ev_.fd());
    if (!s->spare_) return make_error(errno, "spare fd");
    rlimit nofile{};
    if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0) return make_error(errno, "getrlimit(RLIMIT_NOFILE)");
    s->budget_ = std::make_unique<FdBudget>(derive_fd_limits(nofile.rlim_cur, s->opts_.max_pending,
                                                             s->opts_.max_fds_per_session, s->opts_.max_fds_per_uid));
    COIOMMU_TRY(s->watch(s->listen_.get(), kListenToken, EPOLLIN, EPOLL_CTL_ADD), "listener");
    COIOMMU_TRY(s->watch(s->stop_ev_.fd(), kStopToken, EPOLLIN, EPOLL_CTL_ADD), "stop event");
    s->acceptor_ = std::thread([srv = s.get()] { srv->accept_loop(); });
    CLOG_INFO(kLog, "listening on {} (max {} sessions, {} per uid; max {} waiting {} for Hello)", s->opts_.socket_path,
              s->opts_.max_sessions,
              s->opts_.max_sessions_per_uid == 0 ? "no cap" : std::to_string(s->opts_.max_sessions_per_uid),
              s->opts_.max_pending, format_duration(s->opts_.hello_timeout));
    const FdLimits& fl = s->budget_->limits();
    CLOG_INFO(kLog, "fd budget: {} per session, {} per uid, {} for all sessions (RLIMIT_NOFILE {})", fl.per_session,
              fl.per_uid, fl.total, fl.rlimit_nofile);
    return s;
}

Status Server::watch(int fd, uint64_t token, uint32_t events, int op) {
    epoll_event e{};
    e.events = events;
    e.data.u64 = token;
    if (::epoll_ctl(epoll_.get(), op, fd, &e) != 0) return make_error(errno, "epoll_ctl");
    return ok();
}

Server::~Server() { stop(); }

void Server::stop() {
    std::lock_guard stop_lock(stop_mu_);
    if (stopped_.exchange(true)) return;
    if (stop_ev_.valid()) (void)stop_ev_.signal();  // the acceptor and every session watch it
    if (acceptor_.joinable()) acceptor_.join();
    pending_.clear();  // the acceptor's, and it is gone: their peers see end of stream
    pending_count_.store(0, std::memory_order_relaxed);
    reap(true);
    if (listen_) {
        // Only a socket this server bound (a failed start must not remove someone else's file).
        listen_.reset();
        if (owns_socket_file_) ::unlink(opts_.socket_path.c_str());
    }
    CLOG_INFO(kLog, "stopped: {} sessions served", counters_.accepted.load());
}

void Server::accept_loop() {
    epoll_event events[kMaxEvents];
    for (;;) {
        const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, wait_ms(Clock::now()));
        const int err = errno;
        if (n < 0 && err != EINTR) {
            CLOG_ERROR(kLog, "epoll_wait: {}", std::strerror(err));
            return;
        }
        bool listener_ready = false;
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u64 == kStopToken) return;
            if (events[i].data.u64 == kListenToken) listener_ready = true;
        }
        // The connections that spoke first: the backlog's newcomers could otherwise evict them.
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u64 > kStopToken) on_readable(events[i].data.u64);
        }
        if (listener_ready) accept_all();
        resume_accepting(Clock::now());
        expire_pending(Clock::now());
        reap(false);
    }
}

int Server::wait_ms(Clock::time_point now) const {
    Clock::time_point wake = now + kIdleWake;
    // The oldest waiting connection has the earliest deadline (every one gets hello_timeout).
    if (!pending_.empty()) wake = std::min(wake, pending_.begin()->second.deadline);
    if (paused_until_) wake = std::min(wake, *paused_until_);
    // Rounded up: a wake-up just before the deadline would only have to wait again.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(wake - now);
    return static_cast<int>(std::max<int64_t>(left.count(), 0));
}

void Server::accept_all() {
    // Drain the backlog: a flood of connections is handled in one wake-up. The listener is
    // level-triggered, so every return but on EAGAIN leaves it readable: those pause it first.
    uint32_t refused = 0;
    for (;;) {
        UniqueFd sock(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (sock) {
            on_accepted(std::move(sock));
            continue;
        }
        const int err = errno;
        if (err == EINTR || err == ECONNABORTED) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if ((err == EMFILE || err == ENFILE) && refused < kMaxRefusalsPerWake) {
            const Refusal r = refuse_out_of_fds(err);
            if (r == Refusal::Refused) {
                ++refused;
                continue;
            }
            if (r == Refusal::BacklogEmpty) return;
        }
        // Still no room (the spare is gone, or another thread took its slot), too many refusals
        // in one go, or another error (ENOBUFS, ENOMEM): retrying at once would spin.
        CLOG_ERROR_RL(kLog, "accept: {}: not accepting for {}", std::strerror(err), format_duration(kAcceptPause));
        pause_accepting();
        return;
    }
}

// Makes room for one connection by closing the spare fd, refuses it with the errno accept4 gave,
// closes it and reopens the spare.
Server::Refusal Server::refuse_out_of_fds(int accept_errno) {
    if (!spare_) spare_ = open_spare(stop_ev_.fd());
    if (!spare_) return Refusal::NoRoom;
    spare_.reset();
    UniqueFd sock(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    const int err = errno;
    const bool accepted = sock.valid();
    if (accepted) {
        counters_.refused_out_of_fds.fetch_add(1, std::memory_order_relaxed);
        CLOG_WARN_RL(kLog, "connection refused: {} (accept: {})", nofile_limit(), std::strerror(accept_errno));
        refuse(std::move(sock), accept_errno, out_of_fds_text(accept_errno));  // closes it
    }
    spare_ = open_spare(stop_ev_.fd());  // may fail (another thread took the slot): retried later
    if (accepted) return Refusal::Refused;
    return err == EAGAIN || err == EWOULDBLOCK ? Refusal::BacklogEmpty : Refusal::NoRoom;
}

void Server::pause_accepting() {
    if (paused_until_) return;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listen_.get(), nullptr) != 0) {
        CLOG_ERROR_RL(kLog, "epoll_ctl DEL listener: {}", std::strerror(errno));
    }
    paused_until_ = Clock::now() + kAcceptPause;
    counters_.accept_pauses.fetch_add(1, std::memory_order_relaxed);
}

void Server::resume_accepting(Clock::time_point now) {
    if (!paused_until_ || now < *paused_until_) return;
    paused_until_.reset();
    if (!spare_) spare_ = open_spare(stop_ev_.fd());
    if (auto st = watch(listen_.get(), kListenToken, EPOLLIN, EPOLL_CTL_ADD); !st) {
        CLOG_ERROR_RL(kLog, "listener: {}", st.error().message());
        pause_accepting();  // tried again after the next pause
    }
}

void Server::on_accepted(UniqueFd sock) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        CLOG_WARN_RL(kLog, "SO_PEERCRED: {}", std::strerror(errno));
        return;
    }
    const auto& allowed = opts_.allowed_uids;
    if (std::find(allowed.begin(), allowed.end(), cred.uid) == allowed.end()) {
        counters_.refused_credentials.fetch_add(1, std::memory_order_relaxed);
        CLOG_WARN_RL(kLog, "refused pid {} uid {}: not in allowed_uids", cred.pid, cred.uid);
        refuse(std::move(sock), EACCES, "uid not allowed by this coiommud");
        return;
    }
    if (pending_.size() >= opts_.max_pending) evict_oldest_pending();
    const uint64_t token = next_token_++;
    if (auto st = watch(sock.get(), token, EPOLLIN, EPOLL_CTL_ADD); !st) {
        CLOG_WARN_RL(kLog, "pid {}: {}", cred.pid, st.error().message());
        refuse(std::move(sock), st.error().code, "coiommud cannot watch this connection");
        return;
    }
    pending_.emplace(token, Pending{std::move(sock), cred.uid, cred.pid, Clock::now() + opts_.hello_timeout});
    pending_count_.store(static_cast<uint32_t>(pending_.size()), std::memory_order_relaxed);
}

void Server::evict_oldest_pending() {
    // The oldest has waited longest without a word: a VMM says Hello right after it connects.
    const auto oldest = pending_.begin();
    if (admit(oldest) == Admitted::Handled) return;  // it has spoken after all
    Pending p = take_pending(oldest);
    counters_.evicted_pending.fetch_add(1, std::memory_order_relaxed);
    CLOG_WARN_RL(kLog, "pid {} uid {}: closed without Hello: {} connections wait (max_pending)", p.pid, p.uid,
                 opts_.max_pending);
    refuse(std::move(p.sock), EBUSY,
           fmt::format("{} connections are waiting for Hello (max_pending); this, the oldest, is closed",
                       opts_.max_pending));
}

void Server::on_readable(uint64_t token) {
    const auto it = pending_.find(token);
    if (it == pending_.end()) return;  // admitted or evicted earlier in this wake-up
    (void)admit(it);
}

Server::Pending Server::take_pending(std::map<uint64_t, Pending>::iterator it) {
    Pending p = std::move(it->second);
    // Before the fd changes hands: a session's socket left in this epoll set would wake it forever.
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, p.sock.get(), nullptr);
    pending_.erase(it);
    pending_count_.store(static_cast<uint32_t>(pending_.size()), std::memory_order_relaxed);
    return p;
}

// Takes the first message of a waiting connection if it has sent one: a Hello within the bounds
// starts a session; anything else (or a Hello beyond them) gets its Error and the connection closes.
Server::Admitted Server::admit(std::map<uint64_t, Pending>::iterator it) {
    auto in = recv_message(it->second.sock.get(), buf_);
    if (!in && (in.error().code == EAGAIN || in.error().code == EWOULDBLOCK)) return Admitted::NothingYet;
    Pending p = take_pending(it);
    if (!in) {
        counters_.bad_handshakes.fetch_add(1, std::memory_order_relaxed);
        CLOG_WARN_RL(kLog, "pid {}: first message: {}", p.pid, in.error().message());
        if (in.error().code != ECONNRESET) refuse(std::move(p.sock), in.error().code, in.error().message());
        return Admitted::Handled;
    }
    if (!*in) return Admitted::Handled;  // closed without a word
    Message& m = **in;
    FdBudget::Account fds;
    if (m.header.type == static_cast<uint16_t>(proto::MsgType::Hello)) {
        if (const std::string_view why = capacity_refusal(p); !why.empty()) {
            refuse(std::move(p.sock), EBUSY, why);
            return Admitted::Handled;
        }
        auto account = budget_->open(p.uid, kSessionBaseFds);
        if (!account) {
            counters_.refused_fd_budget.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "refused pid {} uid {}: {}", p.pid, p.uid, account.error().context);
            refuse(std::move(p.sock), account.error().code, account.error().context);
            return Admitted::Handled;
        }
        fds = std::move(*account);
    }
    start_session(std::move(p), m, std::move(fds));
    return Admitted::Handled;
}

std::string_view Server::capacity_refusal(const Pending& p) {
    std::lock_guard lock(mu_);
    if (sessions_.size() >= opts_.max_sessions) {
        counters_.refused_busy.fetch_add(1, std::memory_order_relaxed);
        CLOG_WARN_RL(kLog, "refused pid {}: {} sessions already (max_sessions)", p.pid, sessions_.size());
        return "coiommud serves its maximum number of sessions";
    }
    if (opts_.max_sessions_per_uid == 0) return {};
    const auto of_uid =
        std::count_if(sessions_.begin(), sessions_.end(), [&](const auto& e) { return e->uid == p.uid; });
    if (static_cast<uint64_t>(of_uid) < opts_.max_sessions_per_uid) return {};
    counters_.refused_uid_busy.fetch_add(1, std::memory_order_relaxed);
    CLOG_WARN_RL(kLog, "refused pid {}: uid {} has {} sessions already (max_sessions_per_uid)", p.pid, p.uid, of_uid);
    return "coiommud serves the maximum number of sessions per uid for this uid (max_sessions_per_uid)";
}

// Answers the Hello here, on the accept thread; the session's thread takes the session over from
// then on (starting the thread orders the two). The entry is listed before the reply goes out, so
// a VMM that has its Hello reply is counted in session_count().
void Server::start_session(Pending p, Message& hello, FdBudget::Account fds) {
    auto entry = std::make_unique<Entry>();
    const uint32_t id = next_id_++;
    entry->session = std::make_unique<Session>(id, opts_.policy, &counters_.resumed);
    const Reply reply = entry->session->handle(hello);
    const auto no_wait = std::chrono::milliseconds(0);
    if (reply.type == static_cast<uint16_t>(proto::MsgType::Error)) {
        // Every Error before Hello closes (Session::handle: close_after).
        (void)send_message(p.sock.get(), reply.type, hello.header.seq, reply.payload, {}, no_wait);
        counters_.bad_handshakes.fetch_add(1, std::memory_order_relaxed);
        auto d = decode_error(reply.payload);
        CLOG_WARN_RL(kLog, "pid {}: closed before Hello: {}", p.pid, d ? d->text : std::string("error"));
        return;
    }
    entry->sock = std::move(p.sock);
    entry->uid = p.uid;
    entry->fds = std::move(fds);
    Entry* raw_entry = entry.get();
    {
        std::lock_guard lock(mu_);
        sessions_.push_back(std::move(entry));
    }
    auto sent = send_message(raw_entry->sock.get(), reply.type, hello.header.seq, reply.payload, reply.fds, no_wait);
    if (!sent) {
        CLOG_WARN_RL(kLog, "session {}: Hello reply not sent: {}", id, sent.error().message());
        raw_entry->sock.reset();
        raw_entry->done.store(true, std::memory_order_release);  // reaped like a session that ended
        return;
    }
    counters_.accepted.fetch_add(1, std::memory_order_relaxed);
    CLOG_INFO(kLog, "session {}: connected (pid {}, uid {})", id, p.pid, p.uid);
    // Only this thread and stop() (after joining this thread) touch `thread`.
    raw_entry->thread = std::thread([this, raw_entry] {
        FdBudgetCheck budget_check(*budget_, raw_entry->fds, counters_.refused_fd_budget);
        const ScopedReceiveCheck checked(budget_check);
        const SessionEnd end = serve(*raw_entry->session, raw_entry->sock.get(), stop_ev_.fd(), opts_.limits);
        if (end != SessionEnd::Closed && end != SessionEnd::Stopped && end != SessionEnd::PeerGone) {
            counters_.sessions_failed.fetch_add(1, std::memory_order_relaxed);
        }
        CLOG_INFO(kLog, "session {}: ended ({})", raw_entry->session->id(), to_string(end));
        raw_entry->sock.reset();   // the VMM sees end of stream now, not at the next reap
        raw_entry->fds.release();  // serve() tore the session down: its fds are closed
        raw_entry->done.store(true, std::memory_order_release);
    });
}

void Server::expire_pending(Clock::time_point now) {
    while (!pending_.empty() && pending_.begin()->second.deadline <= now) {
        const auto oldest = pending_.begin();
        if (admit(oldest) == Admitted::Handled) continue;  // it spoke just in time
        Pending p = take_pending(oldest);
        counters_.hello_timeouts.fetch_add(1, std::memory_order_relaxed);
        CLOG_WARN_RL(kLog, "pid {} uid {}: no Hello within {}: closed", p.pid, p.uid,
                     format_duration(opts_.hello_timeout));
        refuse(std::move(p.sock), ETIMEDOUT,
               fmt::format("no Hello within {} (hello_timeout)", format_duration(opts_.hello_timeout)));
    }
}

void Server::reap(bool all) {
    if (all) {
        // stop() signalled every session: wait for each to tear down. The session threads never
        // take mu_, so joining with a snapshot of the list is safe (only this thread edits it now).
        std::vector<Entry*> entries;
        {
            std::lock_guard lock(mu_);
            for (auto& e : sessions_) entries.push_back(e.get());
        }
        for (Entry* e : entries) {
            if (e->thread.joinable()) e->thread.join();
        }
    }
    std::list<std::unique_ptr<Entry>> finished;
    {
        std::lock_guard lock(mu_);
        for (auto it = sessions_.begin(); it != sessions_.end();) {
            if ((*it)->done.load(std::memory_order_acquire)) {
                // In the same critical section as the removal: sessions() never sees a dip.
                telemetry::merge(retired_, (*it)->session->final_totals());
                counters_.sessions_ended.fetch_add(1, std::memory_order_relaxed);
                finished.push_back(std::move(*it));
                it = sessions_.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (auto& e : finished) {
        if (e->thread.joinable()) e->thread.join();  // already past serve(): returns at once
    }
}

SessionSnapshots Server::sessions() const {
    SessionSnapshots out;
    std::lock_guard lock(mu_);
    out.ended = retired_;
    out.active_sessions = static_cast<uint32_t>(sessions_.size());
    out.sessions.reserve(sessions_.size());
    for (const auto& e : sessions_) {
        const Session& session = *e->session;
        // Hello writes the name once, before it moves the state on (a release store): once the
        // state is past AwaitHello the name may be read from this thread.
        if (session.state() == SessionState::AwaitHello) continue;
        SessionSnapshot s;
        s.session_id = session.id();
        s.name = session.client_name();
        // A running session reports its live engine; one that has torn down (or never ran) its
        // final totals (zero when it never ran), until reap() moves them to retired_.
        if (auto live = session.stats()) {
            s.snapshot = live->snapshot;
        } else {
            s.snapshot.totals = session.final_totals();
        }
        out.sessions.push_back(std::move(s));
    }
    return out;
}

telemetry::StatsSnapshot Server::aggregate() const {
    const SessionSnapshots all = sessions();
    telemetry::StatsSnapshot out{};
    out.totals = all.ended;
    for (const auto& s : all.sessions) merge_snapshot(out, s.snapshot);
    out.gauges.active_sessions = all.active_sessions;
    return out;
}

uint32_t Server::session_count() const {
    std::lock_guard lock(mu_);
    return static_cast<uint32_t>(sessions_.size());
}

}  // namespace coiommu::daemon
