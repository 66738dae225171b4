// The daemon's listener: a Unix SOCK_SEQPACKET socket, one Session per accepted VMM, each on its
// own thread (a slow or stuck VMM blocks only its own session).
//
//  - The socket is created mode 0600 (umask during bind, then chmod); a stale socket file left by
//    a dead daemon is replaced, a live one (something answers connect) is EADDRINUSE.
//  - Every connection's peer credentials (SO_PEERCRED) are checked against allowed_uids; others
//    get an Error (EACCES) and are closed at once.
//  - At most max_sessions sessions: one more gets an Error (EBUSY) and is closed (flood bound).
//  - Statistics: sessions() lists every session past Hello with its VM name and snapshot (the
//    live engine's, or its final totals once it has torn down), and `ended` holds the final totals
//    of the sessions that ended and were reaped: a session's totals move from its entry to `ended`
//    in one step, so the sum over sessions never goes backwards. At most max_sessions entries
//    (a session holds its slot until it is reaped). The exporter labels each entry's series with
//    its VM name (exporter/METRICS.md, the vm label). aggregate() is the sum of all of that, with
//    gauges summed over the running sessions and active_sessions = the session count.
//  - stop(): stops accepting, tells every session to end (each tears down: its engine unmaps
//    everything), joins every thread, removes the socket file. Idempotent; the destructor calls it.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
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
    uint32_t active_sessions = 0;           // every session, including those before Hello
};

struct ServerCounters {
    std::atomic<uint64_t> accepted{0};
    std::atomic<uint64_t> refused_credentials{0};
    std::atomic<uint64_t> refused_busy{0};
    std::atomic<uint64_t> sessions_ended{0};
    std::atomic<uint64_t> sessions_failed{0};  // ended by a protocol error, timeout or I/O error
};

class Server {
public:
    // Binds, listens and starts the accept thread. Errors: EINVAL (empty path, max_sessions 0),
    // ENAMETOOLONG, EADDRINUSE (a daemon already serves the path), errno of socket/bind/listen.
    [[nodiscard]] static Result<std::unique_ptr<Server>> start(ServerOptions options);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    void stop();

    [[nodiscard]] SessionSnapshots sessions() const;
    [[nodiscard]] telemetry::StatsSnapshot aggregate() const;
    [[nodiscard]] uint32_t session_count() const;
    [[nodiscard]] const ServerCounters& counters() const { return counters_; }
    [[nodiscard]] const std::string& socket_path() const { return opts_.socket_path; }

private:
    struct Entry {
        std::unique_ptr<Session> session;
        UniqueFd sock;
        std::thread thread;
        std::atomic<bool> done{false};
    };

    explicit Server(ServerOptions options) : opts_(std::move(options)) {}
    void accept_loop();
    void accept_one();
    void reap(bool all);

    ServerOptions opts_;
    UniqueFd listen_;
    bool owns_socket_file_ = true;  // false for a socket-activated listener
    EventFd stop_ev_;
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
