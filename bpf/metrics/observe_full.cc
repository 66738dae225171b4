// make_observability() of a full coiommud: the BPF tracer (vfio_dma, fentry or syscall tracepoints,
// and the engine's USDT probes in this very process) and the Prometheus endpoint, with the BPF collector
// reading the tracer beside the engine and process families.
#include <unistd.h>

#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "bpf/loader/privileges.h"
#include "bpf/loader/tracing.h"
#include "bpf/metrics/bpf_collector.h"
#include "bpf/metrics/bpf_tracing_source.h"
#include "engine/daemon/observability.h"
#include "exporter/daemon_metrics.h"

namespace coiommu::exporter {
namespace {

std::string self_program() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string("coiommud") : self.string();
}

class FullObservability final : public daemon::Observability {
public:
    ~FullObservability() override { stop(); }

    std::string start_tracing(const daemon::DaemonConfig& cfg) override {
        if (cfg.tracing == daemon::TracingMode::Off) return daemon::tracing_unavailable(cfg, "");
        if (auto priv = bpf::check_bpf_privileges(); !priv) {
            return daemon::tracing_unavailable(cfg, priv.error().context);
        }
        bpf::TracingOptions topts;
        topts.engine = bpf::EngineTarget{.binary = self_program(), .pid = static_cast<int>(::getpid())};
        auto full = bpf::Tracing::start(topts);
        if (full) {
            tracing_.emplace(std::move(*full));
            return fmt::format("attached: vfio_dma {} + engine USDT probes", tracing_->vfio_dma().mode_detail());
        }
        // The engine USDT probes need this kernel's uprobe support; vfio_dma alone may still work.
        topts.engine.reset();
        auto vfio_only = bpf::Tracing::start(topts);
        if (!vfio_only) return daemon::tracing_unavailable(cfg, vfio_only.error().message());
        tracing_.emplace(std::move(*vfio_only));
        return fmt::format("vfio_dma {} attached (engine USDT not available: {})", tracing_->vfio_dma().mode_detail(),
                           full.error().message());
    }

    Status start_metrics(const daemon::DaemonConfig& cfg, const daemon::Server& server) override {
        std::vector<DaemonMetrics::Extra> extra;
        if (tracing_) {
            extra.emplace_back("bpf", std::make_shared<BpfCollector>(tracing_source(*tracing_, nullptr, std::nullopt)));
        }
        return metrics_.start(cfg, server, extra);
    }

    std::string metrics_url() const override { return metrics_.url(); }

    // The endpoint (whose BPF collector reads the tracer) before the tracer.
    void stop() override {
        metrics_.stop();
        tracing_.reset();
    }

private:
    std::optional<bpf::Tracing> tracing_;
    DaemonMetrics metrics_;
};

}  // namespace
}  // namespace coiommu::exporter

namespace coiommu::daemon {
std::unique_ptr<Observability> make_observability() { return std::make_unique<exporter::FullObservability>(); }
}  // namespace coiommu::daemon
