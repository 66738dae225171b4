// Tracing: everything BPF the appliance runs, behind one object — the vfio_dma tracer (always),
// the engine USDT tracer (when an engine target is given, or later via attach_engine()) and the
// optional vfio_kern fentry hooks (when asked and the kernel allows). This is the API the CLI and
// the Prometheus exporter use; it exposes only plain structs (snapshot.h), no libbpf types.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf/loader/engine_tracer.h"
#include "bpf/loader/pin.h"
#include "bpf/loader/snapshot.h"
#include "bpf/loader/stats.h"
#include "bpf/loader/vfio_dma_tracer.h"
#include "bpf/loader/vfio_kern_tracer.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

enum class TryKernelHooks : bool { No, Yes };
enum class CollectRunTime : bool { No, Yes };

struct TracingOptions {
    VfioDmaOptions vfio_dma;
    std::optional<EngineTarget> engine;
    TryKernelHooks kernel_hooks = TryKernelHooks::No;
    std::optional<PinOptions> pin;                 // pin every map under <root>/v2/
    CollectRunTime run_time = CollectRunTime::No;  // hold a StatsGuard (run_time_ns/run_cnt)
};

// Everything at one instant. Counters are totals since load.
struct TelemetrySnapshot {
    VfioDmaSnapshot vfio_dma;
    std::optional<EngineSnapshot> engine;  // present when the engine tracer is attached
    std::optional<VfioKernSnapshot> kern;  // present when the fentry hooks are attached
    std::vector<ProgramInfo> programs;     // every loaded program
};

class Tracing {
public:
    // Starts vfio_dma (failure is fatal), then the engine tracer (failure is fatal: it was asked
    // for explicitly), then the kernel hooks (failure only recorded in kernel_hooks_status()).
    [[nodiscard]] static Result<Tracing> start(const TracingOptions& options);

    // Attaches the engine tracer now (e.g. when the engine starts after the exporter); pins its
    // maps when the options asked for pinning. EALREADY when one is attached.
    [[nodiscard]] Status attach_engine(const EngineTarget& target);

    [[nodiscard]] Result<TelemetrySnapshot> snapshot() const;

    [[nodiscard]] VfioDmaTracer& vfio_dma() { return *vfio_dma_; }
    [[nodiscard]] EngineTracer* engine() { return engine_ ? &*engine_ : nullptr; }
    [[nodiscard]] VfioKernTracer* kernel_hooks() { return kern_ ? &*kern_ : nullptr; }
    // "attached", "not requested", or "not available: <reason>".
    [[nodiscard]] const std::string& kernel_hooks_status() const { return kern_status_; }
    [[nodiscard]] std::vector<std::string> pinned_paths() const;

private:
    Tracing() = default;

    std::optional<StatsGuard> stats_;
    std::optional<VfioDmaTracer> vfio_dma_;
    std::optional<EngineTracer> engine_;
    std::optional<VfioKernTracer> kern_;
    std::string kern_status_ = "not requested";
    std::optional<PinOptions> pin_;
};

}  // namespace coiommu::bpf
