#include "bpf/loader/vfio_kern_tracer.h"

#include <bpf/btf.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <memory>

#include "bpf/abi/vfio_kern.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/skeleton.h"
#include "vfio_kern.skel.h"

namespace coiommu::bpf {

namespace {

constexpr const char* kModule = "vfio_iommu_type1";

coiommu::unexpected<Error> not_available(int err, const std::string& reason) {
    return coiommu::unexpected(Error{err, "not available: " + reason});
}

struct BtfFree {
    void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfFree>;

// One hooked function and its programs (exit may be null: remove_dma has an entry hook only).
struct Hook {
    KernHook hook;
    bpf_program* enter;
    bpf_program* exit;
};

std::array<Hook, kKernHookCount> hooks_of(const vfio_kern_bpf& s) {
    return {{{KernHook::DoMap, s.progs.vk_map_enter, s.progs.vk_map_exit},
             {KernHook::DoUnmap, s.progs.vk_unmap_enter, s.progs.vk_unmap_exit},
             {KernHook::PinPagesRemote, nullptr, s.progs.vk_pin_exit},
             {KernHook::RemoveDma, s.progs.vk_remove_dma, nullptr}}};
}

// Whether the kernel's BTF describes `fn`: in vmlinux when type1 is built in, else in the loaded
// module's BTF (`mod`, may be null). A function the compiler inlined has no BTF entry.
bool has_btf(btf* vmlinux, btf* mod, std::string_view fn) {
    const std::string name(fn);
    return btf__find_by_name_kind(vmlinux, name.c_str(), BTF_KIND_FUNC) >= 0 ||
           (mod != nullptr && btf__find_by_name_kind(mod, name.c_str(), BTF_KIND_FUNC) >= 0);
}

Status check_tracing_allowed() {
    const int supported = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_TRACING, nullptr);
    if (supported < 0) {
        return make_error(-supported,
                          "probing BPF_PROG_TYPE_TRACING failed: " + std::string(std::strerror(-supported)));
    }
    if (supported == 0) {
        return make_error(EOPNOTSUPP, "this kernel does not allow fentry/fexit (BPF_PROG_TYPE_TRACING) programs");
    }
    return ok();
}

}  // namespace

struct VfioKernTracer::Impl {
    Skeleton<vfio_kern_bpf> skel;
    std::array<bool, kKernHookCount> hooked{};
    std::string detail;

    // Turns on the programs of every function with BTF; false when there is none.
    bool select_hooks(btf* vmlinux, btf* mod) {
        std::string on, off;
        for (const Hook& h : hooks_of(*skel)) {
            const std::string_view fn = kern_hook_name(h.hook);
            const bool present = has_btf(vmlinux, mod, fn);
            hooked[static_cast<size_t>(h.hook)] = present;
            for (bpf_program* p : {h.enter, h.exit}) {
                if (p != nullptr) bpf_program__set_autoload(p, present);
            }
            std::string& list = present ? on : off;
            list += (list.empty() ? "" : ", ") + std::string(fn);
        }
        detail = on.empty() ? std::string() : "fentry on " + on;
        if (!off.empty()) {
            detail += (detail.empty() ? "" : "; ") + std::string("no BTF (inlined?): ") + off;
            // Nothing in vmlinux either: type1 is a module, and not loaded (or built without BTF).
            if (mod == nullptr && on.empty()) detail += " (module vfio_iommu_type1 not loaded or without BTF)";
        }
        return !on.empty();
    }
};

VfioKernTracer::VfioKernTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VfioKernTracer::VfioKernTracer(VfioKernTracer&&) noexcept = default;
VfioKernTracer& VfioKernTracer::operator=(VfioKernTracer&&) noexcept = default;
VfioKernTracer::~VfioKernTracer() = default;

Result<VfioKernTracer> VfioKernTracer::start() {
    detail::install_libbpf_logging();
    if (auto st = check_bpf_privileges(); !st) return not_available(st.error().code, st.error().context);
    if (auto st = check_tracing_allowed(); !st) return not_available(st.error().code, st.error().context);
    const BtfPtr vmlinux(btf__load_vmlinux_btf());
    if (!vmlinux) return not_available(errno != 0 ? errno : ENOENT, "no kernel BTF (/sys/kernel/btf/vmlinux)");
    const BtfPtr mod(btf__load_module_btf(kModule, vmlinux.get()));

    auto impl = std::make_unique<Impl>();
    auto skel = Skeleton<vfio_kern_bpf>::open("vfio_kern");
    if (!skel) return not_available(skel.error().code, skel.error().message());
    impl->skel = std::move(*skel);
    if (!impl->select_hooks(vmlinux.get(), mod.get())) return not_available(ENOENT, impl->detail);
    const long page = ::sysconf(_SC_PAGESIZE);
    impl->skel->rodata->page_shift = static_cast<__u32>(std::countr_zero(static_cast<unsigned long>(page)));
    if (auto st = impl->skel.load(); !st) {
        return not_available(st.error().code, "load failed (" + impl->detail + "): " + st.error().message());
    }
    // The skeleton attaches only the programs set to load.
    if (auto st = impl->skel.attach(); !st) return not_available(st.error().code, st.error().message());
    return VfioKernTracer(std::move(impl));
}

Result<VfioKernSnapshot> VfioKernTracer::snapshot() const {
    const auto& maps = impl_->skel->maps;
    auto v = detail::read_percpu_array<coiommu_hist>(bpf_map__fd(maps.vk_hist), COIOMMU_VK_FN_COUNT);
    if (!v) return coiommu::unexpected(with_context(v.error(), "vk_hist"));
    auto c = detail::read_percpu_array<coiommu_vk_calls>(bpf_map__fd(maps.vk_calls), COIOMMU_VK_HOOK_COUNT);
    if (!c) return coiommu::unexpected(with_context(c.error(), "vk_calls"));
    VfioKernSnapshot snap;
    for (size_t i = 0; i < kKernFnCount; ++i) {
        std::memcpy(snap.latency_ns[i].slots.data(), (*v)[i].slots, sizeof((*v)[i].slots));
        snap.latency_ns[i].sum = (*v)[i].sum;
        snap.latency_ns[i].count = (*v)[i].count;
    }
    for (size_t i = 0; i < kKernHookCount; ++i)
        snap.calls[i] = VfioKernCalls{(*c)[i].ok, (*c)[i].failed, (*c)[i].bytes};
    return snap;
}

Result<std::vector<ProgramInfo>> VfioKernTracer::programs() const {
    const auto& s = *impl_->skel;
    return detail::object_programs(s.obj, "fentry", [&s](const bpf_program* p) {
        if (p == s.progs.vk_map_enter) return s.links.vk_map_enter != nullptr;
        if (p == s.progs.vk_map_exit) return s.links.vk_map_exit != nullptr;
        if (p == s.progs.vk_unmap_enter) return s.links.vk_unmap_enter != nullptr;
        if (p == s.progs.vk_unmap_exit) return s.links.vk_unmap_exit != nullptr;
        if (p == s.progs.vk_pin_exit) return s.links.vk_pin_exit != nullptr;
        if (p == s.progs.vk_remove_dma) return s.links.vk_remove_dma != nullptr;
        return false;
    });
}

bool VfioKernTracer::hooked(KernHook hook) const { return impl_->hooked[static_cast<size_t>(hook)]; }

const std::string& VfioKernTracer::detail() const { return impl_->detail; }

}  // namespace coiommu::bpf
