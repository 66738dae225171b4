#include "engine/loadgen/socket_link.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/host_record.h"

namespace coiommu::loadgen {
namespace {
constexpr const char* kLog = "loadgen";
constexpr uint64_t kFakeEntries = 65535;  // the daemon's default fake entry limit

daemon::BackendChoice backend_choice(const SocketLinkConfig& cfg) {
    daemon::BackendChoice b;
    b.entry_limit = cfg.entry_limit;
    switch (cfg.backend) {
        case RemoteBackend::Null: b.kind = daemon::proto::BackendKind::Null; break;
        case RemoteBackend::Fake:
            b.kind = daemon::proto::BackendKind::Fake;
            // A shared state sizes itself: the daemon's entry limit is its slot count.
            b.fake = daemon::FakeBackendSpec{cfg.latency, cfg.fake_shared_state >= 0 ? 0 : cfg.entry_limit,
                                             cfg.fake_shared_state};
            break;
        case RemoteBackend::Vfio:
            b.kind = daemon::proto::BackendKind::Vfio;
            b.fd = cfg.vfio_container_fd;
            break;
        case RemoteBackend::Iommufd:
            b.kind = daemon::proto::BackendKind::Iommufd;
            b.fd = cfg.iommufd;
            b.ioas_id = cfg.ioas_id;
            break;
    }
    return b;
}

}  // namespace

Result<std::unique_ptr<SocketLink>> SocketLink::create(const GuestMemory& mem, const SocketLinkConfig& cfg) {
    if (cfg.backend == RemoteBackend::Vfio && cfg.vfio_container_fd < 0) {
        return make_error(EBADF, "--connect --backend vfio: no container fd");
    }
    std::unique_ptr<SocketLink> link(new SocketLink(cfg));
    if (cfg.reconnect == daemon::Reconnect::On && cfg.backend == RemoteBackend::Fake && cfg.fake_shared_state < 0) {
        // The fake's mappings must outlive the daemon as a container's do: this VMM holds them.
        auto state = dma::FakeBackend::create_shared_state(cfg.entry_limit != 0 ? cfg.entry_limit : kFakeEntries);
        if (!state) return coiommu::unexpected(with_context(state.error(), "fake backend shared state"));
        link->own_state_ = std::move(*state);
        link->cfg_.fake_shared_state = link->own_state_.get();
    }
    const SocketLinkConfig& c = link->cfg_;
    // The VMM owns the trigger eventfds (KVM ioeventfds on BAR0 in a real VMM) and lends them.
    daemon::SessionSpec spec;
    for (uint32_t i = 0; i < c.vcpus; ++i) {
        auto ev = EventFd::create(Blocking::No);
        if (!ev) return coiommu::unexpected(with_context(ev.error(), "trigger eventfd"));
        spec.triggers.push_back(ev->fd());
        link->triggers_.push_back(std::move(*ev));
    }
    spec.socket_path = c.socket_path;
    spec.name = "coiommu-load";
    spec.regions = mem.layout();
    spec.vcpus = c.vcpus;
    spec.endpoints = c.endpoints;
    spec.backend = backend_choice(c);
    daemon::ReconnectPolicy policy;
    policy.reconnect = c.reconnect;
    policy.give_up_after = c.reconnect_timeout;
    SocketLink* raw_link = link.get();
    const GuestMemory* raw_mem = &mem;
    policy.on_lost = [raw_link, raw_mem](const Error&) { raw_link->audit_after_loss(*raw_mem); };
    auto client = daemon::ResumingClient::start(std::move(spec), std::move(policy));
    if (!client) return coiommu::unexpected(client.error());
    link->client_ = std::move(*client);
    link->can_query_ = c.backend == RemoteBackend::Fake &&
                       (link->client_->hello_info().features & daemon::proto::kFeatureQueryMapped) != 0;
    return link;
}

void SocketLink::audit_after_loss(const GuestMemory& mem) {
    if (cfg_.backend != RemoteBackend::Fake || cfg_.fake_shared_state < 0 || !client_->device().record) return;
    // The daemon is gone (end of stream: its process has closed every fd), so neither the record
    // nor the shared state changes until the next daemon resumes.
    std::string problem;
    dma::RecordAudit a;
    UniqueFd rec_fd(::fcntl(client_->device().record.get(), F_DUPFD_CLOEXEC, 0));
    auto rec = rec_fd ? dma::HostRecord::adopt(std::move(rec_fd), mem.gfn_span())
                      : Result<dma::HostRecord>(make_error(errno, "dup host record"));
    auto live = dma::FakeBackend::read_shared_state(cfg_.fake_shared_state);
    if (!rec) {
        problem = rec.error().message();
    } else if (!live) {
        problem = live.error().message();
    } else {
        std::vector<dma::LiveMapping> maps;
        for (const auto& m : *live) maps.push_back({m.iova, m.size});
        auto audited = dma::audit(*rec, mem.ram_ranges(), maps);
        if (!audited) {
            problem = audited.error().message();
        } else {
            a = *audited;
            if (!a.consistent()) {
                problem = fmt::format(
                    "the host record and the container disagree: {} recorded extents not "
                    "mapped, {} mappings not recorded",
                    a.missing, a.orphans);
            }
        }
    }
    std::lock_guard lock(audit_mu_);
    ++audits_.audits;
    audits_.in_progress += a.in_progress;
    if (!problem.empty()) {
        ++audits_.inconsistent;
        if (audits_.first_problem.empty()) audits_.first_problem = problem;
        CLOG_ERROR(kLog, "after the daemon went away: {}", problem);
    } else {
        CLOG_INFO(kLog, "daemon gone: the record and the container agree ({} extents, {} pages, {} in progress)",
                  a.mapped_extents, a.mapped_pages, a.in_progress);
    }
}

RestartAudits SocketLink::restart_audits() const {
    std::lock_guard lock(audit_mu_);
    return audits_;
}

SocketLink::~SocketLink() { shutdown(); }

template <class R>
R SocketLink::watch(R r) {
    if (r) return r;
    // Lost: the connection is gone and will not come back (without --reconnect at once; with it
    // once resuming gave up, whatever the last attempt's errno).
    if (!daemon::ResumingClient::connection_lost(r.error().code) && !client_->ended()) return r;
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
                       client_->backend_info().name);
}

void SocketLink::shutdown() {
    std::lock_guard lock(close_mu_);
    if (closed_) return;
    closed_ = true;
    if (!client_ || lost()) return;  // never set up, or nobody to say Close to
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
    if (client_) client_->disconnect();
}

std::optional<daemon::CloseInfo> SocketLink::close_info() const {
    std::lock_guard lock(close_mu_);
    return close_info_;
}

}  // namespace coiommu::loadgen
