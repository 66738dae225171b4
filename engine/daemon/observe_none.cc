// make_observability() of a coiommud built without prometheus-cpp (and so without the BPF
// collector): no endpoint, no tracer; says so once instead of failing.
#include "engine/base/log.h"
#include "engine/daemon/observability.h"

namespace coiommu::daemon {
namespace {

class NoObservability final : public Observability {
public:
    std::string start_tracing(const DaemonConfig& cfg) override {
        return tracing_unavailable(cfg, "built without the exporter (COIOMMU_EXPORTER=OFF or no prometheus-cpp)");
    }
    Status start_metrics(const DaemonConfig& cfg, const Server& /*server*/) override {
        if (cfg.metrics_address != "none") CLOG_WARN("coiommud", "metrics not available: built without prometheus-cpp");
        return ok();
    }
    std::string metrics_url() const override { return {}; }
    void stop() override {}
};

}  // namespace

std::unique_ptr<Observability> make_observability() { return std::make_unique<NoObservability>(); }

}  // namespace coiommu::daemon
