#include "engine/daemon/resuming_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::daemon {
namespace {
constexpr const char* kLog = "client";
using Clock = std::chrono::steady_clock;

Error ended_error(std::string_view why) { return Error{EPIPE, std::string(why)}; }
}  // namespace

bool ResumingClient::connection_lost(int code) { return code == EPIPE || code == ECONNRESET || code == ENOTCONN; }

// The daemon is not (yet) there, is starting, or went again mid-resume.
bool ResumingClient::worth_retrying(int code) {
    return connection_lost(code) || code == ENOENT || code == ECONNREFUSED || code == EAGAIN || code == EBUSY ||
           code == ETIMEDOUT || code == EMFILE || code == ENFILE || code == EINTR;
}

Result<std::unique_ptr<ResumingClient>> ResumingClient::start(SessionSpec spec, ReconnectPolicy policy) {
    if (spec.vcpus == 0) return make_error(EINVAL, "ResumingClient: no vCPUs");
    if (spec.triggers.size() != spec.vcpus) {
        return make_error(
            EINVAL, fmt::format("ResumingClient: {} trigger eventfds for {} vCPUs", spec.triggers.size(), spec.vcpus));
    }
    // A fake backend in a shared state is a resumable session's (the daemon takes its fd only then).
    if (spec.backend.kind == proto::BackendKind::Fake && spec.backend.fake.shared_state >= 0) {
        spec.features |= proto::kFeatureResume;
    }
    if (policy.reconnect == Reconnect::On) {
        spec.features |= proto::kFeatureResume;
        if (spec.backend.kind == proto::BackendKind::Fake && spec.backend.fake.shared_state < 0) {
            return make_error(EINVAL,
                              "ResumingClient: a reconnecting session with the fake backend needs its shared state "
                              "(FakeBackend::create_shared_state), or its mappings would die with the daemon");
        }
    }
    std::unique_ptr<ResumingClient> rc(new ResumingClient(std::move(spec), std::move(policy)));
    COIOMMU_TRY(rc->set_up());
    if (rc->policy_.reconnect == Reconnect::On) {
        COIOMMU_ASSIGN_OR_RETURN(rc->stop_watch_, EventFd::create());
        rc->watcher_ = std::thread([raw = rc.get()] { raw->watch_connection(); });
    }
    return rc;
}

ResumingClient::~ResumingClient() {
    {
        std::lock_guard lock(mu_);
        if (!ended_) ended_ = ended_error("the client was destroyed");
    }
    if (watcher_.joinable()) {
        (void)stop_watch_.signal();
        watcher_.join();
    }
}

