// VfioDmaTracer: the vfio_dma program loaded and attached, in one of two modes.
//
// Observes VFIO_IOMMU_MAP_DMA / UNMAP_DMA and iommufd IOAS_MAP / IOAS_UNMAP calls of every process
// or of one tgid: latency histograms per op, calls by result class, bytes requested, and (when a
// slow threshold is set) a stream of slow-call events. The maps are never reset: snapshot()
// returns totals since start; use delta_since() for intervals.
//
// Modes (the same maps either way, so snapshots and collectors do not care):
//   Fentry      fentry/fexit on vfio_iommu_type1_ioctl and iommufd_fops_ioctl (whichever the
//               running kernel has): only VFIO/iommufd ioctls pay. Needs BPF_PROG_TYPE_TRACING and
//               the BTF of vfio_iommu_type1 / iommufd, i.e. the modules loaded when start() runs;
//               a container module loaded later is not seen. Latency is the handler's (no syscall
//               entry/exit), and ioctls on non-VFIO descriptors are never seen.
//   Tracepoint  syscalls/sys_{enter,exit}_ioctl: every ioctl of every process pays the tracepoint
//               (~70 ns here), non-DMA commands leave at the first instruction of each program.
//               Needs tracefs, which start() mounts at /sys/kernel/tracing when it is missing
//               (CAP_SYS_ADMIN then).
//   Auto        Fentry when the kernel allows it, else Tracepoint; mode_detail() says why.
//
// Needs root or CAP_BPF+CAP_PERFMON (errors say so).
//
// Thread-safety: snapshot(), programs() and pin() may run concurrently with each other from any
// thread (they only read map/program fds); poll_slow_events() has a single consumer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bpf/loader/pin.h"
#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

enum class VfioDmaMode : uint8_t { Auto, Fentry, Tracepoint };
// "auto", "fentry", "tracepoint".
[[nodiscard]] std::string_view mode_name(VfioDmaMode mode);

struct VfioDmaOptions {
    uint32_t target_tgid = 0;  // 0: every process; else only this process (kernel tgid)
    // Calls at least this slow are reported through poll_slow_events(); nullopt: no events.
    std::optional<std::chrono::nanoseconds> slow_threshold;
    VfioDmaMode mode = VfioDmaMode::Auto;
};

class VfioDmaTracer {
public:
    VfioDmaTracer(VfioDmaTracer&&) noexcept;
    VfioDmaTracer& operator=(VfioDmaTracer&&) noexcept;
    ~VfioDmaTracer();  // detaches, frees, unpins unless pinned with Keep::Yes

    // Opens, configures, loads and attaches in options.mode. Errors: EPERM (privileges), ENOENT
    // (tracepoints missing), for Fentry also EOPNOTSUPP (kernel refuses tracing programs) and
    // ENOENT (neither handler has BTF: modules not loaded) with the reason, or whatever libbpf
    // reported. Auto never fails for a reason Tracepoint would not.
    [[nodiscard]] static Result<VfioDmaTracer> start(const VfioDmaOptions& options);

    // The mode it runs in: Fentry or Tracepoint, never Auto.
    [[nodiscard]] VfioDmaMode mode() const;
    // One line for people, naming the hooks and, after a fallback, why fentry was not used:
    //   "fentry on vfio_iommu_type1_ioctl, iommufd_fops_ioctl"
    //   "tracepoints syscalls/sys_{enter,exit}_ioctl (fentry not available: <reason>)"
    [[nodiscard]] const std::string& mode_detail() const;

    // DMA ioctls between their enter and exit hooks right now, as the tracepoint exit's early
    // return sees them (the program's vfio_dma_active counter). 0 whenever no call is in flight.
    [[nodiscard]] uint64_t calls_in_flight() const;

    [[nodiscard]] Result<VfioDmaSnapshot> snapshot() const;

    // Waits up to `timeout` for slow events and hands each to `on_event`; returns how many.
    // EINVAL when started without a slow threshold; EINTR when a signal interrupted the wait.
    [[nodiscard]] Result<int> poll_slow_events(std::chrono::milliseconds timeout,
                                               const std::function<void(const SlowEvent&)>& on_event);

    // Pins the histogram, calls and drops maps (vfio_dma_hist, vfio_dma_calls, vfio_dma_drops,
    // vfio_dma_flight) under <root>/v2/. Once per tracer.
    [[nodiscard]] Status pin(const PinOptions& options);
    [[nodiscard]] std::vector<std::string> pinned_paths() const;

    // Program self-description for coiommu_bpf_program_info / _attached / run time: in Tracepoint
    // mode vfio_dma_enter/vfio_dma_exit (attach "tracepoint"), in Fentry mode vfio_t1_enter/
    // vfio_t1_exit and iommufd_enter/iommufd_exit for the handlers the kernel has (attach
    // "fentry"). So the metrics show the mode as coiommu_bpf_program_info{attach=...}.
    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;

private:
    struct Impl;
    explicit VfioDmaTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
