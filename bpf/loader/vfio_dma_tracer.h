// VfioDmaTracer: the vfio_dma program (ioctl syscall tracepoints) loaded and attached.
//
// Observes VFIO_IOMMU_MAP_DMA / UNMAP_DMA and iommufd IOAS_MAP / IOAS_UNMAP calls of every process
// or of one tgid: latency histograms per op, calls by result class, bytes requested, and (when a
// slow threshold is set) a stream of slow-call events. The maps are never reset: snapshot()
// returns totals since start; use delta_since() for intervals.
//
// Needs root or CAP_BPF+CAP_PERFMON (errors say so), and tracefs, which start() mounts at
// /sys/kernel/tracing when it is missing (needs CAP_SYS_ADMIN then).
//
// Thread-safety: snapshot(), programs() and pin() may run concurrently with each other from any
// thread (they only read map/program fds); poll_slow_events() has a single consumer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "bpf/loader/pin.h"
#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

struct VfioDmaOptions {
    uint32_t target_tgid = 0;  // 0: every process; else only this process (kernel tgid)
    // Calls at least this slow are reported through poll_slow_events(); nullopt: no events.
    std::optional<std::chrono::nanoseconds> slow_threshold;
};

class VfioDmaTracer {
public:
    VfioDmaTracer(VfioDmaTracer&&) noexcept;
    VfioDmaTracer& operator=(VfioDmaTracer&&) noexcept;
    ~VfioDmaTracer();  // detaches, frees, unpins unless pinned with Keep::Yes

    // Opens, configures, loads and attaches. Errors: EPERM (privileges), ENOENT (tracepoints
    // missing), or whatever libbpf reported.
    [[nodiscard]] static Result<VfioDmaTracer> start(const VfioDmaOptions& options);

    [[nodiscard]] Result<VfioDmaSnapshot> snapshot() const;

    // Waits up to `timeout` for slow events and hands each to `on_event`; returns how many.
    // EINVAL when started without a slow threshold; EINTR when a signal interrupted the wait.
    [[nodiscard]] Result<int> poll_slow_events(std::chrono::milliseconds timeout,
                                               const std::function<void(const SlowEvent&)>& on_event);

    // Pins the histogram, calls and drops maps (vfio_dma_hist, vfio_dma_calls, vfio_dma_drops,
    // vfio_dma_flight) under <root>/v2/. Once per tracer.
    [[nodiscard]] Status pin(const PinOptions& options);
    [[nodiscard]] std::vector<std::string> pinned_paths() const;

    // Program self-description for coiommu_bpf_program_info / _attached / run time.
    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;

private:
    struct Impl;
    explicit VfioDmaTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