void ResumingClient::watch_connection() {
    for (;;) {
        auto cur = current();
        if (!cur) return;  // closed, disconnected, given up
        // The Client (and so its fd) stays alive while polled: `cur` holds it.
        pollfd fds[2] = {{cur->first->fd(), POLLRDHUP, 0}, {stop_watch_.fd(), POLLIN, 0}};
        const int n = ::poll(fds, 2, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            CLOG_ERROR(kLog, "watching the coiommud connection: {}", std::strerror(errno));
            return;
        }
        if ((fds[1].revents & POLLIN) != 0) return;
        if ((fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0) continue;
        // The daemon hung up. Recover unless a request already did (the generation moved on) or
        // the session ended; recover() decides under its lock.
        if (!recover(cur->second, Error{ECONNRESET, "coiommud hung up"})) return;
    }
}

Status ResumingClient::set_up() {
    const std::string where = fmt::format("coiommud at {}", spec_.socket_path);
    auto client = Client::connect(spec_.socket_path, spec_.name, spec_.features);
    if (!client) return coiommu::unexpected(with_context(client.error(), where));
    Client& c = **client;
    if (policy_.reconnect == Reconnect::On && (c.hello_info().features & proto::kFeatureResume) == 0) {
        return make_error(ENOTSUP, where + ": the daemon does not offer resumable sessions (protocol 1.2)");
    }
    COIOMMU_TRY(c.set_memory(spec_.regions), where);
    auto dev = c.set_topology(spec_.vcpus, spec_.endpoints);
    if (!dev) return coiommu::unexpected(with_context(dev.error(), where));
    dev_ = std::move(*dev);
    auto backend = choose_backend(c);
    if (!backend) return coiommu::unexpected(with_context(backend.error(), where));
    auto running = hand_over_triggers(c);
    if (!running) return coiommu::unexpected(with_context(running.error(), where));
    std::lock_guard lock(mu_);
    backend_ = std::move(*backend);
    client_ = std::shared_ptr<Client>(std::move(*client));
    return ok();
}

Result<BackendInfo> ResumingClient::choose_backend(Client& c) const {
    const BackendChoice& b = spec_.backend;
    switch (b.kind) {
        case proto::BackendKind::Null: return c.set_backend_null(b.entry_limit);
        case proto::BackendKind::Fake: return c.set_backend_fake(b.fake);
        case proto::BackendKind::Vfio: {
            // The daemon gets its own descriptor of the container; the VMM keeps its own.
            UniqueFd dup(::fcntl(b.fd, F_DUPFD_CLOEXEC, 0));
            if (!dup) return make_error(errno, "duplicating the VFIO container fd");
            return c.set_backend_vfio(std::move(dup), b.entry_limit);
        }
        case proto::BackendKind::Iommufd: {
            UniqueFd dup(::fcntl(b.fd, F_DUPFD_CLOEXEC, 0));
            if (!dup) return make_error(errno, "duplicating the iommufd");
            return c.set_backend_iommufd(std::move(dup), b.ioas_id);
        }
    }
    return make_error(EINVAL, "unknown backend kind");
}

Result<bool> ResumingClient::hand_over_triggers(Client& c) const {
    COIOMMU_ASSIGN_OR_RETURN(bool running, c.set_triggers(spec_.triggers));
    if (!running) return make_error(EPROTO, "the daemon is not running the engine after SetTriggers");
    return running;
}

Result<std::shared_ptr<Client>> ResumingClient::connect_and_resume(uint64_t first_seq) {
    COIOMMU_ASSIGN_OR_RETURN(UniqueFd sock, connect_seqpacket(spec_.socket_path));
    std::shared_ptr<Client> c(Client::adopt(std::move(sock)));
    c->set_next_seq(first_seq);  // register writes keep one numbering across connections
    COIOMMU_TRY(c->hello(spec_.name, spec_.features));
    COIOMMU_TRY(c->set_memory(spec_.regions));
    COIOMMU_ASSIGN_OR_RETURN(ResumeInfo info, c->resume(spec_.vcpus, spec_.endpoints, dev_.notifymap.get(),
                                                        dev_.topologymap.get(), dev_.record.get()));
    COIOMMU_ASSIGN_OR_RETURN(BackendInfo backend, choose_backend(*c));
    COIOMMU_TRY(hand_over_triggers(*c));
    {
        std::lock_guard lock(mu_);
        backend_ = std::move(backend);
        last_resume_ = info;
    }
    CLOG_INFO(kLog, "resumed session {} with coiommud at {}: {} extents ({} pages) kept, {} in progress settled",
              c->hello_info().session_id, spec_.socket_path, info.extents, info.pages, info.in_progress);
    if (policy_.on_resumed) policy_.on_resumed(info);
    return c;
}

Result<std::pair<std::shared_ptr<Client>, uint64_t>> ResumingClient::current() const {
    std::lock_guard lock(mu_);
    if (ended_) return coiommu::unexpected(*ended_);
    return std::make_pair(client_, gen_);
}

Status ResumingClient::recover(uint64_t gen, const Error& why) {
    std::lock_guard recovering(recover_mu_);
    std::shared_ptr<Client> old;
    {
        std::lock_guard lock(mu_);
        if (ended_) return coiommu::unexpected(*ended_);
        if (gen_ != gen) return ok();                                          // another caller has resumed already
        if (closing_) return coiommu::unexpected(with_context(why, "Close"));  // no resume after Close
        if (policy_.reconnect == Reconnect::Off) {
            ended_ = with_context(why, fmt::format("coiommud at {} went away", spec_.socket_path));
            return coiommu::unexpected(*ended_);
        }
        old = client_;
    }
    CLOG_WARN(kLog, "lost coiommud at {} ({}): resuming", spec_.socket_path, why.message());
    if (policy_.on_lost) policy_.on_lost(why);
    // Past every seq the old connection used, so a re-sent register write is the only repeat.
    const uint64_t first_seq = old->next_seq() + 1;
    const auto give_up_at = Clock::now() + policy_.give_up_after;
    auto delay = policy_.first_delay;
    uint32_t attempts = 0;
    for (;;) {
        ++attempts;
        auto next = connect_and_resume(first_seq);
        if (next) {
            std::lock_guard lock(mu_);
            if (ended_) return coiommu::unexpected(*ended_);  // disconnect() while resuming
            client_ = std::move(*next);
            ++gen_;
            ++resumes_;
            return ok();
        }
        const auto now = Clock::now();
        if (!worth_retrying(next.error().code) || now >= give_up_at) {
            std::lock_guard lock(mu_);
            ended_ = with_context(
                next.error(), fmt::format("resuming with coiommud at {} ({} attempts)", spec_.socket_path, attempts));
            CLOG_ERROR(kLog, "{}", ended_->message());
            return coiommu::unexpected(*ended_);
        }
        CLOG_DEBUG(kLog, "resume attempt {}: {}; next in {} ms", attempts, next.error().message(), delay.count());
        std::this_thread::sleep_for(std::min<Clock::duration>(delay, give_up_at - now));
        delay = std::min(delay * 2, policy_.max_delay);
        std::lock_guard lock(mu_);
        if (ended_) return coiommu::unexpected(*ended_);
    }
}

template <class F>
auto ResumingClient::with_retry(F&& f) -> decltype(f(std::declval<Client&>())) {
    for (;;) {
        auto cur = current();
        if (!cur) return coiommu::unexpected(cur.error());
        auto r = f(*cur->first);
        if (r || !connection_lost(r.error().code)) return r;
        COIOMMU_TRY(recover(cur->second, r.error()));
    }
}

HelloInfo ResumingClient::hello_info() const {
    std::lock_guard lock(mu_);
    return client_ ? client_->hello_info() : HelloInfo{};
}

BackendInfo ResumingClient::backend_info() const {
    std::lock_guard lock(mu_);
    return backend_;
}

bool ResumingClient::ended() const {
    std::lock_guard lock(mu_);
    return ended_.has_value();
}

std::optional<ResumeInfo> ResumingClient::last_resume() const {
    std::lock_guard lock(mu_);
    return last_resume_;
}

uint64_t ResumingClient::resumes() const {
    std::lock_guard lock(mu_);
    return resumes_;
}

Status ResumingClient::mmio_write(uint64_t offset, std::span<const std::byte> data) {
    // One seq for every attempt: a write the dead daemon applied is not applied again.
    std::optional<RequestSeq> seq;
    return with_retry([&](Client& c) {
        if (!seq) seq = c.reserve_seq();
        return c.mmio_write(*seq, offset, data);
    });
}

Status ResumingClient::mmio_read(uint64_t offset, std::span<std::byte> data) {
    return with_retry([&](Client& c) { return c.mmio_read(offset, data); });
}

Result<telemetry::BalloonResult> ResumingClient::balloon_unpin(std::span<const GfnRange> ranges) {
    return with_retry([&](Client& c) { return c.balloon_unpin(ranges); });
}

Result<RemoteStats> ResumingClient::stats() {
    return with_retry([&](Client& c) { return c.stats(); });
}

Result<bool> ResumingClient::query_mapped(Iova iova, uint64_t size) {
    return with_retry([&](Client& c) { return c.query_mapped(iova, size); });
}

Result<CloseInfo> ResumingClient::close() {
    {
        std::lock_guard lock(mu_);
        closing_ = true;
    }
    auto r = with_retry([&](Client& c) { return c.close(); });
    std::lock_guard lock(mu_);
    if (!ended_) ended_ = ended_error("the session was closed");
    return r;
}

void ResumingClient::disconnect() {
    std::lock_guard lock(mu_);
    if (ended_) return;
    ended_ = ended_error("disconnected by the VMM");
    // shutdown(2), not close(2): the daemon sees end of stream, and the descriptor stays valid for
    // a thread still inside a call (which then fails with EPIPE).
    if (client_) ::shutdown(client_->fd(), SHUT_RDWR);
}

}  // namespace coiommu::daemon
