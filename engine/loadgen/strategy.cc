#include "engine/loadgen/strategy.h"

#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/device/device.h"
#include "engine/emulator/guest_driver.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/loadgen/viommu_queue.h"
#include "engine/viommu/viommu_device.h"
#include "engine/viommu/protocol.h"
#include "engine/viommu/vfio_mapper.h"

namespace coiommu::loadgen {
namespace {

constexpr std::string_view kLog = "loadgen";

Status check_env(const StrategyEnv& env) {
    if (env.mem == nullptr || env.layout == nullptr || env.backend == nullptr) {
        return make_error(EINVAL, "strategy: no guest memory, layout or backend");
    }
    if (env.vcpus == 0 || env.max_outstanding == 0 || env.max_buffer_pages == 0) {
        return make_error(EINVAL, "strategy: vcpus, outstanding buffers and buffer pages must be at least 1");
    }
    return ok();
}

// ---- coiommu ------------------------------------------------------------------------------------

MapFailure failure_of_driver_errno(int err) {
    switch (err) {
        case EFAULT: return MapFailure::NotPinned;
        case ETIMEDOUT: return MapFailure::Timeout;
        case EBUSY: return MapFailure::SlotBusy;
        case ENOMEM: return MapFailure::DttNoMemory;
        case EINVAL: return MapFailure::MapCountCap;
        case ERANGE: return MapFailure::OutOfRange;
        default: return MapFailure::Other;
    }
}

class CoiommuVcpu final : public VcpuDma {
public:
    CoiommuVcpu(emulator::VcpuDriver drv, uint32_t max_pages) : drv_(std::move(drv)), gfns_(max_pages) {}

    MapStatus map(const Buffer& buf, uint32_t /*slot*/, Iova* iova) override {
        const std::span<const Gfn> gfns = fill(buf);
        auto rep = drv_.map(gfns);
        if (!rep) {
            MapStatus st{false, failure_of_driver_errno(rep.error().code), false, 0};
            // ETIMEDOUT / EBUSY come from the notify: a request was (or was to be) sent.
            st.notified = st.failure == MapFailure::NotPinned || st.failure == MapFailure::Timeout;
            return st;
        }
        *iova = Iova{raw(buf.first) << kPageShift};
        return MapStatus{true, MapFailure::Other, rep->notified, static_cast<uint32_t>(rep->requested)};
    }

    std::optional<MapFailure> unmap(const Buffer& buf, Iova /*iova*/) override {
        if (auto st = drv_.unmap(fill(buf)); !st) return MapFailure::Other;
        return std::nullopt;
    }

    uint64_t notifications() const override { return drv_.notifications(); }

private:
    std::span<const Gfn> fill(const Buffer& buf) {
        const uint32_t n = std::min<uint32_t>(buf.pages, static_cast<uint32_t>(gfns_.size()));
        for (uint32_t i = 0; i < n; ++i) gfns_[i] = Gfn{raw(buf.first) + i};
        return {gfns_.data(), n};
    }

