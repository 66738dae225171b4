#include "bpf/loader/vfio_dma_tracer.h"

#include <bpf/btf.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "bpf/abi/vfio_dma.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/ring_reader.h"
#include "bpf/loader/skeleton.h"
#include "bpf/loader/vfio_dma_maps.h"
#include "engine/base/log.h"
#include "vfio_dma.skel.h"

namespace coiommu::bpf {

namespace {

constexpr const char* kTracepointHooks = "tracepoints syscalls/sys_{enter,exit}_ioctl";

// One handler that fentry mode hooks: the function, the module whose BTF describes it when it is
// not built in, and its two programs.
struct Handler {
    const char* function;
    const char* module;
    bpf_program* enter;
    bpf_program* exit;
};

std::array<Handler, 2> handlers(const vfio_dma_bpf& s) {
    return {{
        {"vfio_iommu_type1_ioctl", "vfio_iommu_type1", s.progs.vfio_t1_enter, s.progs.vfio_t1_exit},
        {"iommufd_fops_ioctl", "iommufd", s.progs.iommufd_enter, s.progs.iommufd_exit},
    }};
}

struct BtfFree {
    void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfFree>;

// Whether the running kernel describes `h.function` in BTF, built in or in its (loaded) module.
// fentry needs that BTF to attach; a module that is not loaded has none.
bool has_btf_function(btf* vmlinux, const Handler& h) {
    if (btf__find_by_name_kind(vmlinux, h.function, BTF_KIND_FUNC) >= 0) return true;
    const BtfPtr mod(btf__load_module_btf(h.module, vmlinux));
    return mod && btf__find_by_name_kind(mod.get(), h.function, BTF_KIND_FUNC) >= 0;
}

// Attaches each program that is set to load, exit hooks first: an exit without its enter (a
// call under way when the enter hook arrives) finds no busy slot and is ignored, whereas an
// enter without its exit would leave a busy slot behind.
Status attach_exit_first(std::initializer_list<std::pair<bpf_program*, bpf_link**>> hooks) {
    for (const auto& [prog, link] : hooks) {
        if (!bpf_program__autoload(prog)) continue;
        errno = 0;
        bpf_link* l = bpf_program__attach(prog);
        if (l == nullptr) {
            const int err = errno;
            return coiommu::unexpected(
                bpf_error(err != 0 ? err : EINVAL, std::string("attach ") + bpf_program__name(prog)));
        }
        *link = l;  // the skeleton destroys it
    }
    return ok();
}

}  // namespace

std::string_view mode_name(VfioDmaMode mode) {
    switch (mode) {
        case VfioDmaMode::Auto: return "auto";
        case VfioDmaMode::Fentry: return "fentry";
        case VfioDmaMode::Tracepoint: return "tracepoint";
    }
    return "auto";
}

struct VfioDmaTracer::Impl {
    Skeleton<vfio_dma_bpf> skel;
    VfioDmaMode mode = VfioDmaMode::Tracepoint;
    std::string detail;
    std::optional<RingReader> ring;
    const std::function<void(const SlowEvent&)>* on_event = nullptr;  // valid during a poll only
    std::optional<PinSet> pins;

    [[nodiscard]] detail::VfioDmaMapFds fds() const {
        return {bpf_map__fd(skel->maps.vfio_dma_hist), bpf_map__fd(skel->maps.vfio_dma_calls),
                bpf_map__fd(skel->maps.vfio_dma_drops), bpf_map__fd(skel->maps.vfio_dma_flight)};
    }

    void deliver(std::span<const std::byte> record) const {
        if (on_event == nullptr || record.size() < sizeof(coiommu_vfio_event)) return;
        coiommu_vfio_event raw;
        std::memcpy(&raw, record.data(), sizeof(raw));
        SlowEvent ev;
        ev.ts_ns = raw.ts_ns;
        ev.latency_ns = raw.latency_ns;
        ev.iova = raw.iova;
        ev.size = raw.size;
        ev.ret = raw.ret;
        ev.pid = raw.pid;
        ev.tid = raw.tid;
        ev.op = static_cast<VfioOp>(raw.op < kVfioOpCount ? raw.op : 0);
        ev.comm.assign(raw.comm, strnlen(raw.comm, sizeof(raw.comm)));
        (*on_event)(ev);
    }

