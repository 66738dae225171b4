#include "bpf/loader/snapshot.h"

#include <algorithm>
#include <cerrno>

namespace coiommu::bpf {

namespace {

uint64_t sat_sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

template <class T, size_t N, class F>
std::array<T, N> zip(const std::array<T, N>& a, const std::array<T, N>& b, F f) {
    std::array<T, N> out{};
    for (size_t i = 0; i < N; ++i) out[i] = f(a[i], b[i]);
    return out;
}

}  // namespace

size_t Log2Hist::slot_of(uint64_t value) {
    if (value <= 1) return 0;
    // ceil(log2(v)) = floor(log2(v - 1)) + 1 for v >= 2.
    const size_t slot = static_cast<size_t>(64 - __builtin_clzll(value - 1));
    return std::min(slot, kOverflowSlot);
}

std::array<uint64_t, kHistSlots> Log2Hist::cumulative() const {
    std::array<uint64_t, kHistSlots> out{};
    uint64_t acc = 0;
    for (size_t k = 0; k < kHistSlots; ++k) {
        acc += slots[k];
        out[k] = acc;
    }
    return out;
}

uint64_t Log2Hist::total() const {
    uint64_t acc = 0;
    for (uint64_t s : slots) acc += s;
    return acc;
}

Log2Hist Log2Hist::delta_since(const Log2Hist& prev) const {
    Log2Hist d;
    d.slots = zip(slots, prev.slots, sat_sub);
    d.sum = sat_sub(sum, prev.sum);
    d.count = sat_sub(count, prev.count);
    return d;
}

int Log2Hist::highest_slot() const {
    for (size_t k = kHistSlots; k-- > 0;) {
        if (slots[k] != 0) return static_cast<int>(k);
    }
    return -1;
}

int Log2Hist::lowest_slot() const {
    for (size_t k = 0; k < kHistSlots; ++k) {
        if (slots[k] != 0) return static_cast<int>(k);
    }
    return -1;
}

void Log2Hist::add(const Log2Hist& other) {
    for (size_t k = 0; k < kHistSlots; ++k) slots[k] += other.slots[k];
    sum += other.sum;
    count += other.count;
}

std::string_view op_name(VfioOp op) {
    switch (op) {
        case VfioOp::VfioMap: return "vfio_map_dma";
        case VfioOp::VfioUnmap: return "vfio_unmap_dma";
        case VfioOp::IoasMap: return "ioas_map";
        case VfioOp::IoasUnmap: return "ioas_unmap";
    }
    return "unknown";
}

std::string_view result_name(ResultClass r) {
    switch (r) {
        case ResultClass::Ok: return "ok";
        case ResultClass::Eexist: return "eexist";
        case ResultClass::Enospc: return "enospc";
        case ResultClass::Enomem: return "enomem";
        case ResultClass::Einval: return "einval";
        case ResultClass::Other: return "other";
    }
    return "unknown";
}

ResultClass classify_return(int64_t ret) {
    switch (ret) {
        case 0: return ResultClass::Ok;
        case -EEXIST: return ResultClass::Eexist;
        case -ENOSPC: return ResultClass::Enospc;
        case -ENOMEM: return ResultClass::Enomem;
        case -EINVAL: return ResultClass::Einval;
        default: return ResultClass::Other;
    }
}

uint64_t VfioCalls::total() const {
    uint64_t acc = 0;
    for (uint64_t c : by_result) acc += c;
    return acc;
}

VfioCalls VfioCalls::delta_since(const VfioCalls& prev) const {
    VfioCalls d;
    d.by_result = zip(by_result, prev.by_result, sat_sub);
    d.bytes = sat_sub(bytes, prev.bytes);
    return d;
}

VfioDmaSnapshot VfioDmaSnapshot::delta_since(const VfioDmaSnapshot& prev) const {
    VfioDmaSnapshot d;
    for (size_t i = 0; i < kVfioOpCount; ++i) {
        d.latency_ns[i] = latency_ns[i].delta_since(prev.latency_ns[i]);
        d.calls[i] = calls[i].delta_since(prev.calls[i]);
    }
    d.drops.inflight_full = sat_sub(drops.inflight_full, prev.drops.inflight_full);
    d.drops.ringbuf_full = sat_sub(drops.ringbuf_full, prev.drops.ringbuf_full);
    d.drops.read_fault = sat_sub(drops.read_fault, prev.drops.read_fault);
    d.inflight_entries = inflight_entries;  // a gauge, not a counter
    d.inflight_max_entries = inflight_max_entries;
    return d;
}

std::string_view request_kind_name(size_t kind) {
    static constexpr std::string_view kNames[] = {"single", "batch"};
    return kind < std::size(kNames) ? kNames[kind] : "unknown";
}

std::string_view engine_dma_op_name(size_t op) {
    static constexpr std::string_view kNames[] = {"map", "unmap"};
    return op < std::size(kNames) ? kNames[op] : "unknown";
}

std::string_view scan_kind_name(size_t kind) {
    static constexpr std::string_view kNames[] = {"lru", "balloon"};
    return kind < std::size(kNames) ? kNames[kind] : "unknown";
}

std::string_view kern_fn_name(size_t fn) {
    static constexpr std::string_view kNames[] = {"vfio_dma_do_map", "vfio_dma_do_unmap"};
    return fn < std::size(kNames) ? kNames[fn] : "unknown";
}

std::string_view kern_hook_name(KernHook hook) {
    switch (hook) {
        case KernHook::DoMap: return "vfio_dma_do_map";
        case KernHook::DoUnmap: return "vfio_dma_do_unmap";
        case KernHook::PinPagesRemote: return "vfio_pin_pages_remote";
        case KernHook::RemoveDma: return "vfio_remove_dma";
    }
    return "unknown";
}

VfioKernCalls VfioKernCalls::delta_since(const VfioKernCalls& prev) const {
    return VfioKernCalls{sat_sub(ok, prev.ok), sat_sub(failed, prev.failed), sat_sub(bytes, prev.bytes)};
}

VfioKernSnapshot VfioKernSnapshot::delta_since(const VfioKernSnapshot& prev) const {
    VfioKernSnapshot d;
    d.latency_ns =
        zip(latency_ns, prev.latency_ns, [](const Log2Hist& a, const Log2Hist& b) { return a.delta_since(b); });
    d.calls = zip(calls, prev.calls, [](const VfioKernCalls& a, const VfioKernCalls& b) { return a.delta_since(b); });
    return d;
}

std::string_view iommu_op_name(IommuOp op) {
    switch (op) {
        case IommuOp::Map: return "map";
        case IommuOp::Unmap: return "unmap";
    }
    return "unknown";
}

IommuCalls IommuCalls::delta_since(const IommuCalls& prev) const {
    return IommuCalls{sat_sub(calls, prev.calls), sat_sub(bytes, prev.bytes), sat_sub(requested, prev.requested),
                      sat_sub(short_calls, prev.short_calls)};
}

IommuCoreSnapshot IommuCoreSnapshot::delta_since(const IommuCoreSnapshot& prev) const {
    IommuCoreSnapshot d;
    d.calls = zip(calls, prev.calls, [](const IommuCalls& a, const IommuCalls& b) { return a.delta_since(b); });
    d.pages = zip(pages, prev.pages, [](const Log2Hist& a, const Log2Hist& b) { return a.delta_since(b); });
    return d;
}

EngineSnapshot EngineSnapshot::delta_since(const EngineSnapshot& prev) const {
    EngineSnapshot d;
    for (size_t i = 0; i < kEngineRequestKinds; ++i) {
        d.request_latency_ns[i] = request_latency_ns[i].delta_since(prev.request_latency_ns[i]);
        d.request_pages[i] = request_pages[i].delta_since(prev.request_pages[i]);
        d.requests[i].ok = sat_sub(requests[i].ok, prev.requests[i].ok);
        d.requests[i].failed = sat_sub(requests[i].failed, prev.requests[i].failed);
    }
    for (size_t i = 0; i < kEngineDmaOps; ++i) {
        d.dma_latency_ns[i] = dma_latency_ns[i].delta_since(prev.dma_latency_ns[i]);
        d.dma_calls[i].ok = sat_sub(dma_calls[i].ok, prev.dma_calls[i].ok);
        d.dma_calls[i].failed = sat_sub(dma_calls[i].failed, prev.dma_calls[i].failed);
        d.dma_calls[i].bytes = sat_sub(dma_calls[i].bytes, prev.dma_calls[i].bytes);
    }
    for (size_t i = 0; i < kEngineScanKinds; ++i) {
        d.scan_duration_ns[i] = scan_duration_ns[i].delta_since(prev.scan_duration_ns[i]);
        d.scans[i].scans = sat_sub(scans[i].scans, prev.scans[i].scans);
        d.scans[i].examined = sat_sub(scans[i].examined, prev.scans[i].examined);
        d.scans[i].unpinned = sat_sub(scans[i].unpinned, prev.scans[i].unpinned);
    }
    d.bad_kind = sat_sub(bad_kind, prev.bad_kind);
    d.bad_batch = sat_sub(bad_batch, prev.bad_batch);
    return d;
}

}  // namespace coiommu::bpf
