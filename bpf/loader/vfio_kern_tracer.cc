#include "bpf/loader/vfio_kern_tracer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "bpf/abi/vfio_kern.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/skeleton.h"
#include "vfio_kern.skel.h"

namespace coiommu::bpf {

namespace {

constexpr const char* kModuleBtf = "/sys/kernel/btf/vfio_iommu_type1";

coiommu::unexpected<Error> not_available(int err, const std::string& reason) {
    return coiommu::unexpected(Error{err, "not available: " + reason});
}

}  // namespace

struct VfioKernTracer::Impl {
    Skeleton<vfio_kern_bpf> skel;
};

VfioKernTracer::VfioKernTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VfioKernTracer::VfioKernTracer(VfioKernTracer&&) noexcept = default;
VfioKernTracer& VfioKernTracer::operator=(VfioKernTracer&&) noexcept = default;
VfioKernTracer::~VfioKernTracer() = default;

Result<VfioKernTracer> VfioKernTracer::start() {
    detail::install_libbpf_logging();
    if (auto st = check_bpf_privileges(); !st) return not_available(st.error().code, st.error().context);

    const int supported = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_TRACING, nullptr);
    if (supported < 0) {
        return not_available(-supported,
                             "probing BPF_PROG_TYPE_TRACING failed: " + std::string(std::strerror(-supported)));
    }
    if (supported == 0) {
        return not_available(EOPNOTSUPP, "this kernel does not allow fentry/fexit (BPF_PROG_TYPE_TRACING) programs");
    }
    if (::access(kModuleBtf, F_OK) != 0) {
        const int err = errno;
        return not_available(
            err, std::string("module vfio_iommu_type1 is not loaded or has no BTF (") + kModuleBtf + " missing)");
    }

    auto impl = std::make_unique<Impl>();
    auto skel = Skeleton<vfio_kern_bpf>::open("vfio_kern");
    if (!skel) return not_available(skel.error().code, skel.error().message());
    impl->skel = std::move(*skel);
    if (auto st = impl->skel.load(); !st) {
        return not_available(st.error().code,
                             "trial load failed (functions inlined or not traceable?): " + st.error().message());
    }
    if (auto st = impl->skel.attach(); !st) return not_available(st.error().code, st.error().message());
    return VfioKernTracer(std::move(impl));
}

Result<VfioKernSnapshot> VfioKernTracer::snapshot() const {
    auto v = detail::read_percpu_array<coiommu_hist>(bpf_map__fd(impl_->skel->maps.vk_hist), COIOMMU_VK_FN_COUNT);
    if (!v) return coiommu::unexpected(with_context(v.error(), "vk_hist"));
    VfioKernSnapshot snap;
    for (size_t i = 0; i < kKernFnCount; ++i) {
        std::memcpy(snap.latency_ns[i].slots.data(), (*v)[i].slots, sizeof((*v)[i].slots));
        snap.latency_ns[i].sum = (*v)[i].sum;
        snap.latency_ns[i].count = (*v)[i].count;
    }
    return snap;
}

Result<std::vector<ProgramInfo>> VfioKernTracer::programs() const {
    const auto& s = *impl_->skel;
    return detail::object_programs(s.obj, "fentry", [&s](const bpf_program* p) {
        if (p == s.progs.vk_map_enter) return s.links.vk_map_enter != nullptr;
        if (p == s.progs.vk_map_exit) return s.links.vk_map_exit != nullptr;
        if (p == s.progs.vk_unmap_enter) return s.links.vk_unmap_enter != nullptr;
        if (p == s.progs.vk_unmap_exit) return s.links.vk_unmap_exit != nullptr;
        return false;
    });
}

}  // namespace coiommu::bpf
