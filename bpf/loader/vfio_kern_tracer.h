// VfioKernTracer: optional fentry/fexit timing of vfio_dma_do_map / vfio_dma_do_unmap inside
// the vfio_iommu_type1 module. Loads only where the kernel allows it; start() otherwise fails
// with an Error whose message starts "not available: <reason>" (tracing programs not permitted
// by this kernel, module or its BTF missing, function inlined...). Nothing else depends on it.
#pragma once

#include <memory>
#include <vector>

#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

class VfioKernTracer {
public:
    VfioKernTracer(VfioKernTracer&&) noexcept;
    VfioKernTracer& operator=(VfioKernTracer&&) noexcept;
    ~VfioKernTracer();

    // Probes (program type support, module BTF), then trial-loads and attaches.
    [[nodiscard]] static Result<VfioKernTracer> start();

    [[nodiscard]] Result<VfioKernSnapshot> snapshot() const;
    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;

private:
    struct Impl;
    explicit VfioKernTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
