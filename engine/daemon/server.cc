#include "engine/daemon/server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/daemon/client.h"

namespace coiommu::daemon {
namespace {

constexpr std::string_view kLog = "server";

// Refuses a connection with an Error message the peer can read, then closes it.
void refuse(UniqueFd sock, int code, std::string_view why, std::chrono::milliseconds timeout) {
    const auto payload = encode_error(code, 0, why);
    (void)send_message(sock.get(), static_cast<uint16_t>(proto::MsgType::Error), 0, payload, {}, timeout);
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
    s->acceptor_ = std::thread([srv = s.get()] { srv->accept_loop(); });
    CLOG_INFO(kLog, "listening on {} (max {} sessions)", s->opts_.socket_path, s->opts_.max_sessions);
    return s;
}

Server::~Server() { stop(); }

void Server::stop() {
    std::lock_guard stop_lock(stop_mu_);
    if (stopped_.exchange(true)) return;
    if (stop_ev_.valid()) (void)stop_ev_.signal();  // the acceptor and every session watch it
    if (acceptor_.joinable()) acceptor_.join();
    reap(true);
    if (listen_) {
        // Only a socket this server bound (a failed start must not remove someone else's file).
        listen_.reset();
        if (owns_socket_file_) ::unlink(opts_.socket_path.c_str());
    }
    CLOG_INFO(kLog, "stopped: {} sessions served", counters_.accepted.load());
}

void Server::accept_loop() {
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) {
        CLOG_ERROR(kLog, "epoll_create1: {}", std::strerror(errno));
        return;
    }
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u32 = 0;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, listen_.get(), &e) != 0) {
        CLOG_ERROR(kLog, "epoll_ctl: {}", std::strerror(errno));
        return;
    }
    e.data.u32 = 1;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, stop_ev_.fd(), &e) != 0) {
        CLOG_ERROR(kLog, "epoll_ctl: {}", std::strerror(errno));
        return;
    }
    for (;;) {
        epoll_event events[2];
        // The timeout lets finished sessions be reaped even when nobody connects.
        const int n = ::epoll_wait(ep.get(), events, 2, 200);
        const int err = errno;
        if (n < 0 && err != EINTR) {
            CLOG_ERROR(kLog, "epoll_wait: {}", std::strerror(err));
            return;
        }
        bool stop = false;
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u32 == 1) stop = true;
        }
        if (stop) return;
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u32 == 0) accept_one();
        }
        reap(false);
    }
}

void Server::accept_one() {
    // Drain the backlog: a flood of connections is handled in one wake-up.
    for (;;) {
        UniqueFd sock(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!sock) {
            const int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
            // EMFILE/ENFILE: out of fds. Log (rate-limited) and retry on the next wake-up.
            CLOG_ERROR_RL(kLog, "accept: {}", std::strerror(err));
            return;
        }
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
            CLOG_WARN_RL(kLog, "SO_PEERCRED: {}", std::strerror(errno));
            continue;
        }
        const auto& allowed = opts_.allowed_uids;
        if (std::find(allowed.begin(), allowed.end(), cred.uid) == allowed.end()) {
            counters_.refused_credentials.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "refused pid {} uid {}: not in allowed_uids", cred.pid, cred.uid);
            refuse(std::move(sock), EACCES, "uid not allowed by this coiommud", opts_.limits.io_timeout);
            continue;
        }
        std::lock_guard lock(mu_);
        if (sessions_.size() >= opts_.max_sessions) {
            counters_.refused_busy.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "refused pid {}: {} sessions already (max_sessions)", cred.pid, sessions_.size());
            refuse(std::move(sock), EBUSY, "coiommud serves its maximum number of sessions",
                   std::chrono::milliseconds(100));
            continue;
        }
        auto entry = std::make_unique<Entry>();
        const uint32_t id = next_id_++;
        entry->session = std::make_unique<Session>(id, opts_.policy);
        entry->sock = std::move(sock);
        Entry* raw_entry = entry.get();
        counters_.accepted.fetch_add(1, std::memory_order_relaxed);
        CLOG_INFO(kLog, "session {}: connected (pid {}, uid {})", id, cred.pid, cred.uid);
        entry->thread = std::thread([this, raw_entry] {
            const SessionEnd end = serve(*raw_entry->session, raw_entry->sock.get(), stop_ev_.fd(), opts_.limits);
            if (end != SessionEnd::Closed && end != SessionEnd::Stopped && end != SessionEnd::PeerGone) {
                counters_.sessions_failed.fetch_add(1, std::memory_order_relaxed);
            }
            CLOG_INFO(kLog, "session {}: ended ({})", raw_entry->session->id(), to_string(end));
            raw_entry->sock.reset();  // the VMM sees end of stream now, not at the next reap
            raw_entry->done.store(true, std::memory_order_release);
        });
        sessions_.push_back(std::move(entry));
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
