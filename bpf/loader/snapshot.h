// Plain snapshots of the BPF maps: what coiommu-trace prints and what the Prometheus exporter
// exports. No libbpf types here; every value is a monotonic total since the programs were loaded
// (maps are never reset), so consumers compute interval deltas with delta_since().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace coiommu::bpf {

// Number of log2 slots; mirrors COIOMMU_HIST_SLOTS in bpf/abi/hist.h (static_assert'ed).
inline constexpr size_t kHistSlots = 40;
// The last slot also absorbs every larger value: its bound is +Inf.
inline constexpr size_t kOverflowSlot = kHistSlots - 1;

// A log2 histogram: slot k counts values v with ceil(log2(v)) == k (slot 0: v <= 1), so its
// upper bound is le = 2^k in the histogram's unit (ns for latencies, pages for sizes).
struct Log2Hist {
    std::array<uint64_t, kHistSlots> slots{};
    uint64_t sum = 0;    // sum of the raw values
    uint64_t count = 0;  // observations (== sum of slots once the writers are quiet)

    // Upper bound of slot k as a power of two (k < kOverflowSlot); kOverflowSlot is +Inf.
    [[nodiscard]] static uint64_t upper_bound(size_t k) { return uint64_t{1} << k; }
    // Lower bound (exclusive) of slot k: 2^(k-1); slot 0 starts at 0 (inclusive).
    [[nodiscard]] static uint64_t lower_bound(size_t k) { return k == 0 ? 0 : uint64_t{1} << (k - 1); }
    // The slot a value falls in; the same function as the BPF side's coiommu_hist_slot().
    [[nodiscard]] static size_t slot_of(uint64_t value);

    // Cumulative counts for a Prometheus histogram: cumulative()[k] = sum of slots[0..k].
    // The last entry is the +Inf bucket. Derived from the slots only, so +Inf always equals
    // total() even if writers raced with the read.
    [[nodiscard]] std::array<uint64_t, kHistSlots> cumulative() const;
    [[nodiscard]] uint64_t total() const;  // sum of slots
    // this - prev, field by field, saturating at 0 (a reset or reload never goes negative).
    [[nodiscard]] Log2Hist delta_since(const Log2Hist& prev) const;
    // Index of the highest non-empty slot, or -1 when empty.
    [[nodiscard]] int highest_slot() const;
    [[nodiscard]] int lowest_slot() const;
    void add(const Log2Hist& other);
};

// ---- vfio_dma (fentry/fexit on the VFIO and iommufd ioctl handlers, or the ioctl syscall tracepoints) ----

enum class VfioOp : uint32_t { VfioMap = 0, VfioUnmap = 1, IoasMap = 2, IoasUnmap = 3 };
inline constexpr size_t kVfioOpCount = 4;
// "vfio_map_dma", "vfio_unmap_dma", "ioas_map", "ioas_unmap".
[[nodiscard]] std::string_view op_name(VfioOp op);

// Result class of a call, from its return value (the ioctl handler's or the syscall's).
enum class ResultClass : uint32_t { Ok = 0, Eexist, Enospc, Enomem, Einval, Other };
inline constexpr size_t kResultClassCount = 6;
// "ok", "eexist", "enospc", "enomem", "einval", "other".
[[nodiscard]] std::string_view result_name(ResultClass r);
// The class of an ioctl return value (0 or -errno): what the BPF program counts.
[[nodiscard]] ResultClass classify_return(int64_t ret);

struct VfioCalls {
    std::array<uint64_t, kResultClassCount> by_result{};  // indexed by ResultClass
    uint64_t bytes = 0;                                   // sum of the size/length field of the calls' structs

    [[nodiscard]] uint64_t total() const;
    [[nodiscard]] uint64_t of(ResultClass r) const { return by_result[static_cast<size_t>(r)]; }
    [[nodiscard]] VfioCalls delta_since(const VfioCalls& prev) const;
};

struct VfioDmaDrops {
    uint64_t inflight_full = 0;  // calls not recorded because the in-flight map was full
    uint64_t ringbuf_full = 0;   // slow events lost
    uint64_t read_fault = 0;     // user structs that could not be read
};

struct VfioDmaSnapshot {
    std::array<Log2Hist, kVfioOpCount> latency_ns{};  // indexed by VfioOp
    std::array<VfioCalls, kVfioOpCount> calls{};
    VfioDmaDrops drops;
    uint64_t inflight_entries = 0;  // calls currently between their enter and exit hooks
    uint64_t inflight_max_entries = 0;

    [[nodiscard]] const Log2Hist& latency(VfioOp op) const { return latency_ns[static_cast<size_t>(op)]; }
    [[nodiscard]] const VfioCalls& calls_of(VfioOp op) const { return calls[static_cast<size_t>(op)]; }
    [[nodiscard]] VfioDmaSnapshot delta_since(const VfioDmaSnapshot& prev) const;
};

// A call slower than the threshold (ring buffer event).
struct SlowEvent {
    uint64_t ts_ns = 0;  // CLOCK_MONOTONIC at the exit hook (fexit or sys_exit_ioctl)
    uint64_t latency_ns = 0;
    uint64_t iova = 0;
    uint64_t size = 0;
    int64_t ret = 0;  // 0 or -errno
    uint32_t pid = 0;
    uint32_t tid = 0;
    VfioOp op = VfioOp::VfioMap;
    std::string comm;
};

