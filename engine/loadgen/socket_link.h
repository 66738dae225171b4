// SocketLink: a VmLink served by a running coiommud over its Unix socket (engine/daemon/PROTOCOL.md),
// the load generator's `--connect SOCKET` transport. The load generator is the VMM: it hands the
// daemon the guest RAM memfds, asks for the device (the notifymap and topologymap come back as
// memfds), chooses the daemon's fake or null backend or hands it a real VFIO container (set up
// by the VMM: groups attached, type1v2 set), creates the per-vCPU trigger eventfds and hands them over, then forwards
// BAR0 accesses, balloon requests and statistics queries. The engine (and its configuration) is the daemon's.
//
// With SocketLinkConfig::reconnect On (`--reconnect`), a daemon that dies or restarts is resumed
// (daemon::ResumingClient): the run goes on with the same notifymap, triggers and container, and at
// every loss the host record is audited against the fake backend's shared state, which this VMM
// owns (dma::audit: no Mapped entry missing, no mapping orphaned).
//
// Lifetime: `mem` must outlive the link (its memfds are handed over again on every resume), as
// must the container, iommufd or fake shared state named in the config.
// Thread-safety: VmLink's (the client serialises requests; one in flight per connection).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/daemon/client.h"
#include "engine/daemon/resuming_client.h"
#include "engine/guest/guest_memory.h"
#include "engine/loadgen/transport.h"

namespace coiommu::loadgen {

enum class RemoteBackend : uint8_t { Fake, Null, Vfio, Iommufd };

struct SocketLinkConfig {
    std::string socket_path;
    uint32_t vcpus = 1;
    std::vector<uint16_t> endpoints;
    RemoteBackend backend = RemoteBackend::Fake;
    daemon::proto::FakeLatency latency = daemon::proto::FakeLatency::Typical;
    uint64_t entry_limit = 0;  // 0: the daemon's default
    // RemoteBackend::Vfio: the VMM's container (borrowed; a duplicate goes to the daemon, the VMM
    // keeps its own descriptor and its groups, as a VMM does).
    int vfio_container_fd = -1;
    // RemoteBackend::Iommufd: the VMM's iommufd (borrowed, duplicated as above) and its IOAS.
    int iommufd = -1;
    uint32_t ioas_id = 0;
    // RemoteBackend::Fake: a memfd from dma::FakeBackend::create_shared_state holding the fake's
    // mappings (borrowed), so they outlive the daemon as a container's do. When reconnecting
    // without one, create() makes one of entry_limit slots (65535 when 0) and keeps it.
    int fake_shared_state = -1;
    daemon::Reconnect reconnect = daemon::Reconnect::Off;
    std::chrono::milliseconds reconnect_timeout{30'000};  // give up resuming after this
};

// What the audits at each lost connection found (reconnect On, fake backend).
struct RestartAudits {
    uint64_t audits = 0;
    uint64_t inconsistent = 0;  // audits with a missing or orphaned mapping
    uint64_t in_progress = 0;   // entries caught mid-call, summed
    std::string first_problem;  // "" while every audit agreed
};

class SocketLink final : public VmLink {
public:
    // Connects, sends the guest memory, the topology, the backend choice and the triggers.
    // Errors: Client's (connect errno, the daemon's Error replies); EBADF for RemoteBackend::Vfio
    // without a container fd (dup's errno); EPROTO when the daemon does not run the engine after
    // every trigger was handed over.
    [[nodiscard]] static Result<std::unique_ptr<SocketLink>> create(const GuestMemory& mem,
                                                                    const SocketLinkConfig& cfg);
    ~SocketLink() override;
    SocketLink(const SocketLink&) = delete;
    SocketLink& operator=(const SocketLink&) = delete;

    [[nodiscard]] uint32_t vcpus() const override { return cfg_.vcpus; }
    [[nodiscard]] int notifymap_fd() const override { return client_->device().notifymap.get(); }
    [[nodiscard]] int topologymap_fd() const override { return client_->device().topologymap.get(); }
    [[nodiscard]] int trigger_fd(uint32_t vcpu) const override { return triggers_[vcpu].fd(); }
    [[nodiscard]] Status mmio_write(uint64_t offset, std::span<const std::byte> data) override;
    [[nodiscard]] Status mmio_read(uint64_t offset, std::span<std::byte> data) override;
    [[nodiscard]] Result<bool> active() override;
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const workers::GfnRange> ranges) override;
    [[nodiscard]] Result<telemetry::StatsSnapshot> stats() override;
    [[nodiscard]] std::string engine_description() const override;
    // Closes the session (the daemon stops the engine, which unmaps everything). Idempotent.
    void shutdown() override;
    // Drops the connection without Close, as a VMM that died would (the daemon sees EOF and
    // tears the session down on its own). Later calls fail (EPIPE); shutdown() does nothing.
    // Idempotent.
    void disconnect();

    // The statistics with the daemon's backend and device counters. Errors: the transport's.
    [[nodiscard]] Result<daemon::RemoteStats> remote_stats();
    // Whether the daemon can answer query_mapped (fake backend and the QueryMapped feature).
    [[nodiscard]] bool can_query_mapped() const { return can_query_; }
    // Whether [iova, iova+size) is mapped in the daemon's backend. Errors: the transport's.
    [[nodiscard]] Result<bool> query_mapped(Iova iova, uint64_t size);
    // The daemon's answer to Close, once shutdown() succeeded.
    [[nodiscard]] std::optional<daemon::CloseInfo> close_info() const;
    [[nodiscard]] daemon::BackendInfo backend_info() const { return client_->backend_info(); }
    // Sessions resumed after the daemon went away (reconnect On).
    [[nodiscard]] uint64_t resumes() const { return client_->resumes(); }
    [[nodiscard]] std::optional<daemon::ResumeInfo> last_resume() const { return client_->last_resume(); }
    [[nodiscard]] bool reconnecting() const { return cfg_.reconnect == daemon::Reconnect::On; }
    [[nodiscard]] RestartAudits restart_audits() const;

    // The daemon went away: a call failed with EPIPE, ECONNRESET or ENOTCONN (or the connection was
    // dropped by disconnect()). Every later call fails the same way.
    [[nodiscard]] const std::atomic<bool>* lost_flag() const override { return &lost_; }
    [[nodiscard]] bool lost() const { return lost_.load(std::memory_order_relaxed); }
    // The first such error, "" while not lost.
    [[nodiscard]] std::string lost_reason() const;

private:
    explicit SocketLink(SocketLinkConfig cfg) : cfg_(std::move(cfg)) {}
    // The audit at a lost connection (ReconnectPolicy::on_lost).
    void audit_after_loss(const GuestMemory& mem);

    SocketLinkConfig cfg_;
    std::unique_ptr<daemon::ResumingClient> client_;
    // Marks the link lost when `r` failed because the connection is gone; returns `r`.
    template <class R>
    R watch(R r);

    std::atomic<bool> lost_{false};
    mutable std::mutex lost_mu_;
    std::string lost_reason_;  // under lost_mu_
    std::vector<EventFd> triggers_;
    UniqueFd own_state_;  // the fake shared state create() made when reconnecting without one
    mutable std::mutex audit_mu_;
    RestartAudits audits_;  // under audit_mu_
    bool can_query_ = false;
    mutable std::mutex close_mu_;
    bool closed_ = false;
    std::optional<daemon::CloseInfo> close_info_;
};

}  // namespace coiommu::loadgen
