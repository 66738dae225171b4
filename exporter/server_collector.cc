#include "exporter/server_collector.h"

#include <cerrno>

#include "exporter/metric_builder.h"

namespace coiommu::exporter {

std::string_view to_string(Refusal r) {
    switch (r) {
        case Refusal::Credentials: return "credentials";
        case Refusal::Busy: return "busy";
        case Refusal::UidBusy: return "uid_busy";
        case Refusal::FdBudget: return "fd_budget";
        case Refusal::OutOfFds: return "out_of_fds";
        case Refusal::BadHandshake: return "bad_handshake";
        case Refusal::HelloTimeout: return "hello_timeout";
        case Refusal::EvictedPending: return "evicted_pending";
        case Refusal::kCount: break;
    }
    return "unknown";
}

std::vector<prometheus::MetricFamily> server_families(const ServerStats& s) {
    std::vector<prometheus::MetricFamily> out;
    out.reserve(6);
    const auto counter = [&](const char* name, const char* help, uint64_t v) {
        auto f = counter_family(name, help);
        add_counter(f, static_cast<double>(v));
        out.push_back(std::move(f));
    };
    counter("coiommu_sessions_accepted_total", "VMM sessions started (Hello answered).", s.accepted);
    counter("coiommu_sessions_resumed_total",
            "Sessions that resumed a previous daemon's host record and run again (a daemon restart the VM survived).",
            s.resumed);
    counter("coiommu_sessions_ended_total", "VMM sessions ended, whatever the reason.", s.ended);
    counter("coiommu_sessions_failed_total",
            "VMM sessions ended by a protocol error, a setup or I/O timeout or an I/O error.", s.failed);
    counter("coiommu_accept_pauses_total",
            "Times the daemon stopped accepting for 100 ms because no fd was left to accept and refuse with.",
            s.accept_pauses);
    auto refused =
        counter_family("coiommu_connections_refused_total", "Connections closed without being served, by reason.");
    for (std::size_t i = 0; i < kRefusals; ++i) {
        add_counter(refused, static_cast<double>(s.refused[i]),
                    {{"reason", std::string(to_string(static_cast<Refusal>(i)))}});
    }
    out.push_back(std::move(refused));
    return out;
}

Status ServerCollector::collect_into(std::vector<prometheus::MetricFamily>& out) const {
    if (!source_) return make_error(EINVAL, "server collector: no source");
    for (auto& f : server_families(source_())) out.push_back(std::move(f));
    return ok();
}

}  // namespace coiommu::exporter