// ---- engine (USDT) ----

inline constexpr size_t kEngineRequestKinds = 2;                // telemetry::RequestKind: single, batch
inline constexpr size_t kEngineDmaOps = 2;                      // map, unmap
inline constexpr size_t kEngineScanKinds = 2;                   // telemetry::ScanKind: lru, balloon
[[nodiscard]] std::string_view request_kind_name(size_t kind);  // "single", "batch"
[[nodiscard]] std::string_view engine_dma_op_name(size_t op);   // "map", "unmap"
[[nodiscard]] std::string_view scan_kind_name(size_t kind);     // "lru", "balloon"

struct EngineRequestCalls {
    uint64_t ok = 0;
    uint64_t failed = 0;
    [[nodiscard]] uint64_t total() const { return ok + failed; }
};

struct EngineDmaCalls {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t bytes = 0;
    [[nodiscard]] uint64_t total() const { return ok + failed; }
};

struct EngineScanStats {
    uint64_t scans = 0;
    uint64_t examined = 0;
    uint64_t unpinned = 0;
};

struct EngineSnapshot {
    std::array<Log2Hist, kEngineRequestKinds> request_latency_ns{};
    std::array<Log2Hist, kEngineRequestKinds> request_pages{};
    std::array<EngineRequestCalls, kEngineRequestKinds> requests{};
    std::array<Log2Hist, kEngineDmaOps> dma_latency_ns{};
    std::array<EngineDmaCalls, kEngineDmaOps> dma_calls{};
    std::array<Log2Hist, kEngineScanKinds> scan_duration_ns{};
    std::array<EngineScanStats, kEngineScanKinds> scans{};
    uint64_t bad_kind = 0;   // probe hits or records with an unknown kind
    uint64_t bad_batch = 0;  // request records lost (oversized batch, unreadable memory)

    [[nodiscard]] EngineSnapshot delta_since(const EngineSnapshot& prev) const;
};

// ---- vfio_kern (optional fentry) ----

inline constexpr size_t kKernFnCount = 2;  // timed: vfio_dma_do_map, vfio_dma_do_unmap
[[nodiscard]] std::string_view kern_fn_name(size_t fn);

// Every hooked function (the first two are the timed ones, same index).
enum class KernHook : uint32_t { DoMap = 0, DoUnmap = 1, PinPagesRemote = 2, RemoveDma = 3 };
inline constexpr size_t kKernHookCount = 4;
// The kernel function: "vfio_dma_do_map", "vfio_dma_do_unmap", "vfio_pin_pages_remote",
// "vfio_remove_dma".
[[nodiscard]] std::string_view kern_hook_name(KernHook hook);

// Calls of one hooked function (bytes of the ok ones: bpf/abi/vfio_kern.h says which size).
struct VfioKernCalls {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t bytes = 0;

    [[nodiscard]] uint64_t total() const { return ok + failed; }
    [[nodiscard]] VfioKernCalls delta_since(const VfioKernCalls& prev) const;
};

struct VfioKernSnapshot {
    std::array<Log2Hist, kKernFnCount> latency_ns{};
    std::array<VfioKernCalls, kKernHookCount> calls{};  // indexed by KernHook; 0 where not hooked

    [[nodiscard]] const VfioKernCalls& calls_of(KernHook h) const { return calls[static_cast<size_t>(h)]; }
    [[nodiscard]] VfioKernSnapshot delta_since(const VfioKernSnapshot& prev) const;
};

// ---- iommu_core (iommu:map / iommu:unmap tracepoints) ----

enum class IommuOp : uint32_t { Map = 0, Unmap = 1 };
inline constexpr size_t kIommuOpCount = 2;
[[nodiscard]] std::string_view iommu_op_name(IommuOp op);  // "map", "unmap"

struct IommuCalls {
    uint64_t calls = 0;
    uint64_t bytes = 0;        // map: mapped; unmap: what the IOMMU driver reports unmapped
    uint64_t requested = 0;    // the callers' sizes (map: == bytes)
    uint64_t short_calls = 0;  // unmaps that unmapped less than requested

    [[nodiscard]] IommuCalls delta_since(const IommuCalls& prev) const;
};

struct IommuCoreSnapshot {
    std::array<IommuCalls, kIommuOpCount> calls{};  // indexed by IommuOp
    std::array<Log2Hist, kIommuOpCount> pages{};    // 4 KiB pages per call (bytes >> 12)

    [[nodiscard]] const IommuCalls& calls_of(IommuOp op) const { return calls[static_cast<size_t>(op)]; }
    [[nodiscard]] const Log2Hist& pages_of(IommuOp op) const { return pages[static_cast<size_t>(op)]; }
    [[nodiscard]] IommuCoreSnapshot delta_since(const IommuCoreSnapshot& prev) const;
};

// ---- program self-metrics (coiommu_bpf_program_info / _attached / run time) ----

struct ProgramInfo {
    std::string program;  // BPF program name, e.g. "vfio_dma_enter"
    std::string attach;   // "tracepoint", "usdt", "fentry"
    uint32_t id = 0;      // kernel program id
    std::string tag;      // 16 hex digits
    bool attached = false;
    uint64_t run_time_ns = 0;  // 0 unless stats are enabled (StatsGuard / kernel.bpf_stats_enabled)
    uint64_t run_cnt = 0;
};

}  // namespace coiommu::bpf