    // Opens the object and sets the load-time configuration; every program starts unloaded.
    [[nodiscard]] static Result<std::unique_ptr<Impl>> open(const VfioDmaOptions& options) {
        auto impl = std::make_unique<Impl>();
        auto skel = Skeleton<vfio_dma_bpf>::open("vfio_dma");
        if (!skel) return coiommu::unexpected(skel.error());
        impl->skel = std::move(*skel);
        impl->skel->rodata->targ_tgid = options.target_tgid;
        if (options.slow_threshold) {
            impl->skel->rodata->slow_enabled = 1;
            const auto ns = options.slow_threshold->count();
            impl->skel->rodata->slow_threshold_ns = ns > 0 ? static_cast<__u64>(ns) : 0;
        }
        bpf_program* prog = nullptr;
        bpf_object__for_each_program(prog, impl->skel->obj) bpf_program__set_autoload(prog, false);
        return impl;
    }

    // fentry mode, or why not ("fentry not available: ..."; nothing stays loaded then).
    [[nodiscard]] static Result<std::unique_ptr<Impl>> start_fentry(const VfioDmaOptions& options);
    [[nodiscard]] static Result<std::unique_ptr<Impl>> start_tracepoints(const VfioDmaOptions& options,
                                                                         const std::string& why);
};

namespace {

coiommu::unexpected<Error> fentry_unavailable(int err, const std::string& reason) {
    return coiommu::unexpected(Error{err, "fentry not available: " + reason});
}

}  // namespace

Result<std::unique_ptr<VfioDmaTracer::Impl>> VfioDmaTracer::Impl::start_fentry(const VfioDmaOptions& options) {
    const int supported = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_TRACING, nullptr);
    if (supported <= 0) {
        return fentry_unavailable(supported < 0 ? -supported : EOPNOTSUPP,
                                  "this kernel does not allow fentry/fexit (BPF_PROG_TYPE_TRACING) programs");
    }
    const BtfPtr vmlinux(btf__load_vmlinux_btf());
    if (!vmlinux) return fentry_unavailable(errno != 0 ? errno : ENOENT, "no kernel BTF (/sys/kernel/btf/vmlinux)");

