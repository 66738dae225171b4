// The daemon's listener: a Unix SOCK_SEQPACKET socket, one Session per VMM past Hello, each on
// its own thread (a slow or stuck VMM blocks only its own session).
//
//  - The socket is created mode 0600 (umask during bind, then chmod); a stale socket file left by
//    a dead daemon is replaced, a live one (something answers connect) is EADDRINUSE.
//  - Every connection's peer credentials (SO_PEERCRED) are checked against allowed_uids; others
//    get an Error (EACCES) and are closed at once.
//  - Handshake: a connection waits for its Hello in a pool of at most max_pending connections,
//    held by the accept thread (no thread, no session, no session slot). A Hello must come within
//    hello_timeout (else an Error ETIMEDOUT, then close); a new connection into a full pool evicts
//    the oldest one there (an Error EBUSY), so idle connections cannot lock VMMs out: a VMM that
//    says Hello at once leaves the pool within microseconds, and an attacker has to keep opening
//    max_pending connections faster than a VMM's connect-to-Hello time to push one out. A first
//    message that is not a well-formed Hello gets its Error there, and no session.
//  - Sessions: a Hello is answered by a session only while fewer than max_sessions sessions exist
//    and fewer than max_sessions_per_uid (0: no such cap) of the peer's uid; otherwise an Error
//    (EBUSY, the text naming which bound) and close. setup_timeout runs from the Hello.
//  - File descriptors (fd_budget.h): every session is charged the fds it makes the daemon hold,
//    against max_fds_per_session, max_fds_per_uid and what RLIMIT_NOFILE leaves all sessions; a
//    Hello or setup message beyond one gets an Error (EMFILE, naming the budget) and the session
//    closes, before the daemon itself runs out. Should it run out anyway (accept4: EMFILE or
//    ENFILE), the server closes a spare fd it keeps for that, accepts, sends the connection an
//    Error (EMFILE/ENFILE, naming the limit) and closes it, reopens the spare, and so drains the
//    backlog with answers; when it cannot (no spare, or still no room) it stops watching the
//    listener for kAcceptPause instead of retrying in a loop.
//  - Statistics: sessions() lists every session with its VM name and snapshot (the
//    live engine's, or its final totals once it has torn down), and `ended` holds the final totals
//    of the sessions that ended and were reaped: a session's totals move from its entry to `ended`
//    in one step, so the sum over sessions never goes backwards. At most max_sessions entries
//    (a session holds its slot until it is reaped). The exporter labels each entry's series with
//    its VM name (exporter/METRICS.md, the vm label). aggregate() is the sum of all of that, with
//    gauges summed over the running sessions and active_sessions = the session count.
//  - stop(): stops accepting, closes the waiting connections, tells every session to end (each
//    tears down: its engine unmaps everything), joins every thread, removes the socket file.
//    Idempotent; the destructor calls it.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/daemon/fd_budget.h"
#include "engine/daemon/session.h"
#include "engine/telemetry/engine_stats.h"

namespace coiommu::daemon {

struct ServerOptions {
    std::string socket_path;
    // A listening SOCK_SEQPACKET socket handed over by systemd socket activation (coiommud.socket).
    // When valid it is served as it is: no bind, and stop() leaves the socket file to systemd.
    UniqueFd inherited_listener;
    std::vector<uid_t> allowed_uids;  // empty: only this process's effective uid
    uint32_t max_sessions = 64;
    uint32_t max_sessions_per_uid = 0;              // sessions of one uid; 0: only max_sessions
    uint32_t max_pending = 64;                      // connections waiting for their Hello
    std::chrono::milliseconds hello_timeout{1000};  // from accept to the Hello
    // fd budgets (fd_budget.h); 0: derived from RLIMIT_NOFILE at start (derive_fd_limits).
    uint64_t max_fds_per_session = 0;
    uint64_t max_fds_per_uid = 0;
    SessionLimits limits;
    SessionPolicy policy;
};

// One session's statistics for the exporter.
struct SessionSnapshot {
    uint32_t session_id = 0;            // unique for the server's lifetime
    std::string name;                   // the VMM's Hello name (printable ASCII, at most proto::kClientNameSize bytes)
    telemetry::StatsSnapshot snapshot;  // gauges zero unless the session is running
};

struct SessionSnapshots {
    std::vector<SessionSnapshot> sessions;  // sessions past Hello, by ascending session_id
    telemetry::ShardTotals ended{};         // final totals of the reaped sessions
    uint32_t active_sessions = 0;           // every session (connections before Hello are none)
};

struct ServerCounters {
    std::atomic<uint64_t> accepted{0};  // sessions started (a Hello answered)
    std::atomic<uint64_t> resumed{0};   // sessions that resumed a dead daemon's record and run again
    std::atomic<uint64_t> refused_credentials{0};
    std::atomic<uint64_t> refused_busy{0};      // max_sessions reached
    std::atomic<uint64_t> refused_uid_busy{0};  // max_sessions_per_uid reached
    std::atomic<uint64_t> evicted_pending{0};   // pushed out of a full pending pool
    std::atomic<uint64_t> hello_timeouts{0};
    std::atomic<uint64_t> bad_handshakes{0};  // a first message that was not a valid Hello
    std::atomic<uint64_t> sessions_ended{0};
    std::atomic<uint64_t> sessions_failed{0};     // ended by a protocol error, timeout or I/O error
    std::atomic<uint64_t> refused_fd_budget{0};   // a Hello or setup message beyond an fd budget
    std::atomic<uint64_t> refused_out_of_fds{0};  // accept4 EMFILE/ENFILE: accepted on the spare and refused
    std::atomic<uint64_t> accept_pauses{0};       // times the listener was unwatched for kAcceptPause
};

// How long the listener is not watched when accept4 fails and no connection can be refused.
inline constexpr std::chrono::milliseconds kAcceptPause{100};

class Server {
public:
    // Binds, listens and starts the accept thread. Errors: EINVAL (empty path, max_sessions,
    // max_pending or hello_timeout 0), ENAMETOOLONG, EADDRINUSE (a daemon already serves the path),
    // errno of socket/bind/listen or of epoll.
    [[nodiscard]] static Result<std::unique_ptr<Server>> start(ServerOptions options);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    void stop();

