// IommuCoreTracer: the iommu_core program, the IOMMU core's iommu:map / iommu:unmap tracepoints
// counted per op (calls, bytes, pages-per-call histogram), for every task on the host.
//
// What it sees that the DMA-ioctl views (VfioDmaTracer, VfioKernTracer) do not: mappings made or
// removed without a MAP/UNMAP ioctl, above all type1 unmapping what is left when a container
// loses its last group (close), and the probe mapping type1 makes when a group is attached. It
// also sees every other IOMMU user of the host (the DMA API on translated domains, other VMMs):
// compare deltas over a quiet window, not totals.
//
// Plain tracepoints: loads wherever the kernel has the iommu events (CONFIG_IOMMU_API) and BPF
// tracepoint programs, also where fentry is refused. Needs root or CAP_BPF+CAP_PERFMON, and
// tracefs (mounted at /sys/kernel/tracing when missing, CAP_SYS_ADMIN then). start() fails with an
// Error whose context starts "not available: <reason>" when the kernel cannot run it.
//
// Thread-safety: snapshot() and programs() may run concurrently from any thread.
#pragma once

#include <memory>
#include <vector>

#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

class IommuCoreTracer {
public:
    IommuCoreTracer(IommuCoreTracer&&) noexcept;
    IommuCoreTracer& operator=(IommuCoreTracer&&) noexcept;
    ~IommuCoreTracer();

    [[nodiscard]] static Result<IommuCoreTracer> start();

    // Totals since start (the maps are never reset): use delta_since() for a window.
    [[nodiscard]] Result<IommuCoreSnapshot> snapshot() const;
    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;

private:
    struct Impl;
    explicit IommuCoreTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