    emulator::VcpuDriver drv_;
    std::vector<Gfn> gfns_;  // preallocated: no allocation per map
};

class CoiommuStrategy final : public Strategy {
public:
    static Result<std::unique_ptr<Strategy>> create(const StrategyEnv& env, std::unique_ptr<VmLink> link) {
        COIOMMU_TRY(check_env(env));
        if (!link) return make_error(EINVAL, "coiommu strategy: no link");
        if (link->vcpus() < env.vcpus) {
            return make_error(
                EINVAL, fmt::format("coiommu strategy: the device has {} vCPUs, {} wanted", link->vcpus(), env.vcpus));
        }
        std::unique_ptr<CoiommuStrategy> s(new CoiommuStrategy(env, std::move(link)));
        // The guest's PCI fixup: which endpoints get the CoIOMMU DMA ops.
        auto endpoints = device::read_topology(s->link_->topologymap_fd());
        if (!endpoints) return coiommu::unexpected(with_context(endpoints.error(), "guest: topology BAR"));
        if (endpoints->empty()) return make_error(ENODEV, "guest: the topology BAR lists no endpoint");
        s->endpoints_ = std::move(*endpoints);
        // The driver's probe: allocate the DTT, program dtt_root and dtt_level, ACTIVATE.
        emulator::GuestDttConfig dcfg;
        dcfg.levels = kDttLevels;
        dcfg.pool_base = env.layout->pool_base;
        dcfg.pool_pages = env.layout->pool_pages;
        dcfg.ncpus = env.vcpus;
        auto dtt = emulator::GuestDtt::create(*env.mem, dcfg);
        if (!dtt) return coiommu::unexpected(with_context(dtt.error(), "guest: DTT"));
        s->dtt_ = std::move(*dtt);
        emulator::GuestDriverConfig gcfg;
        gcfg.mem = env.mem;
        gcfg.dtt = s->dtt_.get();
        gcfg.notifymap_fd = s->link_->notifymap_fd();
        gcfg.notify_slots = s->link_->notify_slots();
        for (uint32_t i = 0; i < env.vcpus; ++i) gcfg.trigger_fds.push_back(s->link_->trigger_fd(i));
        gcfg.timeout = env.timeout;
        gcfg.abort = s->link_->lost_flag();  // a dead daemon completes nothing: do not spin on it
        auto drv = emulator::GuestDriver::create(std::move(gcfg));
        if (!drv) return coiommu::unexpected(with_context(drv.error(), "guest: driver"));
        s->driver_ = std::move(*drv);
        COIOMMU_TRY(s->write_reg(core::kRegDttRoot, raw(s->dtt_->dtt_root())));
        COIOMMU_TRY(s->write_reg(core::kRegDttLevel, s->dtt_->levels()));
        if (auto st = s->write_reg(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)); !st) {
            return coiommu::unexpected(st.error());
        }
        auto active = s->link_->active();
        if (!active) return coiommu::unexpected(with_context(active.error(), "guest: device state"));
        if (!*active) return make_error(EIO, "guest: the device refused ACTIVATE (see the engine's log)");
        return std::unique_ptr<Strategy>(std::move(s));
    }

    ~CoiommuStrategy() override { shutdown(); }

    StrategyKind kind() const override { return StrategyKind::Coiommu; }

    Result<std::unique_ptr<VcpuDma>> vcpu(uint32_t index) override {
        emulator::VcpuConfig vc;
        vc.vcpu = index;
        vc.bdf = endpoints_[index % endpoints_.size()];
        vc.batch_gpa = env_.layout->batch_gpa(index);
        vc.batch_capacity = env_.layout->batch_capacity;
        auto v = driver_->vcpu(vc);
        if (!v) return coiommu::unexpected(v.error());
        return std::unique_ptr<VcpuDma>(std::make_unique<CoiommuVcpu>(std::move(*v), env_.max_buffer_pages));
    }

    Result<telemetry::BalloonResult> balloon(std::span<const workers::GfnRange> ranges) override {
        return link_->balloon_unpin(ranges);
    }

    Status quiesce() override {
        if (parked_) return ok();
        // The guest's DTT shrinker brackets its scan the same way: once this returns, no unpin
        // touches the DTT or the backend any more.
        if (auto st = write_reg(core::kRegCmd, static_cast<uint64_t>(core::Command::ParkUnpin)); !st) return st;
        parked_ = true;
        return ok();
    }

    Result<std::optional<telemetry::StatsSnapshot>> engine_stats() override {
        auto s = link_->stats();
        if (!s) return coiommu::unexpected(s.error());
        return std::optional<telemetry::StatsSnapshot>(std::move(*s));
    }

    std::string description() const override { return link_->engine_description(); }

    void shutdown() override { link_->shutdown(); }

private:
    CoiommuStrategy(const StrategyEnv& env, std::unique_ptr<VmLink> link) : env_(env), link_(std::move(link)) {}