    [[nodiscard]] SessionSnapshots sessions() const;
    [[nodiscard]] telemetry::StatsSnapshot aggregate() const;
    [[nodiscard]] uint32_t session_count() const;
    // Connections accepted and waiting for their Hello.
    [[nodiscard]] uint32_t pending_count() const { return pending_count_.load(std::memory_order_relaxed); }
    [[nodiscard]] const ServerCounters& counters() const { return counters_; }
    [[nodiscard]] const std::string& socket_path() const { return opts_.socket_path; }
    [[nodiscard]] const FdLimits& fd_limits() const { return budget_->limits(); }
    // The fds charged to every session (the budget's view, fd_budget.h).
    [[nodiscard]] uint64_t fds_charged() const { return budget_->charged_total(); }

private:
    using Clock = std::chrono::steady_clock;

    struct Entry {
        std::unique_ptr<Session> session;
        UniqueFd sock;
        uid_t uid = 0;
        FdBudget::Account fds;  // the accept thread's, then the session thread's
        std::thread thread;
        std::atomic<bool> done{false};
    };
    // A connection before its Hello.
    struct Pending {
        UniqueFd sock;
        uid_t uid = 0;
        pid_t pid = 0;
        Clock::time_point deadline;
    };
    enum class Admitted : uint8_t { Handled, NothingYet };
    enum class Refusal : uint8_t { Refused, BacklogEmpty, NoRoom };

    explicit Server(ServerOptions options) : opts_(std::move(options)) {}
    [[nodiscard]] Status watch(int fd, uint64_t token, uint32_t events, int op);
    void accept_loop();
    [[nodiscard]] int wait_ms(Clock::time_point now) const;
    void accept_all();
    [[nodiscard]] Refusal refuse_out_of_fds(int accept_errno);
    void pause_accepting();
    void resume_accepting(Clock::time_point now);
    void on_accepted(UniqueFd sock);
    void on_readable(uint64_t token);
    void evict_oldest_pending();
    [[nodiscard]] Admitted admit(std::map<uint64_t, Pending>::iterator it);
    [[nodiscard]] Pending take_pending(std::map<uint64_t, Pending>::iterator it);
    [[nodiscard]] std::string_view capacity_refusal(const Pending& p);
    void start_session(Pending p, Message& hello, FdBudget::Account fds);
    void expire_pending(Clock::time_point now);
    void reap(bool all);

    ServerOptions opts_;
    UniqueFd listen_;
    bool owns_socket_file_ = true;  // false for a socket-activated listener
    EventFd stop_ev_;

    // The accept thread's own (no lock): its epoll set, the connections before Hello by the order
    // they came in (keys are epoll tokens, never reused).
    UniqueFd epoll_;
    std::map<uint64_t, Pending> pending_;
    uint64_t next_token_ = 2;  // 0: the listener, 1: the stop event
    std::vector<std::byte> buf_;
    std::atomic<uint32_t> pending_count_{0};
    UniqueFd spare_;  // closed to make room for one refusal when accept4 says EMFILE/ENFILE
    std::optional<Clock::time_point> paused_until_;  // the listener is out of the epoll set until then
    std::unique_ptr<FdBudget> budget_;

    std::thread acceptor_;
    std::atomic<bool> stopped_{false};
    std::mutex stop_mu_;

    mutable std::mutex mu_;
    std::list<std::unique_ptr<Entry>> sessions_;
    telemetry::ShardTotals retired_{};  // final totals of ended sessions
    uint32_t next_id_ = 1;
    ServerCounters counters_;
};

// Sums the gauges of several snapshots (pinned pages, entries, limits, RAM, vCPUs, parked
// unpinners, queue depth; the last unpin run is the latest) and their totals.
void merge_snapshot(telemetry::StatsSnapshot& into, const telemetry::StatsSnapshot& other);

}  // namespace coiommu::daemon
