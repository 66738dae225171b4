// Strategies: how an emulated guest DMA map of a buffer gets the host to pin its pages.
//
//   coiommu  the CoIOMMU guest driver (engine/emulator/guest_driver.h) over a VmLink: mark the
//            DTT, send a pin request only for pages not PINNED, wait, re-check; unmap only
//            decrements map counts (lazy unpinning by the engine). IOVA = GPA.
//   strict   virtio-iommu in strict mode: every buffer map is a MAP request and every unmap an
//            UNMAP request (wire bytes, through a ViommuQueue to a ViommuDevice whose one endpoint
//            is attached to one domain backed by a VfioMapper on the DMA backend), one request
//            per kick: the run driver maps and unmaps one buffer at a time, each behind its own
//            safety check, so there is nothing to batch (the queue's device drains whatever the
//            vCPUs post meanwhile). The guest's IOVA allocator gives each outstanding buffer its
//            own IOVA slot. Pinned memory = mapped bytes.
//   static   all guest RAM is mapped with one DMA map per RAM region at setup (what a VMM does
//            without a vIOMMU); buffer maps and unmaps cost nothing. IOVA = GPA.
//
// Thread-safety: a Strategy is shared by the run driver's threads (vcpu() at setup, balloon()
// from the balloon thread, the rest from the driver); each VcpuDma belongs to one vCPU thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/loadgen/guest_layout.h"
#include "engine/loadgen/transport.h"
#include "engine/loadgen/workload.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/pin_engine.h"

namespace coiommu::loadgen {

enum class StrategyKind : uint8_t { Coiommu, Strict, Static };
inline constexpr StrategyKind kAllStrategies[] = {StrategyKind::Coiommu, StrategyKind::Strict, StrategyKind::Static};
[[nodiscard]] std::string_view to_string(StrategyKind k);
[[nodiscard]] std::optional<StrategyKind> parse_strategy(std::string_view text);

// Why an emulated DMA map or unmap failed (the guest sees the failure; the run goes on).
enum class MapFailure : uint8_t {
    NotPinned = 0,    // a page was still not PINNED after the pin request (the driver's -EFAULT)
    Timeout = 1,      // the host did not complete the request within the driver's 5 s
    SlotBusy = 2,     // the notify slot (or virtio-iommu mailbox) still held an earlier request
    DttNoMemory = 3,  // the guest's DTT page pool ran out
    MapCountCap = 4,  // a page's map count reached 0xFFFF - ncpus
    OutOfRange = 5,   // the page is beyond the DTT's reach
    IommuStatus = 6,  // virtio-iommu answered with a non-OK status
    IommuError = 7,   // virtio-iommu failed the request (used length 0)
    Other = 8,
};
inline constexpr std::size_t kMapFailures = 9;
inline constexpr std::array<std::string_view, kMapFailures> kMapFailureLabels{
    "not_pinned",   "timeout",      "slot_busy",   "dtt_no_memory", "map_count_cap",
    "out_of_range", "iommu_status", "iommu_error", "other"};

struct MapStatus {
    bool ok = true;
    MapFailure failure = MapFailure::Other;  // when !ok
    bool notified = false;                   // the guest sent the host a request for this map
    uint32_t requested = 0;                  // pages named in that request
};

// One vCPU's DMA path. Not thread-safe (one owner thread).
class VcpuDma {
public:
    virtual ~VcpuDma() = default;
    // Maps `buf` for device DMA. `slot` is the buffer's place among this vCPU's outstanding
    // buffers (0 .. max_outstanding-1; the strict strategy derives the IOVA from it). On success
    // *iova is where the device reaches the buffer.
    [[nodiscard]] virtual MapStatus map(const Buffer& buf, uint32_t slot, Iova* iova) = 0;
    // Unmaps a buffer mapped by map(). nullopt on success, else why it failed.
    [[nodiscard]] virtual std::optional<MapFailure> unmap(const Buffer& buf, Iova iova) = 0;
    // Requests this vCPU has sent to the host (pin requests / virtio-iommu requests).
    [[nodiscard]] virtual uint64_t notifications() const = 0;
};

struct StrategyEnv {
    const GuestMemory* mem = nullptr;
    const GuestLayout* layout = nullptr;
    dma::DmaBackend* backend = nullptr;
    uint32_t vcpus = 1;
    uint32_t max_outstanding = 1;                                // buffers one vCPU holds mapped at most
    uint32_t max_buffer_pages = 1;                               // B
    std::chrono::nanoseconds timeout = std::chrono::seconds(5);  // the guest driver's spin timeout
};

class Strategy {
public:
    virtual ~Strategy() = default;

    [[nodiscard]] virtual StrategyKind kind() const = 0;
    // The DMA path of vCPU `index` (< env.vcpus). Call at setup, once per vCPU.
    [[nodiscard]] virtual Result<std::unique_ptr<VcpuDma>> vcpu(uint32_t index) = 0;
    // The balloon asks for the ranges back (the guest no longer uses them). coiommu: the engine's
    // balloon unpin; strict: nothing of the ranges is mapped, Success; static: the whole-RAM
    // mapping cannot give pages back, Failed.
    [[nodiscard]] virtual Result<telemetry::BalloonResult> balloon(std::span<const workers::GfnRange> ranges) = 0;
    // Stops host-side background work so that the final counts form a consistent cut
    // (coiommu: the guest's PARK_UNPIN). Call after the vCPUs have stopped.
    [[nodiscard]] virtual Status quiesce() = 0;
    // The engine's statistics (coiommu), nullopt for strategies without an engine.
    [[nodiscard]] virtual Result<std::optional<telemetry::StatsSnapshot>> engine_stats() = 0;
    // What serves the guest, for reports ("variant=fast,workers=1,...", "virtio-iommu strict").
    [[nodiscard]] virtual std::string description() const = 0;
    // Tears down: the engine stops and unmaps what it mapped; the static mapping is removed; the
    // virtio-iommu queue stops. Idempotent.
    virtual void shutdown() = 0;
};

// coiommu over `link` (which the caller built: in-process or a socket). Programs the device as
// the guest driver's probe does (reads the topology BAR, builds the DTT, writes dtt_root,
// dtt_level, ACTIVATE) and checks that the device went active.
// Errors: EINVAL for a bad env; the link's; ENODEV when the topology lists no endpoint; EIO when
// ACTIVATE was refused; GuestDtt/GuestDriver creation errors.
[[nodiscard]] Result<std::unique_ptr<Strategy>> make_coiommu_strategy(const StrategyEnv& env,
                                                                      std::unique_ptr<VmLink> link);
// Errors: EINVAL for a bad env or when the outstanding buffers do not fit the container's IOVA
// space; ViommuDevice setup (endpoint, ATTACH) and queue start errors.
[[nodiscard]] Result<std::unique_ptr<Strategy>> make_strict_strategy(const StrategyEnv& env);
// Errors: EINVAL for a bad env; the backend's map error, or ENOSPC/EEXIST when the whole-RAM
// map was refused.
[[nodiscard]] Result<std::unique_ptr<Strategy>> make_static_strategy(const StrategyEnv& env);

// The IOVA the strict strategy gives slot `slot` of vCPU `vcpu` (exposed for tests).
[[nodiscard]] Iova strict_iova(const StrategyEnv& env, uint32_t vcpu, uint32_t slot);
// First IOVA of the strict strategy's window: above 4 GiB, clear of the x86 MSI window.
inline constexpr uint64_t kStrictIovaBase = uint64_t{1} << 32;

}  // namespace coiommu::loadgen
