// The guest driver's DMA-map protocol (engine/README.md, "Guest driver protocol"), emulated on host
// threads so tests, benchmarks and the load generator can drive the real engine through the real
// shared memory:
//
//   map(gfns):  mark every page in the DTT (map count + 1, ACCESSED, test PINNED); if some pages
//               are not PINNED, ask for them - one page: slot := (gfn << 16) | bdf; several: a
//               PinPageInfo {bdf, nr_pages, gfn[]} in guest RAM and slot := gpa | (1 << 63) -
//               then write the vCPU's trigger and spin until the slot reads 0 (timeout: the
//               driver's 5 s); finally re-read PINNED: a page still unpinned fails the whole map
//               with EFAULT, after un-marking every page (count - 1, ACCESSED cleared at 0).
//   unmap(gfns): map count - 1 per page; no notification (lazy unpinning).
//
// The notifymap is mapped from its fd, as the guest's BAR2 mapping is, and the trigger is the
// vCPU's trigger eventfd (what the VMM's ioeventfd signals), or a callback that forwards a trapped
// MMIO byte write to the device model.
//
// Thread-safety: GuestDriver is shared by the vCPU threads (immutable after create); each
// VcpuDriver belongs to one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::emulator {

// A MAP_SHARED mapping of the notifymap memfd (the guest's BAR2). Move-only.
class NotifyMapping {
public:
    // Errors: mmap's errno.
    [[nodiscard]] static Result<NotifyMapping> map(int notifymap_fd);
    NotifyMapping() = default;
    ~NotifyMapping();
    NotifyMapping(NotifyMapping&& o) noexcept;
    NotifyMapping& operator=(NotifyMapping&& o) noexcept;
    NotifyMapping(const NotifyMapping&) = delete;
    NotifyMapping& operator=(const NotifyMapping&) = delete;

    // Borrows an existing mapping instead of mapping the fd (see GuestDriverConfig::notify_slots).
    [[nodiscard]] static NotifyMapping borrow(std::span<uint64_t> slots);

    // Precondition: vcpu < 1024.
    [[nodiscard]] GuestAtomicU64 slot(uint32_t vcpu) const { return GuestAtomicU64(slots_ + vcpu); }

private:
    uint64_t* slots_ = nullptr;
    bool owned_ = false;
};

struct GuestDriverConfig {
    const GuestMemory* mem = nullptr;
    GuestDtt* dtt = nullptr;
    int notifymap_fd = -1;
    // When non-empty (>= 1024 slots), the driver uses this existing mapping of the notifymap instead
    // of mapping notifymap_fd again. ThreadSanitizer tracks atomics by virtual address, so it cannot
    // see the synchronisation between two mappings of one memfd page; in-process guests (the tests,
    // coiommu-load without --connect) share the device's mapping.
    std::span<uint64_t> notify_slots;
    std::vector<int> trigger_fds;  // per vCPU (borrowed)
    // When set, a trigger is this call (e.g. CoiommuDevice::mmio_write of one byte at 0x18 + vcpu)
    // instead of a write to the vCPU's trigger eventfd.
    std::function<void(uint32_t vcpu)> trap_trigger;
    std::chrono::nanoseconds timeout = std::chrono::seconds(5);  // the driver's spin timeout
    // When set and true, a spinning notify gives up at once with ECANCELED (the host went away:
    // nothing will complete the slot). Borrowed; read with relaxed loads while spinning.
    const std::atomic<bool>* abort = nullptr;
};

struct VcpuConfig {
    uint32_t vcpu = 0;
    uint16_t bdf = 0;  // the endpoint this vCPU's DMA maps are for
    Gpa batch_gpa{};   // guest RAM for this vCPU's PinPageInfo (16 + 8 * capacity bytes)
    uint64_t batch_capacity = 0;
};

struct MapReport {
    uint64_t pages = 0;      // pages mapped
    uint64_t requested = 0;  // pages sent in the pin request (were not PINNED)
    bool notified = false;   // a request was sent
};

class VcpuDriver;

class GuestDriver {
public:
    // Errors: EINVAL for a missing mem/dtt or no triggers; NotifyMapping::map's errors.
    [[nodiscard]] static Result<std::unique_ptr<GuestDriver>> create(GuestDriverConfig cfg);

    // A driver for one vCPU thread. Errors: EINVAL for a vcpu without trigger, EFAULT when the batch
    // buffer is not inside guest RAM.
    [[nodiscard]] Result<VcpuDriver> vcpu(const VcpuConfig& cfg);

    [[nodiscard]] const NotifyMapping& notifymap() const { return notify_; }
    [[nodiscard]] GuestDtt& dtt() const { return *cfg_.dtt; }
    [[nodiscard]] const GuestMemory& mem() const { return *cfg_.mem; }

private:
    friend class VcpuDriver;
    explicit GuestDriver(GuestDriverConfig cfg) : cfg_(std::move(cfg)) {}
    void trigger(uint32_t vcpu) const;

    GuestDriverConfig cfg_;
    NotifyMapping notify_;
};

class VcpuDriver {
public:
    // The DMA map protocol above. Errors: EFAULT when a page is still not PINNED after the request
    // (every page un-marked again); the DTT's mark errors (ERANGE, ENOMEM, EINVAL at the count cap),
    // after un-marking what was marked; notify()'s errors.
    [[nodiscard]] Result<MapReport> map(std::span<const Gfn> gfns);
    // The DMA unmap: map count - 1 per page. Errors: GuestDtt::unmark's (the first one; the other
    // pages are still un-marked).
    [[nodiscard]] Status unmap(std::span<const Gfn> gfns);

    // The raw notify (sync_notify): EBUSY "unexpected busy" when the slot is not empty; write the
    // value, trigger, spin until the slot is 0. ETIMEDOUT after the timeout (the slot is left as is,
    // as the driver does); ECANCELED when GuestDriverConfig::abort became true.
    [[nodiscard]] Status notify(uint64_t value);
    // A pin request for `gfns` (single when one gfn, else a batch) with the given BDF.
    // Errors: E2BIG when they exceed the batch buffer; notify()'s.
    [[nodiscard]] Status request_pins(uint16_t bdf, std::span<const Gfn> gfns);

    [[nodiscard]] uint32_t index() const { return cfg_.vcpu; }
    [[nodiscard]] uint64_t notifications() const { return notifications_; }

private:
    friend class GuestDriver;
    VcpuDriver(const GuestDriver& drv, const VcpuConfig& cfg) : drv_(&drv), cfg_(cfg) {}

    const GuestDriver* drv_;
    VcpuConfig cfg_;
    std::vector<Gfn> unpinned_;  // scratch
    uint64_t notifications_ = 0;
};

}  // namespace coiommu::emulator
