// The BAR0 register model and the two shared-memory BARs.
//
// Differences from crosvm (engine/README.md, "Device model"), all because the register values and
// the access sizes are guest-controlled and a VMM must not die on them:
//  - DEACTIVATE, PARK overflow and a trigger byte beyond the notifymap are refused with a log line
//    and a counter instead of a panic;
//  - crosvm's 2022 backend starts the workers as soon as root and level are both written; like
//    upstream we start them on ACTIVATE only (writes to root/level just record the values);
//  - upstream ignores ACTIVATE while dtt_root or dtt_level is 0, so a vCPU that already wrote its
//    slot spins until its timeout; we start the engine anyway (it fails every request on the
//    invalid DTT, PINNED clear), and an ACTIVATE we must refuse (no engine, engine cannot start)
//    completes every written slot with nothing pinned;
//  - the topologymap is sealed with F_SEAL_FUTURE_WRITE after it is written, so the read-only
//    guest mapping is enforced by the kernel rather than by the VMM's flags alone.
#include "engine/device/device.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::device {
namespace {

constexpr const char* kLog = "coiommu-dev";

constexpr std::array<BarSpec, 3> kBars{{
    {core::kMmioBar, core::kMmioBarSize, BarKind::Mmio, true, true, true},
    {core::kNotifymapBar, core::kNotifymapSize, BarKind::Notifymap, true, true, true},
    {core::kTopologymapBar, core::kTopologymapSize, BarKind::Topologymap, true, true, false},
}};

// Number of u64 registers below the trigger area (dtt_root, cmd, dtt_level).
constexpr uint64_t kRegCount = core::kRegTriggerBase / core::kRegSize;
static_assert(kRegCount == 3);

Result<UniqueFd> make_memfd(const char* name, uint64_t size) {
    UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return make_error(errno, fmt::format("memfd_create {}", name));
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        return make_error(errno, fmt::format("ftruncate {}", name));
    }
    return fd;
}

Status add_seals(int fd, int seals, const char* name) {
    if (::fcntl(fd, F_ADD_SEALS, seals) != 0) return make_error(errno, fmt::format("seal {}", name));
    return ok();
}

uint64_t load_u64(std::span<const std::byte> data) {
    uint64_t v = 0;
    std::memcpy(&v, data.data(), sizeof v);  // native endian, as the guest's MMIO write
    return v;
}

}  // namespace

std::span<const BarSpec> CoiommuDevice::bars() { return kBars; }

Result<std::unique_ptr<CoiommuDevice>> CoiommuDevice::make(const DeviceConfig& cfg) {
    if ((cfg.endpoints.size() + 1) * core::kTopologyEntrySize > core::kTopologymapSize) {
        return make_error(
            EINVAL, fmt::format("too many endpoints: {} (at most {})", cfg.endpoints.size(), core::kMaxEndpoints));
    }
    if (cfg.vcpus == 0 || cfg.vcpus > core::kMaxVcpus) {
        return make_error(EINVAL, fmt::format("vcpus {} outside 1..{}", cfg.vcpus, core::kMaxVcpus));
    }
    std::unique_ptr<CoiommuDevice> dev(new CoiommuDevice());
    dev->vcpus_ = cfg.vcpus;
    dev->endpoints_ = cfg.endpoints;
    dev->triggers_.reserve(cfg.vcpus);
    for (uint32_t i = 0; i < cfg.vcpus; ++i) {
        auto ev = EventFd::create(Blocking::No);
        if (!ev) return coiommu::unexpected(with_context(ev.error(), fmt::format("trigger eventfd {}", i)));
        dev->triggers_.push_back(std::move(*ev));
    }
    return dev;
}

