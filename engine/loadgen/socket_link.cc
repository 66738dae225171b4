#include "engine/loadgen/socket_link.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::loadgen {
namespace {
constexpr const char* kLog = "loadgen";

Result<daemon::BackendInfo> choose_backend(daemon::Client& c, const SocketLinkConfig& cfg) {
    switch (cfg.backend) {
        case RemoteBackend::Null: return c.set_backend_null(cfg.entry_limit);
        case RemoteBackend::Fake: return c.set_backend_fake(daemon::FakeBackendSpec{cfg.latency, cfg.entry_limit});
        case RemoteBackend::Vfio: {
            // The daemon gets its own descriptor of the same container; ours stays the VMM's.
            UniqueFd dup(::fcntl(cfg.vfio_container_fd, F_DUPFD_CLOEXEC, 0));
            if (!dup) return make_error(errno, "duplicating the VFIO container fd");
            return c.set_backend_vfio(std::move(dup), cfg.entry_limit);
        }
        case RemoteBackend::Iommufd: {
            UniqueFd dup(::fcntl(cfg.iommufd, F_DUPFD_CLOEXEC, 0));
            if (!dup) return make_error(errno, "duplicating the iommufd");
            return c.set_backend_iommufd(std::move(dup), cfg.ioas_id);
        }
    }
    return make_error(EINVAL, "unknown remote backend");
}
}  // namespace

Result<std::unique_ptr<SocketLink>> SocketLink::create(const GuestMemory& mem, const SocketLinkConfig& cfg) {
    const std::string where = fmt::format("coiommud at {}", cfg.socket_path);
    auto client = daemon::Client::connect(cfg.socket_path, "coiommu-load");
    if (!client) return coiommu::unexpected(with_context(client.error(), where));
    std::unique_ptr<SocketLink> link(new SocketLink(cfg, std::move(*client)));
    daemon::Client& c = *link->client_;
    COIOMMU_TRY(c.set_memory(mem), where);
    auto dev = c.set_topology(cfg.vcpus, cfg.endpoints);
    if (!dev) return coiommu::unexpected(with_context(dev.error(), where));
    link->dev_ = std::move(*dev);
    auto backend = choose_backend(c, cfg);
    if (!backend) return coiommu::unexpected(with_context(backend.error(), where));
    link->backend_ = *backend;
    link->can_query_ =
        cfg.backend == RemoteBackend::Fake && (c.hello_info().features & daemon::proto::kFeatureQueryMapped) != 0;
    // The VMM owns the trigger eventfds (KVM ioeventfds on BAR0 in a real VMM) and lends them.
    std::vector<int> fds;
    for (uint32_t i = 0; i < cfg.vcpus; ++i) {
        auto ev = EventFd::create(Blocking::No);
        if (!ev) return coiommu::unexpected(with_context(ev.error(), "trigger eventfd"));
        fds.push_back(ev->fd());
        link->triggers_.push_back(std::move(*ev));
    }
    auto running = c.set_triggers(fds);
    if (!running) return coiommu::unexpected(with_context(running.error(), where));
    if (!*running) return make_error(EPROTO, where + ": the daemon is not running the engine after SetTriggers");
    return link;
}

SocketLink::~SocketLink() { shutdown(); }

template <class R>
R SocketLink::watch(R r) {
    if (r) return r;
    const int err = r.error().code;
    if (err != EPIPE && err != ECONNRESET && err != ENOTCONN) return r;
    std::lock_guard lock(lost_mu_);
    if (!lost_.load(std::memory_order_relaxed)) {
        lost_reason_ = r.error().message();
        lost_.store(true, std::memory_order_relaxed);
    }
    return r;
}

std::string SocketLink::lost_reason() const {
    std::lock_guard lock(lost_mu_);
    return lost_reason_;
}

Status SocketLink::mmio_write(uint64_t offset, std::span<const std::byte> data) {
    return watch(client_->mmio_write(offset, data));
}

Status SocketLink::mmio_read(uint64_t offset, std::span<std::byte> data) {
    return watch(client_->mmio_read(offset, data));
}

Result<bool> SocketLink::active() {
    auto s = watch(client_->stats());
    if (!s) return coiommu::unexpected(s.error());
    return s->head.active != 0;
}

Result<telemetry::BalloonResult> SocketLink::balloon_unpin(std::span<const workers::GfnRange> ranges) {
    return watch(client_->balloon_unpin(ranges));
}

Result<telemetry::StatsSnapshot> SocketLink::stats() {
    auto s = watch(client_->stats());
    if (!s) return coiommu::unexpected(s.error());
    return std::move(s->snapshot);
}

Result<daemon::RemoteStats> SocketLink::remote_stats() { return watch(client_->stats()); }

Result<bool> SocketLink::query_mapped(Iova iova, uint64_t size) { return watch(client_->query_mapped(iova, size)); }

std::string SocketLink::engine_description() const {
    return fmt::format("coiommud at {} (session {}, backend {})", cfg_.socket_path, client_->hello_info().session_id,
                       backend_.name);
}

void SocketLink::shutdown() {
    std::lock_guard lock(close_mu_);
    if (closed_) return;
    closed_ = true;
    if (lost()) return;  // nobody to say Close to
    auto info = client_->close();
    if (!info) {
        CLOG_WARN(kLog, "closing the coiommud session: {}", info.error().message());
        return;
    }
    close_info_ = *info;
}

void SocketLink::disconnect() {
    std::lock_guard lock(close_mu_);
    if (closed_) return;
    closed_ = true;
    {
        std::lock_guard lost_lock(lost_mu_);
        if (!lost_.load(std::memory_order_relaxed)) lost_reason_ = "disconnected by the VMM";
        lost_.store(true, std::memory_order_relaxed);
    }
    // shutdown(2), not close(2): the daemon sees end of stream, and the descriptor stays valid
    // for any thread still inside a call (which then fails with EPIPE).
    ::shutdown(client_->fd(), SHUT_RDWR);
}

std::optional<daemon::CloseInfo> SocketLink::close_info() const {
    std::lock_guard lock(close_mu_);
    return close_info_;
}

}  // namespace coiommu::loadgen
