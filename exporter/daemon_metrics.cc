#include "exporter/daemon_metrics.h"

#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/process_collector.h"
#include "exporter/server_collector.h"

namespace coiommu::exporter {
namespace {

constexpr std::string_view kLog = "coiommud";

EngineInfo engine_info(const daemon::DaemonConfig& cfg) {
    EngineInfo info;
    info.build = this_build();
    info.config.unpin_policy = std::string(workers::to_string(cfg.engine.unpin_policy));
    info.config.coalesce = cfg.engine.coalesce == workers::Coalesce::On ? "on" : "off";
    info.config.backend = cfg.mode == daemon::Mode::Demo ? "fake" : cfg.backends.front();
    info.config.unpin_interval_seconds = std::chrono::duration<double>(cfg.engine.unpin_interval).count();
    info.config.unpin_gen_threshold = cfg.engine.unpin_gen_threshold;
    return info;
}

// Every session of the server as the engine collector's VMs (the session id is the key).
VmSnapshots per_vm(const daemon::Server& server) {
    daemon::SessionSnapshots all = server.sessions();
    VmSnapshots out;
    out.ended = all.ended;
    out.active_sessions = all.active_sessions;
    out.vms.reserve(all.sessions.size());
    for (auto& s : all.sessions) out.vms.push_back(VmSnapshot{s.session_id, std::move(s.name), s.snapshot});
    return out;
}

ServerStats server_stats(const daemon::ServerCounters& c) {
    const auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
    ServerStats s;
    s.accepted = get(c.accepted);
    s.resumed = get(c.resumed);
    s.ended = get(c.sessions_ended);
    s.failed = get(c.sessions_failed);
    s.accept_pauses = get(c.accept_pauses);
    const auto set = [&s](Refusal r, uint64_t v) { s.refused[static_cast<std::size_t>(r)] = v; };
    set(Refusal::Credentials, get(c.refused_credentials));
    set(Refusal::Busy, get(c.refused_busy));
    set(Refusal::UidBusy, get(c.refused_uid_busy));
    set(Refusal::FdBudget, get(c.refused_fd_budget));
    set(Refusal::OutOfFds, get(c.refused_out_of_fds));
    set(Refusal::BadHandshake, get(c.bad_handshakes));
    set(Refusal::HelloTimeout, get(c.hello_timeouts));
    set(Refusal::EvictedPending, get(c.evicted_pending));
    return s;
}

Result<std::shared_ptr<CollectorSet>> collectors(const daemon::DaemonConfig& cfg, const daemon::Server& server,
                                                 const std::vector<DaemonMetrics::Extra>& extra) {
    auto set = std::make_shared<CollectorSet>();
    const daemon::Server* srv = &server;
    COIOMMU_TRY(
        set->add("engine", std::make_shared<EngineCollector>([srv] { return per_vm(*srv); }, engine_info(cfg))));
    COIOMMU_TRY(set->add("server", std::make_shared<ServerCollector>([srv] { return server_stats(srv->counters()); })));
    COIOMMU_TRY(set->add("process", std::make_shared<ProcessCollector>()));
    for (const auto& [name, collectable] : extra) COIOMMU_TRY(set->add(name, collectable));
    return set;
}

Result<Exposer> start_exposer(const daemon::DaemonConfig& cfg) {
    ExposerOptions eo;
    eo.address = cfg.metrics_address;
    auto ex = Exposer::start(eo);
    if (!ex && ex.error().code == EADDRINUSE && cfg.mode == daemon::Mode::Demo) {
        CLOG_WARN(kLog, "metrics address {} is in use; the demo takes a free port instead", cfg.metrics_address);
        if (auto la = parse_listen_address(cfg.metrics_address)) {
            la->port = 0;
            eo.address = la->to_string();
            ex = Exposer::start(eo);
        }
    }
    if (!ex) {
        return coiommu::unexpected(with_context(
            ex.error(), fmt::format("metrics endpoint {} (--metrics-address ADDR or none)", cfg.metrics_address)));
    }
    return ex;
}

}  // namespace

Status DaemonMetrics::start(const daemon::DaemonConfig& cfg, const daemon::Server& server,
                            const std::vector<Extra>& extra) {
    if (cfg.metrics_address == "none") return ok();
    COIOMMU_ASSIGN_OR_RETURN(auto ex, start_exposer(cfg));
    COIOMMU_ASSIGN_OR_RETURN(auto set, collectors(cfg, server, extra), "metrics");
    COIOMMU_TRY(ex.register_collectable(std::move(set)), "metrics");
    exposer_.emplace(std::move(ex));
    CLOG_INFO(kLog, "metrics at {}", exposer_->url());
    return ok();
}

std::string DaemonMetrics::url() const { return exposer_ ? exposer_->url() : std::string(); }

void DaemonMetrics::stop() { exposer_.reset(); }

}  // namespace coiommu::exporter
