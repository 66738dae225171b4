#include "bpf/loader/vfio_dma_tracer.h"

#include <cerrno>
#include <cstring>
#include <optional>

#include "bpf/abi/vfio_dma.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/ring_reader.h"
#include "bpf/loader/skeleton.h"
#include "bpf/loader/vfio_dma_maps.h"
#include "vfio_dma.skel.h"

namespace coiommu::bpf {

struct VfioDmaTracer::Impl {
    Skeleton<vfio_dma_bpf> skel;
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
};

VfioDmaTracer::VfioDmaTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VfioDmaTracer::VfioDmaTracer(VfioDmaTracer&&) noexcept = default;
VfioDmaTracer& VfioDmaTracer::operator=(VfioDmaTracer&&) noexcept = default;
VfioDmaTracer::~VfioDmaTracer() = default;

Result<VfioDmaTracer> VfioDmaTracer::start(const VfioDmaOptions& options) {
    detail::install_libbpf_logging();
    COIOMMU_TRY(check_bpf_privileges(), "vfio_dma");
    COIOMMU_TRY(detail::ensure_tracefs(), "vfio_dma");

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
    COIOMMU_TRY(impl->skel.load());
    COIOMMU_TRY(impl->skel.attach());

    if (options.slow_threshold) {
        const Impl* self = impl.get();
        auto ring = RingReader::open(bpf_map__fd(impl->skel->maps.vfio_dma_events),
                                     [self](std::span<const std::byte> rec) { self->deliver(rec); });
        if (!ring) return coiommu::unexpected(with_context(ring.error(), "vfio_dma_events"));
        impl->ring.emplace(std::move(*ring));
    }
    return VfioDmaTracer(std::move(impl));
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
    const auto& links = impl_->skel->links;
    const auto& progs = impl_->skel->progs;
    return detail::object_programs(impl_->skel->obj, "tracepoint", [&](const bpf_program* p) {
        if (p == progs.vfio_dma_enter) return links.vfio_dma_enter != nullptr;
        if (p == progs.vfio_dma_exit) return links.vfio_dma_exit != nullptr;
        return false;
    });
}

}  // namespace coiommu::bpf
