// The CoIOMMU PCI device model: what a VMM exposes to the guest (behaviour in engine/README.md,
// "Device model"), without the VMM.
//
//   PCI identity and three 64-bit prefetchable BARs, as data (pci_identity(), bars()):
//     BAR0  0x2000  MMIO registers: dtt_root (0x00), cmd (0x08), dtt_level (0x10), then one trigger
//                   byte per vCPU from 0x18 (the VMM registers trigger_fd(i) as an ioeventfd there)
//     BAR2  0x2000  notifymap: one u64 slot per vCPU, shared memory mapped RW into the guest
//     BAR4  0x2000  topologymap: u16 count + u16 BDFs, shared memory mapped read-only
//   The notifymap and topologymap are memfds this device creates (notifymap_fd(), topologymap_fd());
//   the topologymap is written once and sealed (F_SEAL_FUTURE_WRITE), so nobody can map it writable.
//
// BAR0 accesses that trap to the VMM are forwarded synchronously to mmio_read()/mmio_write().
// The device starts no thread: ACTIVATE and PARK/UNPARK are handed to an EngineControl (the
// workers layer implements it), so the VMM's call returns when the engine has acted.
//
// Register semantics (guest-controlled input, never fatal):
//  - reads: only dtt_root / cmd / dtt_level, 8-byte aligned, len 8; cmd always reads 0. Anything
//    else is logged (rate-limited), counted in bad_mmio_accesses, and leaves `data` untouched.
//  - writes below 0x18: 8-byte aligned, len 8, else logged and ignored. dtt_root and dtt_level are
//    write-once (accepted only while 0). cmd: ACTIVATE calls EngineControl::activate() once,
//    whatever dtt_root and dtt_level hold (the engine fails every request on an invalid DTT, a
//    level never written included); it is refused and counted only without an engine or when the
//    engine cannot start, and then every slot already written is completed with nothing pinned,
//    so no vCPU is left spinning; DEACTIVATE is refused
//    (logged, counted; the device stays as it is: crosvm panics here); PARK_UNPIN increments the
//    park count (refused at kMaxParkDepth) and parks the unpinner on 0 -> 1; UNPARK_UNPIN
//    decrements it (logged when already 0) and unparks on 1 -> 0; other values are ignored.
//  - writes at 0x18 + i (the trigger area; normally swallowed by the ioeventfd): len != 1 is logged
//    and ignored; a byte for an existing vCPU signals its trigger eventfd (the engine serves the
//    slot); for 1024 > i >= vcpus the slot is zeroed (the request completes with nothing pinned;
//    crosvm panics for i >= 1024 by indexing past the notifymap), beyond that logged and ignored.
//
// Thread-safety: mmio_read/mmio_write and the state getters may be called from any thread (one
// internal mutex; EngineControl calls happen under it, so they are serialised too). The fd and
// slot accessors are immutable after create().
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/core/spec.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::device {

struct PciIdentity {
    uint16_t vendor_id = core::kPciVendorId;
    uint16_t device_id = core::kPciDeviceId;
    uint16_t subsystem_vendor_id = core::kPciSubsystemVendorId;
    uint16_t subsystem_id = core::kPciSubsystemId;
    uint8_t revision_id = core::kPciRevisionId;
    uint8_t class_code = core::kPciClassCode;
    uint8_t subclass = core::kPciSubclass;
    uint8_t prog_if = core::kPciProgIf;
    uint8_t header_type = core::kPciHeaderType;
};

enum class BarKind : uint8_t { Mmio, Notifymap, Topologymap };

struct BarSpec {
    uint8_t index = 0;
    uint64_t size = 0;  // also the required alignment
    BarKind kind = BarKind::Mmio;
    bool is_64bit = true;
    bool prefetchable = true;
    // Mmio: trapped (except the trigger bytes, which are ioeventfds). The other two are shared
    // memory the VMM maps into the guest: notifymap read-write, topologymap read-only.
    bool guest_writable = true;
};

struct DeviceConfig {
    std::vector<uint16_t> endpoints;  // BDFs (bus << 8 | devfn) of the passthrough devices, <= 4095
    uint32_t vcpus = 1;               // 1..1024: one notify slot and trigger per vCPU
};

// What the device asks of the engine. Implemented by the workers layer (workers::Engine).
// Called with the device's mutex held, from the thread that forwarded the BAR0 access.
class EngineControl {
public:
    virtual ~EngineControl() = default;
    // ACTIVATE with the dtt_root and dtt_level the guest wrote (either may be 0). Starts pinning. A DTT the engine
    // finds invalid is not an error here (the engine completes every request with an error, as crosvm's workers do); an
    // Error means the engine could not start (threads, fds) and the device stays inactive.
    [[nodiscard]] virtual Status activate(Gpa dtt_root, uint64_t dtt_level) = 0;
    // Stops unpinning (LRU scans and balloon requests wait) until unpark_unpin(). Returns once no
    // unpin touches the DTT any more. May be called before activate().
    virtual void park_unpin() = 0;
    virtual void unpark_unpin() = 0;
};

// Counters of guest misbehaviour and fallbacks (relaxed; read at any time).
struct DeviceCounters {
    std::atomic<uint64_t> bad_mmio_accesses{0};  // wrong offset/size/alignment, reads or writes
    std::atomic<uint64_t> ignored_commands{0};   // unknown cmd values
    std::atomic<uint64_t> activate_refused{0};   // ACTIVATE without an engine, or engine error
    std::atomic<uint64_t> deactivate_refused{0};
    std::atomic<uint64_t> park_overflows{0};        // PARK_UNPIN at kMaxParkDepth
    std::atomic<uint64_t> unpark_underflows{0};     // UNPARK_UNPIN at park count 0
    std::atomic<uint64_t> trigger_signalled{0};     // trapped trigger byte -> trigger eventfd
    std::atomic<uint64_t> trigger_completed{0};     // trapped trigger byte for a vCPU without one
    std::atomic<uint64_t> trigger_out_of_range{0};  // trigger byte beyond the 1024 slots
};

// Nested PARK_UNPIN depth the device accepts. The guest parks once per concurrent DTT shrinker
// scan, so the depth is bounded by its CPU count; crosvm's u64 counter panics on overflow.
inline constexpr uint64_t kMaxParkDepth = 0xFFFF;

class CoiommuDevice {
public:
    // Creates the notifymap (0x2000, zeroed, RW) and topologymap (count + BDFs, sealed) memfds,
    // maps the notifymap here, and one trigger eventfd per vCPU.
    // Errors: EINVAL "too many endpoints" when (endpoints + 1) * 2 > 0x2000; EINVAL when vcpus is
    // 0 or above 1024; errno of memfd_create/ftruncate/mmap/fcntl/eventfd.
    [[nodiscard]] static Result<std::unique_ptr<CoiommuDevice>> create(const DeviceConfig& cfg);

    // The device of a resumed session (a restarted daemon): the same checks as create(), but the
    // notifymap and topologymap are the ones the VMM kept (still mapped into the guest), so BAR2
    // and BAR4 need no remapping and a request a vCPU wrote before the crash is still in its slot.
    // Both are untrusted: the notifymap must be a memfd of kNotifymapSize sealed against resizing,
    // the topologymap sealed against writes and holding exactly cfg.endpoints.
    // Errors: create()'s; EINVAL naming the mismatch; errno of fstat/fcntl/mmap/pread.
    [[nodiscard]] static Result<std::unique_ptr<CoiommuDevice>> adopt(const DeviceConfig& cfg, UniqueFd notifymap,
                                                                      UniqueFd topologymap);

    ~CoiommuDevice();
    CoiommuDevice(const CoiommuDevice&) = delete;
    CoiommuDevice& operator=(const CoiommuDevice&) = delete;

    // The engine that ACTIVATE/PARK/UNPARK are handed to (may be null: commands are then recorded
    // and ACTIVATE is refused). Must outlive the device or be reset to null first.
    void set_engine(EngineControl* engine);

    // The registers of a resumed session, as the guest last set them. Sets them without calling
    // the engine: the caller starts (activate_adopting) and parks the engine itself. Call before
    // any BAR0 access. Values are untrusted (the record is VMM-held) and are used as the guest's
    // own writes would be: root and level as written, park_count up to kMaxParkDepth.
    struct Registers {
        Gpa dtt_root{};
        uint64_t dtt_level = 0;
        bool active = false;
        uint64_t park_count = 0;
    };
    void restore(const Registers& r);
    [[nodiscard]] Registers registers() const;

    [[nodiscard]] static PciIdentity pci_identity() { return PciIdentity{}; }
    [[nodiscard]] static std::span<const BarSpec> bars();

    // A guest access to BAR0 at `offset` (relative to the BAR), of data.size() bytes.
    void mmio_read(uint64_t offset, std::span<std::byte> data);
    void mmio_write(uint64_t offset, std::span<const std::byte> data);

    // Borrowed fds for the VMM (valid while the device lives; dup to keep longer).
    [[nodiscard]] int notifymap_fd() const { return notifymap_fd_.get(); }
    [[nodiscard]] int topologymap_fd() const { return topologymap_fd_.get(); }
    // Precondition: vcpu < vcpus().
    [[nodiscard]] int trigger_fd(uint32_t vcpu) const { return triggers_[vcpu].fd(); }
    [[nodiscard]] const EventFd& trigger(uint32_t vcpu) const { return triggers_[vcpu]; }

    // This process's mapping of the notifymap: kMaxVcpus u64 slots, the first vcpus() in use.
    // Shared with the guest; access the words atomically (GuestAtomicU64).
    [[nodiscard]] std::span<uint64_t> notify_slots() const { return {slots_, core::kMaxVcpus}; }
    // Precondition: vcpu < kMaxVcpus.
    [[nodiscard]] GuestAtomicU64 slot(uint32_t vcpu) const { return GuestAtomicU64(slots_ + vcpu); }

    [[nodiscard]] uint32_t vcpus() const { return vcpus_; }
    [[nodiscard]] std::span<const uint16_t> endpoints() const { return endpoints_; }

    [[nodiscard]] Gpa dtt_root() const;
    [[nodiscard]] uint64_t dtt_level() const;
    [[nodiscard]] bool active() const;
    [[nodiscard]] uint64_t park_count() const;
    [[nodiscard]] const DeviceCounters& counters() const { return counters_; }

private:
    CoiommuDevice() = default;

    [[nodiscard]] static Result<std::unique_ptr<CoiommuDevice>> make(const DeviceConfig& cfg);
    [[nodiscard]] Status map_notifymap(UniqueFd fd);
    void write_register(uint64_t index, uint64_t value);
    void write_command(uint64_t value);
    void complete_pending_slots();
    void write_trigger(uint64_t offset, std::size_t len);

    uint32_t vcpus_ = 0;
    std::vector<uint16_t> endpoints_;
    UniqueFd notifymap_fd_;
    UniqueFd topologymap_fd_;
    uint64_t* slots_ = nullptr;  // mmap of notifymap_fd_, kNotifymapSize bytes
    std::vector<EventFd> triggers_;

    mutable std::mutex mu_;
    EngineControl* engine_ = nullptr;
    uint64_t dtt_root_ = 0;
    uint64_t dtt_level_ = 0;
    bool active_ = false;
    uint64_t park_count_ = 0;
    DeviceCounters counters_;
};

// The guest's view of the topologymap (BAR4): reads the count and the BDFs from a topologymap fd
// (the guest driver's PCI fixup). Zero BDFs are skipped as the guest does.
// Errors: errno of pread; EINVAL when the count exceeds kMaxEndpoints.
[[nodiscard]] Result<std::vector<uint16_t>> read_topology(int topologymap_fd);

}  // namespace coiommu::device
