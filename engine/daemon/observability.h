// coiommud's observers: the BPF tracer and the Prometheus endpoint. They live in bpf/ and
// exporter/, which read the engine and are never included by it, so the daemon sees them only
// through this interface. The program links exactly one definition of make_observability(),
// chosen by the root CMakeLists.txt from what the build has:
//
//   bpf/metrics/observe_full.cc     tracer + endpoint + the BPF collector on that endpoint
//   exporter/observe_metrics.cc     endpoint only (COIOMMU_BPF=OFF)
//   engine/daemon/observe_none.cc   neither (no prometheus-cpp, COIOMMU_EXPORTER=OFF)
//
// Thread-safety: used from coiommud's main thread only.
#pragma once

#include <memory>
#include <string>

#include "engine/base/result.h"
#include "engine/daemon/config.h"
#include "engine/daemon/server.h"

namespace coiommu::daemon {

class Observability {
public:
    virtual ~Observability() = default;

    // Attaches the tracer when cfg.tracing is auto and the host permits. Never fails the daemon:
    // returns the sentence the log and the demo show ("attached: ...", "vfio_dma attached (...)",
    // "not available: <why>", "off (--tracing off)").
    [[nodiscard]] virtual std::string start_tracing(const DaemonConfig& cfg) = 0;

    // Serves the metrics of `server` at cfg.metrics_address (nothing for "none"); the demo falls
    // back to a free port when the address is taken. Precondition: start_tracing ran (the BPF
    // collector reads the tracer). `server` must outlive stop(). Errors: the endpoint's, e.g.
    // EADDRINUSE, with the address named.
    [[nodiscard]] virtual Status start_metrics(const DaemonConfig& cfg, const Server& server) = 0;

    // "http://127.0.0.1:9464/metrics", or "" when nothing is served.
    [[nodiscard]] virtual std::string metrics_url() const = 0;

    // Stops the endpoint first (its collectors read the server and the tracer), then the tracer.
    // Idempotent; the destructor calls it.
    virtual void stop() = 0;
};

[[nodiscard]] std::unique_ptr<Observability> make_observability();

// The sentence start_tracing() returns when tracing is off or this build has no tracer.
[[nodiscard]] std::string tracing_unavailable(const DaemonConfig& cfg, std::string_view why);

}  // namespace coiommu::daemon