Status CoiommuDevice::map_notifymap(UniqueFd fd) {
    void* p = ::mmap(nullptr, core::kNotifymapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return make_error(errno, "mmap notifymap");
    slots_ = static_cast<uint64_t*>(p);
    notifymap_fd_ = std::move(fd);
    return ok();
}

Result<std::unique_ptr<CoiommuDevice>> CoiommuDevice::create(const DeviceConfig& cfg) {
    COIOMMU_ASSIGN_OR_RETURN(auto dev, make(cfg));
    // Notifymap: zeroed slots; sealed against resizing so no one can truncate it under our
    // mapping (a SIGBUS in the engine).
    auto notify = make_memfd("coiommu_notifymap", core::kNotifymapSize);
    if (!notify) return coiommu::unexpected(notify.error());
    if (auto st = add_seals(notify->get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, "notifymap"); !st) {
        return coiommu::unexpected(st.error());
    }
    COIOMMU_TRY(dev->map_notifymap(std::move(*notify)));

    // Topologymap: u16 count then the BDFs, written once with pwrite (never mapped writable), then
    // sealed so that neither we nor the VMM nor the guest can change it.
    auto topo = make_memfd("coiommu_topologymap", core::kTopologymapSize);
    if (!topo) return coiommu::unexpected(topo.error());
    std::vector<uint16_t> words;
    words.reserve(cfg.endpoints.size() + 1);
    words.push_back(static_cast<uint16_t>(cfg.endpoints.size()));
    words.insert(words.end(), cfg.endpoints.begin(), cfg.endpoints.end());
    const auto bytes = static_cast<ssize_t>(words.size() * sizeof(uint16_t));
    const ssize_t n = ::pwrite(topo->get(), words.data(), static_cast<size_t>(bytes), 0);
    if (n != bytes) return make_error(n < 0 ? errno : EIO, "write topologymap");
    if (auto st =
            add_seals(topo->get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL, "topologymap");
        !st) {
        return coiommu::unexpected(st.error());
    }
    dev->topologymap_fd_ = std::move(*topo);
    return dev;
}

Result<std::unique_ptr<CoiommuDevice>> CoiommuDevice::adopt(const DeviceConfig& cfg, UniqueFd notifymap,
                                                            UniqueFd topologymap) {
    COIOMMU_ASSIGN_OR_RETURN(auto dev, make(cfg));
    // The notifymap is mapped here and written by the engine: it must not be able to shrink.
    const int nseals = ::fcntl(notifymap.get(), F_GET_SEALS);
    struct stat st {};
    if (nseals < 0 || (nseals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) ||
        ::fstat(notifymap.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) != core::kNotifymapSize) {
        return make_error(EINVAL, "resume: the notifymap must be a sealed memfd of the notifymap's size");
    }
    COIOMMU_TRY(dev->map_notifymap(std::move(notifymap)), "resume");
    // The topologymap the guest reads must be the one this device serves, and stay that way.
    const int tseals = ::fcntl(topologymap.get(), F_GET_SEALS);
    if (tseals < 0 || (tseals & F_SEAL_FUTURE_WRITE) == 0) {
        return make_error(EINVAL, "resume: the topologymap must be sealed against writes");
    }
    COIOMMU_ASSIGN_OR_RETURN(auto bdfs, read_topology(topologymap.get()), "resume: topologymap");
    if (bdfs != cfg.endpoints) {
        return make_error(EINVAL, "resume: the topologymap does not hold the endpoints of this session");
    }
    dev->topologymap_fd_ = std::move(topologymap);
    return dev;
}

void CoiommuDevice::restore(const Registers& r) {
    std::lock_guard lock(mu_);
    dtt_root_ = raw(r.dtt_root);
    dtt_level_ = r.dtt_level;
    active_ = r.active;
    park_count_ = std::min(r.park_count, kMaxParkDepth);
}

CoiommuDevice::Registers CoiommuDevice::registers() const {
    std::lock_guard lock(mu_);
    return Registers{Gpa{dtt_root_}, dtt_level_, active_, park_count_};
}

CoiommuDevice::~CoiommuDevice() {
    if (slots_ != nullptr) ::munmap(slots_, core::kNotifymapSize);
}

void CoiommuDevice::set_engine(EngineControl* engine) {
    std::lock_guard lock(mu_);
    engine_ = engine;
}

Gpa CoiommuDevice::dtt_root() const {
    std::lock_guard lock(mu_);
    return Gpa{dtt_root_};
}

uint64_t CoiommuDevice::dtt_level() const {
    std::lock_guard lock(mu_);
    return dtt_level_;
}

bool CoiommuDevice::active() const {
    std::lock_guard lock(mu_);
    return active_;
}

uint64_t CoiommuDevice::park_count() const {
    std::lock_guard lock(mu_);
    return park_count_;
}

void CoiommuDevice::mmio_read(uint64_t offset, std::span<std::byte> data) {
    if (offset >= core::kRegTriggerBase) {
        counters_.bad_mmio_accesses.fetch_add(1, std::memory_order_relaxed);
        CLOG_ERROR_RL(kLog, "read_mmio: invalid offset {:#x}", offset);
        return;
    }
    if (offset % core::kRegSize != 0 || data.size() != core::kRegSize) {
        counters_.bad_mmio_accesses.fetch_add(1, std::memory_order_relaxed);
        CLOG_ERROR_RL(kLog, "read_mmio: unaligned access: offset {:#x} len {} (expect 8)", offset, data.size());
        return;
    }
    uint64_t v = 0;
    {
        std::lock_guard lock(mu_);
        switch (offset) {
            case core::kRegDttRoot: v = dtt_root_; break;
            case core::kRegCmd: v = 0; break;  // commands are actions, never stored
            case core::kRegDttLevel: v = dtt_level_; break;
            default: return;  // unreachable: offset < 0x18 and 8-aligned
        }
    }
    std::memcpy(data.data(), &v, sizeof v);
}

void CoiommuDevice::mmio_write(uint64_t offset, std::span<const std::byte> data) {
    if (offset >= core::kRegTriggerBase) {
        write_trigger(offset, data.size());
        return;
    }
    if (offset % core::kRegSize != 0 || data.size() != core::kRegSize) {
        counters_.bad_mmio_accesses.fetch_add(1, std::memory_order_relaxed);
        CLOG_ERROR_RL(kLog, "write_mmio: unaligned access: offset {:#x} len {} (expect 8)", offset, data.size());
        return;
    }
    write_register(offset / core::kRegSize, load_u64(data));
}

void CoiommuDevice::write_register(uint64_t index, uint64_t value) {
    std::lock_guard lock(mu_);
    switch (index * core::kRegSize) {
        case core::kRegDttRoot:
            if (dtt_root_ == 0) {
                dtt_root_ = value;
            } else {
                CLOG_WARN_RL(kLog, "dtt_root is write-once: ignoring {:#x}", value);
            }
            return;
        case core::kRegDttLevel:
            if (dtt_level_ == 0) {
                dtt_level_ = value;
            } else {
                CLOG_WARN_RL(kLog, "dtt_level is write-once: ignoring {}", value);
            }
            return;
        case core::kRegCmd: write_command(value); return;
        default: return;  // unreachable: index < kRegCount
    }
}

// Precondition: mu_ held.
void CoiommuDevice::write_command(uint64_t value) {
    switch (value) {
        case static_cast<uint64_t>(core::Command::Activate): {
            if (active_) {
                CLOG_INFO(kLog, "ACTIVATE: already active");
                return;
            }
            // A missing or invalid dtt_root/dtt_level is the engine's to judge: it starts and fails
            // every request on the walk (PINNED clear), as for a level above 7. Refusing here would
            // leave every vCPU that already wrote its slot spinning.
            if (engine_ == nullptr) {
                counters_.activate_refused.fetch_add(1, std::memory_order_relaxed);
                CLOG_ERROR_RL(kLog, "ACTIVATE refused: no engine attached (dtt_root {:#x} dtt_level {})", dtt_root_,
                              dtt_level_);
                complete_pending_slots();
                return;
            }
            auto st = engine_->activate(Gpa{dtt_root_}, dtt_level_);
            if (!st) {
                counters_.activate_refused.fetch_add(1, std::memory_order_relaxed);
                CLOG_ERROR(kLog, "ACTIVATE: the engine did not start: {}", st.error().message());
                complete_pending_slots();
                return;
            }
            active_ = true;
            return;
        }
        case static_cast<uint64_t>(core::Command::Deactivate):
            // The guest driver sends this on probe failure or removal; crosvm panics ("Deactivate is
            // not supported"). Pins stay in place; the VM keeps running.
            counters_.deactivate_refused.fetch_add(1, std::memory_order_relaxed);
            CLOG_ERROR_RL(kLog, "DEACTIVATE is not supported: ignored (device stays {})",
                          active_ ? "active" : "inactive");
            return;
        case static_cast<uint64_t>(core::Command::ParkUnpin):
            if (park_count_ >= kMaxParkDepth) {
                counters_.park_overflows.fetch_add(1, std::memory_order_relaxed);
                CLOG_ERROR_RL(kLog, "PARK_UNPIN refused: park depth at its limit {}", kMaxParkDepth);
                return;
            }
            if (park_count_++ == 0 && engine_ != nullptr) engine_->park_unpin();
            return;
        case static_cast<uint64_t>(core::Command::UnparkUnpin):
            if (park_count_ == 0) {
                counters_.unpark_underflows.fetch_add(1, std::memory_order_relaxed);
                CLOG_ERROR_RL(kLog, "UNPARK_UNPIN while not parked: ignored");
                return;
            }
            if (--park_count_ == 0 && engine_ != nullptr) engine_->unpark_unpin();
            return;
        default:
            counters_.ignored_commands.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "unknown command {:#x}: ignored", value);
            return;
    }
}

