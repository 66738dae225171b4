#include "engine/daemon/fd_budget.h"

#include <algorithm>
#include <cerrno>
#include <utility>

#include <fmt/format.h>

namespace coiommu::daemon {

FdLimits derive_fd_limits(rlim_t nofile, uint32_t max_pending, uint64_t per_session, uint64_t per_uid) {
    FdLimits l;
    l.rlimit_nofile = nofile == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(nofile);
    const uint64_t reserve = uint64_t{max_pending} + kDaemonReserveFds;
    l.total = l.rlimit_nofile > reserve + kSessionBaseFds ? l.rlimit_nofile - reserve : kSessionBaseFds;
    l.per_uid = per_uid != 0 ? per_uid : l.total;
    l.per_session = per_session != 0 ? per_session : std::min(kMaxSessionFds, l.total);
    return l;
}

uint64_t fds_added_by(const Message& msg) {
    // Resume carries SetTopology's payload and hands back the three device fds SetTopology made.
    if (msg.header.type == static_cast<uint16_t>(proto::MsgType::SetTopology) ||
        msg.header.type == static_cast<uint16_t>(proto::MsgType::Resume)) {
        const auto req = read_wire<proto::SetTopologyReq>(msg.payload);
        // Out of range: the session refuses it (EINVAL) and creates nothing.
        if (!req || req->vcpus == 0 || req->vcpus > core::kMaxVcpus) return 0;
        return kTopologyFds + 2 * uint64_t{req->vcpus};
    }
    // Reserved by SetTopology.
    if (msg.header.type == static_cast<uint16_t>(proto::MsgType::SetTriggers)) return 0;
    // SetMemory's memfds, SetBackend's container or iommufd; whatever another message carries is
    // charged too until the session has closed it (a message the session refuses closes it).
    return msg.fds.size();
}

FdBudget::Account::Account(Account&& o) noexcept
    : budget_(std::exchange(o.budget_, nullptr)), uid_(o.uid_), charged_(std::exchange(o.charged_, 0)) {}

FdBudget::Account& FdBudget::Account::operator=(Account&& o) noexcept {
    if (this != &o) {
        release();
        budget_ = std::exchange(o.budget_, nullptr);
        uid_ = o.uid_;
        charged_ = std::exchange(o.charged_, 0);
    }
    return *this;
}

void FdBudget::Account::release() {
    if (budget_ != nullptr && charged_ != 0) budget_->give_back(uid_, charged_);
    charged_ = 0;
}

Status FdBudget::admit_locked(uid_t uid, uint64_t session_has, uint64_t fds, std::string_view what) const {
    if (session_has + fds > limits_.per_session) {
        return make_error(EMFILE, fmt::format("{} would make this session hold {} fds, over max_fds_per_session {}",
                                              what, session_has + fds, limits_.per_session));
    }
    // The process-wide limit first: when it is what is exhausted, that is the cause to name (a
    // derived per-uid budget equals it).
    if (total_ + fds > limits_.total) {
        return make_error(EMFILE, fmt::format("{} needs {} more fds; all sessions hold {} of the {} that "
                                              "RLIMIT_NOFILE {} leaves them",
                                              what, fds, total_, limits_.total, limits_.rlimit_nofile));
    }
    const auto it = by_uid_.find(uid);
    const uint64_t of_uid = it == by_uid_.end() ? 0 : it->second;
    if (of_uid + fds > limits_.per_uid) {
        return make_error(EMFILE, fmt::format("{} needs {} more fds; the sessions of uid {} hold {} of "
                                              "max_fds_per_uid {}",
                                              what, fds, uid, of_uid, limits_.per_uid));
    }
    return ok();
}

Result<FdBudget::Account> FdBudget::open(uid_t uid, uint64_t fds) {
    std::lock_guard lock(mu_);
    COIOMMU_TRY(admit_locked(uid, 0, fds, "a new session"));
    by_uid_[uid] += fds;
    total_ += fds;
    Account a;
    a.budget_ = this;
    a.uid_ = uid;
    a.charged_ = fds;
    return a;
}

Status FdBudget::charge(Account& a, uint64_t fds, std::string_view what) {
    if (fds == 0) return ok();
    std::lock_guard lock(mu_);
    COIOMMU_TRY(admit_locked(a.uid_, a.charged_, fds, what));
    by_uid_[a.uid_] += fds;
    total_ += fds;
    a.charged_ += fds;
    return ok();
}

void FdBudget::give_back(uid_t uid, uint64_t fds) {
    std::lock_guard lock(mu_);
    const auto it = by_uid_.find(uid);
    if (it != by_uid_.end()) {
        it->second -= std::min(it->second, fds);
        if (it->second == 0) by_uid_.erase(it);
    }
    total_ -= std::min(total_, fds);
}

uint64_t FdBudget::charged_total() const {
    std::lock_guard lock(mu_);
    return total_;
}

uint64_t FdBudget::charged_to(uid_t uid) const {
    std::lock_guard lock(mu_);
    const auto it = by_uid_.find(uid);
    return it == by_uid_.end() ? 0 : it->second;
}

Status FdBudgetCheck::check(const Message& msg) {
    const uint64_t fds = fds_added_by(msg);
    if (fds == 0) return ok();  // no lock for the Running messages
    const auto type = proto::request_type(msg.header.type);
    auto st = budget_.charge(account_, fds, type ? proto::to_string(*type) : "a message");
    if (!st) refused_.fetch_add(1, std::memory_order_relaxed);
    return st;
}

}  // namespace coiommu::daemon
