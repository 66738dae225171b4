#include "bpf/loader/iommu_core_tracer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "bpf/abi/iommu_core.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/skeleton.h"
#include "iommu_core.skel.h"

namespace coiommu::bpf {

namespace {

// ensure_tracefs() leaves the events under one of these (libbpf prefers the debugfs one when
// that directory exists).
constexpr const char* kEventDirs[] = {"/sys/kernel/tracing/events/iommu/map",
                                      "/sys/kernel/debug/tracing/events/iommu/map"};

coiommu::unexpected<Error> not_available(int err, const std::string& reason) {
    return coiommu::unexpected(Error{err, "not available: " + reason});
}

bool has_iommu_events() {
    for (const char* dir : kEventDirs) {
        if (::access(dir, F_OK) == 0) return true;
    }
    return false;
}

}  // namespace

struct IommuCoreTracer::Impl {
    Skeleton<iommu_core_bpf> skel;
};

IommuCoreTracer::IommuCoreTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IommuCoreTracer::IommuCoreTracer(IommuCoreTracer&&) noexcept = default;
IommuCoreTracer& IommuCoreTracer::operator=(IommuCoreTracer&&) noexcept = default;
IommuCoreTracer::~IommuCoreTracer() = default;

Result<IommuCoreTracer> IommuCoreTracer::start() {
    detail::install_libbpf_logging();
    if (auto st = check_bpf_privileges(); !st) return not_available(st.error().code, st.error().context);
    if (auto st = detail::ensure_tracefs(); !st) return not_available(st.error().code, st.error().context);
    if (!has_iommu_events()) {
        return not_available(ENOENT, "the kernel has no iommu:map/iommu:unmap tracepoints (CONFIG_IOMMU_API off?)");
    }

    auto impl = std::make_unique<Impl>();
    auto skel = Skeleton<iommu_core_bpf>::open("iommu_core");
    if (!skel) return not_available(skel.error().code, skel.error().message());
    impl->skel = std::move(*skel);
    if (auto st = impl->skel.load(); !st) return not_available(st.error().code, st.error().message());
    if (auto st = impl->skel.attach(); !st) return not_available(st.error().code, st.error().message());
    return IommuCoreTracer(std::move(impl));
}

Result<IommuCoreSnapshot> IommuCoreTracer::snapshot() const {
    const auto& maps = impl_->skel->maps;
    auto c = detail::read_percpu_array<coiommu_iommu_calls>(bpf_map__fd(maps.iommu_core_calls), COIOMMU_IOMMU_OP_COUNT);
    if (!c) return coiommu::unexpected(with_context(c.error(), "iommu_core_calls"));
    auto h = detail::read_percpu_array<coiommu_hist>(bpf_map__fd(maps.iommu_core_pages), COIOMMU_IOMMU_OP_COUNT);
    if (!h) return coiommu::unexpected(with_context(h.error(), "iommu_core_pages"));
    IommuCoreSnapshot snap;
    for (size_t i = 0; i < kIommuOpCount; ++i) {
        const coiommu_iommu_calls& raw = (*c)[i];
        snap.calls[i] = IommuCalls{raw.calls, raw.bytes, raw.requested, raw.short_calls};
        std::memcpy(snap.pages[i].slots.data(), (*h)[i].slots, sizeof((*h)[i].slots));
        snap.pages[i].sum = (*h)[i].sum;
        snap.pages[i].count = (*h)[i].count;
    }
    return snap;
}

Result<std::vector<ProgramInfo>> IommuCoreTracer::programs() const {
    const auto& s = *impl_->skel;
    return detail::object_programs(s.obj, "tracepoint", [&s](const bpf_program* p) {
        if (p == s.progs.iommu_core_map) return s.links.iommu_core_map != nullptr;
        if (p == s.progs.iommu_core_unmap) return s.links.iommu_core_unmap != nullptr;
        return false;
    });
}

}  // namespace coiommu::bpf