    auto impl = open(options);
    if (!impl) return fentry_unavailable(impl.error().code, impl.error().message());
    vfio_dma_bpf& s = *(*impl)->skel;
    std::string hooked;
    for (const Handler& h : handlers(s)) {
        if (!has_btf_function(vmlinux.get(), h)) continue;
        bpf_program__set_autoload(h.enter, true);
        bpf_program__set_autoload(h.exit, true);
        hooked += (hooked.empty() ? "" : ", ") + std::string(h.function);
    }
    if (hooked.empty()) {
        return fentry_unavailable(ENOENT,
                                  "neither vfio_iommu_type1_ioctl nor iommufd_fops_ioctl has BTF (modules "
                                  "vfio_iommu_type1 and iommufd not loaded)");
    }
    if (auto st = (*impl)->skel.load(); !st) return fentry_unavailable(st.error().code, st.error().message());
    auto st = attach_exit_first({{s.progs.vfio_t1_exit, &s.links.vfio_t1_exit},
                                 {s.progs.iommufd_exit, &s.links.iommufd_exit},
                                 {s.progs.vfio_t1_enter, &s.links.vfio_t1_enter},
                                 {s.progs.iommufd_enter, &s.links.iommufd_enter}});
    if (!st) return fentry_unavailable(st.error().code, st.error().message());
    (*impl)->mode = VfioDmaMode::Fentry;
    (*impl)->detail = "fentry on " + hooked;
    return impl;
}

Result<std::unique_ptr<VfioDmaTracer::Impl>> VfioDmaTracer::Impl::start_tracepoints(const VfioDmaOptions& options,
                                                                                    const std::string& why) {
    COIOMMU_TRY(detail::ensure_tracefs(), "vfio_dma");
    auto impl = open(options);
    if (!impl) return coiommu::unexpected(impl.error());
    vfio_dma_bpf& s = *(*impl)->skel;
    bpf_program__set_autoload(s.progs.vfio_dma_enter, true);
    bpf_program__set_autoload(s.progs.vfio_dma_exit, true);
    COIOMMU_TRY((*impl)->skel.load());
    COIOMMU_TRY(attach_exit_first(
        {{s.progs.vfio_dma_exit, &s.links.vfio_dma_exit}, {s.progs.vfio_dma_enter, &s.links.vfio_dma_enter}}));
    (*impl)->mode = VfioDmaMode::Tracepoint;
    (*impl)->detail = why.empty() ? std::string(kTracepointHooks) : std::string(kTracepointHooks) + " (" + why + ")";
    return impl;
}

VfioDmaTracer::VfioDmaTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VfioDmaTracer::VfioDmaTracer(VfioDmaTracer&&) noexcept = default;
VfioDmaTracer& VfioDmaTracer::operator=(VfioDmaTracer&&) noexcept = default;
VfioDmaTracer::~VfioDmaTracer() = default;

Result<VfioDmaTracer> VfioDmaTracer::start(const VfioDmaOptions& options) {
    detail::install_libbpf_logging();
    COIOMMU_TRY(check_bpf_privileges(), "vfio_dma");

    std::unique_ptr<Impl> impl;
    std::string why;  // why fentry mode is not used
    if (options.mode == VfioDmaMode::Tracepoint) {
        why = "tracepoint mode requested";
    } else {
        auto fentry = Impl::start_fentry(options);
        if (fentry) {
            impl = std::move(*fentry);
        } else if (options.mode == VfioDmaMode::Fentry) {
            return coiommu::unexpected(with_context(fentry.error(), "vfio_dma"));
        } else {
            why = fentry.error().message();
        }
    }
    if (!impl) {
        auto tp = Impl::start_tracepoints(options, why);
        if (!tp) return coiommu::unexpected(tp.error());
        impl = std::move(*tp);
    }
    CLOG_INFO("bpf", "vfio_dma: {}", impl->detail);

    if (options.slow_threshold) {
        const Impl* self = impl.get();
        auto ring = RingReader::open(bpf_map__fd(impl->skel->maps.vfio_dma_events),
                                     [self](std::span<const std::byte> rec) { self->deliver(rec); });
        if (!ring) return coiommu::unexpected(with_context(ring.error(), "vfio_dma_events"));
        impl->ring.emplace(std::move(*ring));
    }
    return VfioDmaTracer(std::move(impl));
}

VfioDmaMode VfioDmaTracer::mode() const { return impl_->mode; }

const std::string& VfioDmaTracer::mode_detail() const { return impl_->detail; }

uint64_t VfioDmaTracer::calls_in_flight() const {
    // The .bss map is mmapped: the programs update the counter with atomic adds.
    return __atomic_load_n(&impl_->skel->bss->vfio_dma_active, __ATOMIC_RELAXED);
}

Result<VfioDmaSnapshot> VfioDmaTracer::snapshot() const { return detail::read_vfio_dma(impl_->fds()); }

Result<int> VfioDmaTracer::poll_slow_events(std::chrono::milliseconds timeout,
                                            const std::function<void(const SlowEvent&)>& on_event) {
    if (!impl_->ring) return make_error(EINVAL, "vfio_dma: started without a slow threshold");
    impl_->on_event = &on_event;
    auto n = impl_->ring->poll(timeout);
    impl_->on_event = nullptr;
    return n;
}

Status VfioDmaTracer::pin(const PinOptions& options) {
    if (impl_->pins) return make_error(EALREADY, "vfio_dma maps already pinned in " + impl_->pins->dir());
    auto set = PinSet::create(options);
    if (!set) return coiommu::unexpected(set.error());
    const auto& m = impl_->skel->maps;
    for (bpf_map* map : {m.vfio_dma_hist, m.vfio_dma_calls, m.vfio_dma_drops, m.vfio_dma_flight}) {
        if (auto st = set->pin(bpf_map__name(map), bpf_map__fd(map)); !st) return st;
    }
    impl_->pins.emplace(std::move(*set));
    return ok();
}

std::vector<std::string> VfioDmaTracer::pinned_paths() const {
    return impl_->pins ? impl_->pins->paths() : std::vector<std::string>{};
}

Result<std::vector<ProgramInfo>> VfioDmaTracer::programs() const {
    const vfio_dma_bpf& s = *impl_->skel;
    const bpf_program* const progs[] = {s.progs.vfio_dma_enter, s.progs.vfio_dma_exit, s.progs.vfio_t1_enter,
                                        s.progs.vfio_t1_exit,   s.progs.iommufd_enter, s.progs.iommufd_exit};
    const bpf_link* const links[] = {s.links.vfio_dma_enter, s.links.vfio_dma_exit, s.links.vfio_t1_enter,
                                     s.links.vfio_t1_exit,   s.links.iommufd_enter, s.links.iommufd_exit};
    const char* attach = impl_->mode == VfioDmaMode::Fentry ? "fentry" : "tracepoint";
    return detail::object_programs(s.obj, attach, [&](const bpf_program* p) {
        for (size_t i = 0; i < std::size(progs); ++i) {
            if (p == progs[i]) return links[i] != nullptr;
        }
        return false;
    });
}

}  // namespace coiommu::bpf
