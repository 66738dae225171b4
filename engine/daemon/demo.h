// `coiommud --demo`: an emulated VM (EmulatedVm: a few vCPUs, mixed DMA workload, balloon, fake
// backend with the kernel-like latency model) served by this daemon's own Server over its real
// socket, a status line every second, then a summary and where to look next.
//
// Thread-safety: run_demo() runs on the main thread.
#pragma once

#include <cstdio>
#include <string>

#include "engine/daemon/config.h"
#include "engine/daemon/emulated_vm.h"
#include "engine/daemon/server.h"

namespace coiommu::daemon {

struct DemoContext {
    Server* server = nullptr;
    const DaemonConfig* config = nullptr;
    int signal_fd = -1;          // readable when SIGINT/SIGTERM arrived
    std::string metrics_url;     // empty when the exporter is off
    std::string tracing_status;  // "attached (...)" or "not available: <reason>"
    std::string trace_tool;      // path of coiommu-trace next to this binary, if found
    std::string load_tool;       // path of coiommu-load next to this binary, if found
    std::string daemon_tool;     // path of this coiommud
    std::string dashboards;      // directory holding grafana/ and prometheus/
    std::FILE* out = stdout;
};

// Runs the demo for cfg.duration (0: until a signal). Returns the process exit code: 0 when the
// VM ran and the teardown left no DMA mapping behind, 1 otherwise.
[[nodiscard]] int run_demo(const DemoContext& ctx);

// One status line from two engine snapshots and two VM counter readings `dt_s` seconds apart
// (exposed for tests). Its p99 is the guest-visible latency of the maps that sent a pin request
// in the window, from the VM's log-linear histogram.
[[nodiscard]] std::string status_line(double t_s, double dt_s, const telemetry::StatsSnapshot& prev,
                                      const telemetry::StatsSnapshot& now, const VmCounters& vprev,
                                      const VmCounters& vnow);

}  // namespace coiommu::daemon