// Precondition: mu_ held. Nothing will serve the requests already written: complete them with
// nothing pinned (the guest re-reads PINNED, finds it clear and fails its map) instead of leaving
// the vCPUs spinning until their 5 s timeout.
void CoiommuDevice::complete_pending_slots() {
    for (uint32_t v = 0; v < vcpus_; ++v) {
        // Safety: v < vcpus_ <= 1024: inside the notifymap mapping, 8-byte aligned. Acquire load to
        // skip empty slots; release store as every completion (nothing was pinned).
        if (slot(v).load(std::memory_order_acquire) == 0) continue;
        slot(v).store(0, std::memory_order_release);
        counters_.trigger_completed.fetch_add(1, std::memory_order_relaxed);
    }
}

void CoiommuDevice::write_trigger(uint64_t offset, std::size_t len) {
    if (len != 1) {
        counters_.bad_mmio_accesses.fetch_add(1, std::memory_order_relaxed);
        CLOG_ERROR_RL(kLog, "write_mmio: trigger offset {:#x} len {} (expect 1)", offset, len);
        return;
    }
    const uint64_t index = offset - core::kRegTriggerBase;
    if (index < vcpus_) {
        // The ioeventfd did not swallow the write (not registered yet, or a VMM that traps): hand it
        // to the engine exactly as the ioeventfd would.
        counters_.trigger_signalled.fetch_add(1, std::memory_order_relaxed);
        if (auto st = triggers_[index].signal(); !st) {
            CLOG_ERROR_RL(kLog, "trigger {}: {}", index, st.error().message());
        }
        return;
    }
    if (index < core::kMaxVcpus) {
        counters_.trigger_completed.fetch_add(1, std::memory_order_relaxed);
        // Safety: index < 1024, so the slot lies inside the 0x2000-byte notifymap mapping and is
        // 8-byte aligned. Release: the guest spinning on this slot may go on (nothing was pinned).
        slot(static_cast<uint32_t>(index)).store(0, std::memory_order_release);
        CLOG_ERROR_RL(kLog, "no page will be pinned: trigger {} has no vCPU (vcpus {})", index, vcpus_);
        return;
    }
    counters_.trigger_out_of_range.fetch_add(1, std::memory_order_relaxed);
    CLOG_ERROR_RL(kLog, "trigger offset {:#x} beyond the {} notify slots: ignored", offset, core::kMaxVcpus);
}

Result<std::vector<uint16_t>> read_topology(int topologymap_fd) {
    uint16_t count = 0;
    ssize_t n = ::pread(topologymap_fd, &count, sizeof count, 0);
    if (n != sizeof count) return make_error(n < 0 ? errno : EIO, "read topologymap count");
    if (count > core::kMaxEndpoints) {
        return make_error(EINVAL, fmt::format("topologymap count {} exceeds {}", count, core::kMaxEndpoints));
    }
    std::vector<uint16_t> bdfs(count);
    const auto bytes = static_cast<ssize_t>(count * sizeof(uint16_t));
    if (count != 0) {
        n = ::pread(topologymap_fd, bdfs.data(), static_cast<size_t>(bytes), sizeof(uint16_t));
        if (n != bytes) return make_error(n < 0 ? errno : EIO, "read topologymap entries");
    }
    std::erase(bdfs, uint16_t{0});
    return bdfs;
}

}  // namespace coiommu::device
