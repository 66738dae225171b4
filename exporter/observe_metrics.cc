// make_observability() of a coiommud built with the exporter but without BPF (COIOMMU_BPF=OFF):
// the endpoint with the engine and process families, no tracer.
#include "engine/daemon/observability.h"
#include "exporter/daemon_metrics.h"

namespace coiommu::exporter {
namespace {

class MetricsOnly final : public daemon::Observability {
public:
    ~MetricsOnly() override { stop(); }
    std::string start_tracing(const daemon::DaemonConfig& cfg) override {
        return daemon::tracing_unavailable(cfg, "built without BPF (COIOMMU_BPF=OFF)");
    }
    Status start_metrics(const daemon::DaemonConfig& cfg, const daemon::Server& server) override {
        return metrics_.start(cfg, server, {});
    }
    std::string metrics_url() const override { return metrics_.url(); }
    void stop() override { metrics_.stop(); }

private:
    DaemonMetrics metrics_;
};

}  // namespace
}  // namespace coiommu::exporter

namespace coiommu::daemon {
std::unique_ptr<Observability> make_observability() { return std::make_unique<exporter::MetricsOnly>(); }
}  // namespace coiommu::daemon
