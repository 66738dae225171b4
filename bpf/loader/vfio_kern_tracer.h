// VfioKernTracer: optional fentry/fexit hooks inside VFIO type1 (bpf/progs/vfio_kern.bpf.c):
//   vfio_dma_do_map / vfio_dma_do_unmap   latency (VfioKernSnapshot::latency_ns), calls, bytes
//   vfio_pin_pages_remote                 each physically contiguous run a map pins
//   vfio_remove_dma                       each mapping torn down, by UNMAP_DMA or at close
// All four are static and may be inlined; start() hooks those the kernel's BTF describes (vmlinux
// when type1 is built in, else the loaded module's) and hooked() says which. It fails with an
// Error whose context starts "not available: <reason>" when tracing programs are not permitted,
// or none of the functions has BTF. Nothing else depends on it.
//
// Thread-safety: snapshot(), programs(), hooked() and detail() may run concurrently.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

class VfioKernTracer {
public:
    VfioKernTracer(VfioKernTracer&&) noexcept;
    VfioKernTracer& operator=(VfioKernTracer&&) noexcept;
    ~VfioKernTracer();

    // Probes (program type support, BTF of each function), then loads and attaches the hooks
    // whose function has BTF.
    [[nodiscard]] static Result<VfioKernTracer> start();

    [[nodiscard]] Result<VfioKernSnapshot> snapshot() const;
    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;
    // Whether `hook`'s function is hooked (its calls are counted).
    [[nodiscard]] bool hooked(KernHook hook) const;
    // "fentry on vfio_pin_pages_remote, vfio_remove_dma; no BTF (inlined?): vfio_dma_do_map, ..."
    [[nodiscard]] const std::string& detail() const;

private:
    struct Impl;
    explicit VfioKernTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
