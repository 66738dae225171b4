// The daemon's file descriptors, budgeted per session, per uid and for all sessions together, so
// that one tenant's legal sessions cannot take the daemon to its RLIMIT_NOFILE (issue #15 §2):
// a setup message that would pass a budget is refused with EMFILE, whose text names the budget,
// while the daemon keeps the descriptors it needs to accept, refuse and serve everyone else.
//
// What a session is charged (fds_added_by), at the message that makes it hold them, so that a VM
// that cannot fit is refused before it sends them:
//   Hello        kSessionBaseFds: its socket and the engine's own (eventfds, timerfds, epoll)
//   SetMemory    the memfds it carries (the daemon keeps them with the mappings)
//   SetTopology  kTopologyFds (notifymap, topologymap, a resumable session's host record) + 2 per
//                vCPU: the device's trigger eventfd and the VMM's one that SetTriggers will bring
//                (charged here: SetTriggers adds nothing); Resume is charged the same
//   SetBackend   the fd it carries (the VFIO container or the iommufd; 0 for fake and null)
//   any other    the fds it carries
// The charge is an upper bound of what the session holds (tests/integration/daemon checks it
// against /proc/<pid>/fd); it is returned when the session's account is destroyed.
//
// Limits (FdLimits): `total` is what all sessions together may hold, RLIMIT_NOFILE minus a reserve
// for everything that is not a session (the listener, the waiting connections, the exporter, the
// tracer, logs); `per_uid` and `per_session` are the configured budgets (max_fds_per_uid,
// max_fds_per_session), by default derived from RLIMIT_NOFILE (derive_fd_limits).
//
// Thread-safety: FdBudget's methods may be called from any thread (one mutex, taken only for
// messages that change a charge: setup, never the Running messages). An Account belongs to one
// thread at a time.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "engine/base/result.h"
#include "engine/core/spec.h"
#include "engine/daemon/protocol_io.h"

namespace coiommu::daemon {

// A session's fds before its setup: the socket, and the engine's own (at most 8 today).
inline constexpr uint64_t kSessionBaseFds = 16;
// The daemon's own fds of a device, beyond the per-vCPU eventfds (see the table above).
inline constexpr uint64_t kTopologyFds = 3;
// The most a valid session can be charged: 64 memfds, the device's, 1024 vCPUs (2 fds each), a
// backend fd. The default per-session budget admits any VM the protocol allows.
inline constexpr uint64_t kMaxSessionFds =
    kSessionBaseFds + proto::kMaxRegions + kTopologyFds + 2 * core::kMaxVcpus + 1;
// Kept out of the sessions' budget beyond the waiting connections (max_pending): the listener,
// epoll, the spare fd for refusals, signalfd, the exporter's sockets, the tracer's maps and
// programs, logs.
inline constexpr uint64_t kDaemonReserveFds = 128;

struct FdLimits {
    uint64_t per_session = 0;
    uint64_t per_uid = 0;
    uint64_t total = 0;          // every session together
    uint64_t rlimit_nofile = 0;  // the soft limit the others were derived from
};

// The limits for a process whose soft RLIMIT_NOFILE is `nofile`: total = nofile - max_pending -
// kDaemonReserveFds (at least kSessionBaseFds); per_uid = `per_uid` or, when 0, total; per_session
// = `per_session` or, when 0, min(kMaxSessionFds, total). Configured values above total are kept
// (total still bounds them).
[[nodiscard]] FdLimits derive_fd_limits(rlim_t nofile, uint32_t max_pending, uint64_t per_session, uint64_t per_uid);

// The fds `msg` makes a session hold beyond what it held (see the table above); 0 for every
// message that adds none, and for a SetTopology whose vCPU count is out of range (the session
// refuses it).
[[nodiscard]] uint64_t fds_added_by(const Message& msg);

class FdBudget {
public:
    explicit FdBudget(FdLimits limits) : limits_(limits) {}
    FdBudget(const FdBudget&) = delete;
    FdBudget& operator=(const FdBudget&) = delete;

    // One session's charge; returned to the budget on destruction. Move-only.
    class Account {
    public:
        Account() = default;
        ~Account() { release(); }
        Account(Account&& o) noexcept;
        Account& operator=(Account&& o) noexcept;
        Account(const Account&) = delete;
        Account& operator=(const Account&) = delete;
        // Returns the charge now (the session has closed its fds). Idempotent.
        void release();
        [[nodiscard]] uint64_t charged() const { return charged_; }

    private:
        friend class FdBudget;
        FdBudget* budget_ = nullptr;
        uid_t uid_ = 0;
        uint64_t charged_ = 0;
    };

    // Opens an account of `uid` charged `fds`. Errors: EMFILE when a budget has no room (the
    // text names it and what is left).
    [[nodiscard]] Result<Account> open(uid_t uid, uint64_t fds);
    // Adds `fds` to the account for `what` (a message name, for the text). Errors: EMFILE as open.
    // Precondition: `a` was opened by this budget.
    [[nodiscard]] Status charge(Account& a, uint64_t fds, std::string_view what);

    [[nodiscard]] const FdLimits& limits() const { return limits_; }
    [[nodiscard]] uint64_t charged_total() const;
    [[nodiscard]] uint64_t charged_to(uid_t uid) const;

private:
    [[nodiscard]] Status admit_locked(uid_t uid, uint64_t session_has, uint64_t fds, std::string_view what) const;
    void give_back(uid_t uid, uint64_t fds);

    const FdLimits limits_;
    mutable std::mutex mu_;
    std::map<uid_t, uint64_t> by_uid_;  // guarded by mu_; uids with a charge only
    uint64_t total_ = 0;                // guarded by mu_
};

// The ReceiveCheck of one session's thread: charges every received message's fds_added_by() to
// the session's account; a message beyond a budget is refused (EMFILE) before the session sees it.
class FdBudgetCheck final : public ReceiveCheck {
public:
    // `refused` counts the messages refused.
    FdBudgetCheck(FdBudget& budget, FdBudget::Account& account, std::atomic<uint64_t>& refused)
        : budget_(budget), account_(account), refused_(refused) {}
    [[nodiscard]] Status check(const Message& msg) override;

private:
    FdBudget& budget_;
    FdBudget::Account& account_;
    std::atomic<uint64_t>& refused_;
};

}  // namespace coiommu::daemon