    Status write_reg(uint64_t offset, uint64_t value) {
        std::byte bytes[sizeof value];
        std::memcpy(bytes, &value, sizeof value);  // BAR0 registers are native-endian (x86: LE)
        return link_->mmio_write(offset, bytes);
    }

    StrategyEnv env_;
    std::unique_ptr<VmLink> link_;
    std::vector<uint16_t> endpoints_;
    std::unique_ptr<emulator::GuestDtt> dtt_;
    std::unique_ptr<emulator::GuestDriver> driver_;
    bool parked_ = false;
};

// ---- strict (virtio-iommu) ---------------------------------------------------------------------

constexpr uint32_t kEndpointId = 0x0018;  // the passthrough device's virtio-iommu endpoint id
constexpr uint32_t kDomainId = 1;
constexpr uint32_t kMapperId = 1;  // crosvm: the VFIO group id

template <class Body>
std::array<std::byte, sizeof(viommu::wire::ReqHead) + sizeof(Body)> encode(uint8_t type, const Body& body) {
    std::array<std::byte, sizeof(viommu::wire::ReqHead) + sizeof(Body)> out{};
    viommu::wire::ReqHead head;
    head.type = type;
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

MapFailure failure_of_queue_errno(int err) {
    switch (err) {
        case ETIMEDOUT: return MapFailure::Timeout;
        case EBUSY: return MapFailure::SlotBusy;
        default: return MapFailure::IommuError;
    }
}

class StrictVcpu final : public VcpuDma {
public:
    StrictVcpu(ViommuQueue& q, const StrategyEnv& env, uint32_t vcpu) : q_(q), env_(env), vcpu_(vcpu) {}

    MapStatus map(const Buffer& buf, uint32_t slot, Iova* iova) override {
        const Iova at = strict_iova(env_, vcpu_, slot);
        const uint64_t len = uint64_t{buf.pages} << kPageShift;
        viommu::wire::ReqMap body;
        body.domain = kDomainId;
        body.virt_start = raw(at);
        body.virt_end = raw(at) + len - 1;
        body.phys_start = raw(buf.first) << kPageShift;
        body.flags = viommu::wire::kMapFlagRead | viommu::wire::kMapFlagWrite;
        const auto req = encode(viommu::wire::kTypeMap, body);
        ++notifications_;
        auto status = q_.submit(vcpu_, req);
        if (!status) return MapStatus{false, failure_of_queue_errno(status.error().code), true, buf.pages};
        if (*status != viommu::wire::kStatusOk) return MapStatus{false, MapFailure::IommuStatus, true, buf.pages};
        *iova = at;
        return MapStatus{true, MapFailure::Other, true, buf.pages};
    }

    std::optional<MapFailure> unmap(const Buffer& buf, Iova iova) override {
        viommu::wire::ReqUnmap body;
        body.domain = kDomainId;
        body.virt_start = raw(iova);
        body.virt_end = raw(iova) + (uint64_t{buf.pages} << kPageShift) - 1;
        const auto req = encode(viommu::wire::kTypeUnmap, body);
        ++notifications_;
        auto status = q_.submit(vcpu_, req);
        if (!status) return failure_of_queue_errno(status.error().code);
        if (*status != viommu::wire::kStatusOk) return MapFailure::IommuStatus;
        return std::nullopt;
    }

    uint64_t notifications() const override { return notifications_; }

private:
    ViommuQueue& q_;
    const StrategyEnv env_;
    const uint32_t vcpu_;
    uint64_t notifications_ = 0;
};

class StrictStrategy final : public Strategy {
public:
    static Result<std::unique_ptr<Strategy>> create(const StrategyEnv& env) {
        COIOMMU_TRY(check_env(env));
        const uint64_t window = uint64_t{env.max_outstanding} * env.max_buffer_pages * kPageSize;
        const uint64_t last = kStrictIovaBase + uint64_t{env.vcpus} * window - 1;
        auto info = env.backend->info();
        if (!info) return coiommu::unexpected(with_context(info.error(), "strict: container info"));
        bool fits = info->iova_ranges.empty();
        for (const dma::IovaRange& r : info->iova_ranges) fits = fits || (r.start <= kStrictIovaBase && last <= r.end);
        if (!fits) {
            return make_error(EINVAL,
                              fmt::format("strict: {} vCPUs x {} outstanding buffers of {} pages need IOVAs "
                                          "{:#x}..{:#x}, outside the container's IOVA ranges",
                                          env.vcpus, env.max_outstanding, env.max_buffer_pages, kStrictIovaBase, last));
        }
        viommu::ViommuDevice::Options o;
        o.max_iova = last;
        std::unique_ptr<StrictStrategy> s(new StrictStrategy(env, std::make_unique<viommu::ViommuDevice>(o)));
        auto mapper = std::make_shared<viommu::VfioMapper>(*env.mem, *env.backend, kMapperId);
        if (auto st = s->dev_->add_endpoint(kEndpointId, mapper); !st) {
            return coiommu::unexpected(with_context(st.error(), "strict: virtio-iommu endpoint"));
        }
        // The guest's virtio-iommu driver attaches the device to its DMA domain at probe.
        viommu::wire::ReqAttach attach;
        attach.domain = kDomainId;
        attach.endpoint = kEndpointId;
        const auto req = encode(viommu::wire::kTypeAttach, attach);
        std::array<std::byte, sizeof(viommu::wire::ReqTail)> tail{};
        auto used = s->dev_->handle(req, tail);
        if (!used) return coiommu::unexpected(with_context(used.error(), "strict: ATTACH"));
        if (static_cast<uint8_t>(tail[0]) != viommu::wire::kStatusOk) {
            return make_error(EIO, fmt::format("strict: ATTACH answered status {}", static_cast<int>(tail[0])));
        }
        auto q = ViommuQueue::start(*s->dev_, env.vcpus, env.timeout);
        if (!q) return coiommu::unexpected(q.error());
        s->queue_ = std::move(*q);
        return std::unique_ptr<Strategy>(std::move(s));
    }

    ~StrictStrategy() override { shutdown(); }

    StrategyKind kind() const override { return StrategyKind::Strict; }

    Result<std::unique_ptr<VcpuDma>> vcpu(uint32_t index) override {
        if (index >= env_.vcpus) return make_error(EINVAL, fmt::format("strict: vcpu {} of {}", index, env_.vcpus));
        return std::unique_ptr<VcpuDma>(std::make_unique<StrictVcpu>(*queue_, env_, index));
    }

    Result<telemetry::BalloonResult> balloon(std::span<const workers::GfnRange> /*ranges*/) override {
        // Ballooned pages are not in any buffer the guest maps (the run driver excludes them), and
        // strict mode keeps nothing mapped that the guest does not map: nothing to give back.
        return telemetry::BalloonResult::Success;
    }

    Status quiesce() override { return ok(); }
    Result<std::optional<telemetry::StatsSnapshot>> engine_stats() override {
        return std::optional<telemetry::StatsSnapshot>();
    }
    std::string description() const override { return "virtio-iommu strict (one MAP/UNMAP per DMA map/unmap)"; }

    void shutdown() override {
        if (queue_) queue_->stop();
    }

private:
    StrictStrategy(const StrategyEnv& env, std::unique_ptr<viommu::ViommuDevice> dev)
        : env_(env), dev_(std::move(dev)) {}

    StrategyEnv env_;
    std::unique_ptr<viommu::ViommuDevice> dev_;
    std::unique_ptr<ViommuQueue> queue_;
};

// ---- static ------------------------------------------------------------------------------------

class StaticVcpu final : public VcpuDma {
public:
    MapStatus map(const Buffer& buf, uint32_t /*slot*/, Iova* iova) override {
        *iova = Iova{raw(buf.first) << kPageShift};
        return MapStatus{};
    }
    std::optional<MapFailure> unmap(const Buffer& /*buf*/, Iova /*iova*/) override { return std::nullopt; }
    uint64_t notifications() const override { return 0; }
};

class StaticStrategy final : public Strategy {
public:
    static Result<std::unique_ptr<Strategy>> create(const StrategyEnv& env) {
        COIOMMU_TRY(check_env(env));
        std::unique_ptr<StaticStrategy> s(new StaticStrategy(env));
        for (const GuestMemory::Region& r : env.mem->regions()) {
            const Hva hva{reinterpret_cast<uint64_t>(r.host)};
            auto out = env.backend->map(identity_iova(r.base), hva, r.size, dma::Prot::ReadWrite);
            if (!out) return coiommu::unexpected(with_context(out.error(), "static: map guest RAM"));
            if (*out != dma::MapOutcome::Mapped) {
                return make_error(*out == dma::MapOutcome::NoSpace ? ENOSPC : EEXIST,
                                  "static: the container refused the whole-RAM map");
            }
            s->mapped_.push_back(r.base);
            s->sizes_.push_back(r.size);
        }
        return std::unique_ptr<Strategy>(std::move(s));
    }

    ~StaticStrategy() override { shutdown(); }

    StrategyKind kind() const override { return StrategyKind::Static; }
    Result<std::unique_ptr<VcpuDma>> vcpu(uint32_t /*index*/) override {
        return std::unique_ptr<VcpuDma>(std::make_unique<StaticVcpu>());
    }
    Result<telemetry::BalloonResult> balloon(std::span<const workers::GfnRange> /*ranges*/) override {
        // Every page stays pinned by the whole-RAM mapping (type1 cannot bisect it): the balloon
        // cannot take memory back, which is the point of the comparison.
        return telemetry::BalloonResult::Failed;
    }
    Status quiesce() override { return ok(); }
    Result<std::optional<telemetry::StatsSnapshot>> engine_stats() override {
        return std::optional<telemetry::StatsSnapshot>();
    }
    std::string description() const override { return "static (all guest RAM mapped up front)"; }

    void shutdown() override {
        for (std::size_t i = 0; i < mapped_.size(); ++i) {
            if (auto st = env_.backend->unmap_exact(identity_iova(mapped_[i]), sizes_[i]); !st) {
                CLOG_ERROR(kLog, "static: unmapping guest RAM at {:#x}: {}", raw(mapped_[i]), st.error().message());
            }
        }
        mapped_.clear();
        sizes_.clear();
    }

private:
    explicit StaticStrategy(const StrategyEnv& env) : env_(env) {}

    StrategyEnv env_;
    std::vector<Gpa> mapped_;
    std::vector<uint64_t> sizes_;
};

}  // namespace

std::string_view to_string(StrategyKind k) {
    switch (k) {
        case StrategyKind::Coiommu: return "coiommu";
        case StrategyKind::Strict: return "strict";
        case StrategyKind::Static: return "static";
    }
    return "?";
}

std::optional<StrategyKind> parse_strategy(std::string_view text) {
    for (StrategyKind k : kAllStrategies) {
        if (to_string(k) == text) return k;
    }
    return std::nullopt;
}

Iova strict_iova(const StrategyEnv& env, uint32_t vcpu, uint32_t slot) {
    const uint64_t slot_bytes = uint64_t{env.max_buffer_pages} << kPageShift;
    return Iova{kStrictIovaBase + (uint64_t{vcpu} * env.max_outstanding + slot) * slot_bytes};
}

Result<std::unique_ptr<Strategy>> make_coiommu_strategy(const StrategyEnv& env, std::unique_ptr<VmLink> link) {
    return CoiommuStrategy::create(env, std::move(link));
}

Result<std::unique_ptr<Strategy>> make_strict_strategy(const StrategyEnv& env) { return StrictStrategy::create(env); }

Result<std::unique_ptr<Strategy>> make_static_strategy(const StrategyEnv& env) { return StaticStrategy::create(env); }

}  // namespace coiommu::loadgen
