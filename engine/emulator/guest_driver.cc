#include "engine/emulator/guest_driver.h"

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include <fmt/format.h>

#include "engine/core/spec.h"

namespace coiommu::emulator {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

}  // namespace

Result<NotifyMapping> NotifyMapping::map(int notifymap_fd) {
    void* p = ::mmap(nullptr, core::kNotifymapSize, PROT_READ | PROT_WRITE, MAP_SHARED, notifymap_fd, 0);
    if (p == MAP_FAILED) return make_error(errno, "mmap notifymap (guest BAR2)");
    NotifyMapping m;
    m.slots_ = static_cast<uint64_t*>(p);
    m.owned_ = true;
    return m;
}

NotifyMapping NotifyMapping::borrow(std::span<uint64_t> slots) {
    NotifyMapping m;
    m.slots_ = slots.data();
    return m;
}

NotifyMapping::~NotifyMapping() {
    if (owned_ && slots_ != nullptr) ::munmap(slots_, core::kNotifymapSize);
}

NotifyMapping::NotifyMapping(NotifyMapping&& o) noexcept
    : slots_(std::exchange(o.slots_, nullptr)), owned_(std::exchange(o.owned_, false)) {}

NotifyMapping& NotifyMapping::operator=(NotifyMapping&& o) noexcept {
    if (this != &o) {
        if (owned_ && slots_ != nullptr) ::munmap(slots_, core::kNotifymapSize);
        slots_ = std::exchange(o.slots_, nullptr);
        owned_ = std::exchange(o.owned_, false);
    }
    return *this;
}

Result<std::unique_ptr<GuestDriver>> GuestDriver::create(GuestDriverConfig cfg) {
    if (cfg.mem == nullptr || cfg.dtt == nullptr) return make_error(EINVAL, "guest driver: no memory or DTT");
    if (cfg.trigger_fds.empty() && !cfg.trap_trigger) return make_error(EINVAL, "guest driver: no triggers");
    if (!cfg.notify_slots.empty() && cfg.notify_slots.size() < core::kMaxVcpus) {
        return make_error(EINVAL, "guest driver: notify_slots smaller than the notifymap");
    }
    auto notify = cfg.notify_slots.empty() ? NotifyMapping::map(cfg.notifymap_fd)
                                           : Result<NotifyMapping>(NotifyMapping::borrow(cfg.notify_slots));
    if (!notify) return coiommu::unexpected(notify.error());
    std::unique_ptr<GuestDriver> d(new GuestDriver(std::move(cfg)));
    d->notify_ = std::move(*notify);
    return d;
}

Result<VcpuDriver> GuestDriver::vcpu(const VcpuConfig& cfg) {
    if (cfg.vcpu >= core::kMaxVcpus || (!cfg_.trap_trigger && cfg.vcpu >= cfg_.trigger_fds.size())) {
        return make_error(EINVAL, fmt::format("guest driver: no trigger for vcpu {}", cfg.vcpu));
    }
    if (cfg.batch_capacity != 0) {
        const uint64_t bytes = sizeof(core::PinPageInfo) + cfg.batch_capacity * core::kPinPageGfnSize;
        if (!cfg_.mem->contains(cfg.batch_gpa, bytes)) {
            return make_error(
                EFAULT, fmt::format("guest driver: batch buffer {:#x}+{:#x} outside RAM", raw(cfg.batch_gpa), bytes));
        }
    }
    VcpuDriver v(*this, cfg);
    v.unpinned_.reserve(cfg.batch_capacity != 0 ? cfg.batch_capacity : 1);
    return v;
}

void GuestDriver::trigger(uint32_t vcpu) const {
    if (cfg_.trap_trigger) {
        cfg_.trap_trigger(vcpu);
        return;
    }
    // What KVM does when the guest writes its trigger byte: signal the ioeventfd.
    const uint64_t one = 1;
    while (::write(cfg_.trigger_fds[vcpu], &one, sizeof one) < 0 && errno == EINTR) {}
}

