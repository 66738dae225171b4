// coiommud's Prometheus endpoint: the engine families over every session of a Server, the
// server's connection and session counters, the process families, and whatever further
// collectors the program adds (the BPF collector, from bpf/metrics, when the tracer runs).
// The program's observer (observe_metrics.cc, bpf/metrics/observe_full.cc) owns one.
//
// Thread-safety: start/stop from one owner thread; the collectors run on the exposer's threads
// and read only the Server's thread-safe statistics.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/result.h"
#include "engine/daemon/config.h"
#include "engine/daemon/server.h"
#include "exporter/exposer.h"

namespace prometheus {
class Collectable;
}

namespace coiommu::exporter {

class DaemonMetrics {
public:
    using Extra = std::pair<std::string, std::shared_ptr<const prometheus::Collectable>>;

    // Serves at cfg.metrics_address; "none" serves nothing and succeeds. In --demo a taken
    // address falls back to a free port (a newcomer's second demo). `server` and whatever the
    // extra collectors read must outlive stop(). Errors: the exposer's, naming the address.
    [[nodiscard]] Status start(const daemon::DaemonConfig& cfg, const daemon::Server& server,
                               const std::vector<Extra>& extra);

    [[nodiscard]] std::string url() const;  // "" when not serving
    void stop();                            // idempotent

private:
    std::optional<Exposer> exposer_;
};

}  // namespace coiommu::exporter