Status VcpuDriver::notify(uint64_t value) {
    const GuestAtomicU64 slot = drv_->notifymap().slot(cfg_.vcpu);
    // Safety: the vCPU's slot in the guest's notifymap mapping (aligned). seq_cst as the driver's
    // plain store after its own memory writes (a batch's PinPageInfo) on x86 (TSO).
    if (slot.load(std::memory_order_seq_cst) != 0) {
        return make_error(EBUSY, fmt::format("vcpu {}: unexpected busy notify slot", cfg_.vcpu));
    }
    slot.store(value, std::memory_order_seq_cst);
    ++notifications_;
    drv_->trigger(cfg_.vcpu);
    const auto deadline = std::chrono::steady_clock::now() + drv_->cfg_.timeout;
    for (uint32_t i = 1;; ++i) {
        // Safety: as above; acquire pairs with the host's release store of 0, so the PINNED bits it
        // set before are visible to the re-read that follows.
        if (slot.load(std::memory_order_acquire) == 0) return ok();
        if ((i & 63) == 0) {
            if (drv_->cfg_.abort != nullptr && drv_->cfg_.abort->load(std::memory_order_relaxed)) {
                return make_error(ECANCELED,
                                  fmt::format("vcpu {}: notify {:#x} abandoned: the host went away", cfg_.vcpu, value));
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                return make_error(ETIMEDOUT, fmt::format("vcpu {}: notify {:#x} timed out", cfg_.vcpu, value));
            }
            ::sched_yield();  // an emulated vCPU shares few cores with the engine
        }
        cpu_relax();
    }
}

Status VcpuDriver::request_pins(uint16_t bdf, std::span<const Gfn> gfns) {
    if (gfns.empty()) return ok();
    if (gfns.size() == 1 && raw(gfns[0]) < (uint64_t{1} << 48)) {
        return notify((raw(gfns[0]) << core::kSingleGfnShift) | bdf);
    }
    if (gfns.size() > cfg_.batch_capacity) {
        return make_error(E2BIG, fmt::format("vcpu {}: {} gfns exceed the batch buffer of {}", cfg_.vcpu, gfns.size(),
                                             cfg_.batch_capacity));
    }
    const GuestMemory& mem = drv_->mem();
    core::PinPageInfo info{};
    info.bdf = bdf;
    info.nr_pages = gfns.size();
    if (auto st = mem.write_obj(cfg_.batch_gpa, info); !st) return st;
    auto list = mem.host_ptr(offset(cfg_.batch_gpa, sizeof info), gfns.size() * core::kPinPageGfnSize);
    if (!list) return coiommu::unexpected(list.error());
    // Safety: this vCPU's own batch buffer in guest RAM (bounds checked by vcpu()); the host reads
    // it only after the slot store below (seq_cst) publishes it.
    std::memcpy(*list, gfns.data(), gfns.size() * core::kPinPageGfnSize);
    return notify(raw(cfg_.batch_gpa) | core::kPinPagesInBatch);
}

Result<MapReport> VcpuDriver::map(std::span<const Gfn> gfns) {
    GuestDtt& dtt = drv_->dtt();
    unpinned_.clear();
    MapReport rep;
    std::size_t marked = 0;
    auto roll_back = [&](std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) (void)dtt.unmark_after_failure(gfns[i]);
    };
    for (; marked < gfns.size(); ++marked) {
        auto pinned = dtt.mark(gfns[marked]);
        if (!pinned) {
            roll_back(marked);
            return coiommu::unexpected(pinned.error());
        }
        if (!*pinned) unpinned_.push_back(gfns[marked]);
    }
    rep.pages = gfns.size();
    rep.requested = unpinned_.size();
    if (!unpinned_.empty()) {
        rep.notified = true;
        if (auto st = request_pins(cfg_.bdf, unpinned_); !st) {
            roll_back(gfns.size());
            return coiommu::unexpected(st.error());
        }
        for (Gfn g : unpinned_) {
            if (!dtt.pinned(g)) {
                roll_back(gfns.size());
                return make_error(EFAULT, fmt::format("vcpu {}: gfn {:#x} not pinned", cfg_.vcpu, raw(g)));
            }
        }
    }
    return rep;
}

Status VcpuDriver::unmap(std::span<const Gfn> gfns) {
    Status first = ok();
    for (Gfn g : gfns) {
        auto st = drv_->dtt().unmark(g);
        if (!st && first) first = st;
    }
    return first;
}

}  // namespace coiommu::emulator
