// USDT probes of the engine (provider "coiommu"), for bpf/engine.bpf.c, bpftrace and perf.
//
// A probe site is a single nop until a tracer attaches (sys/sdt.h, no semaphores), so the
// untraced cost is the evaluation of the arguments, which are values the engine already has in
// registers. Probes fire per batch of records, per request, per DMA call and per unpin scan,
// never per page.
//
// An attached probe costs a uprobe trap per hit (0.3-1 us; ~1 us on the PVM development host),
// about a tenth of a single-page request's engine time. So the tracer (engine.bpf.c) reads
// records in batches kept in this process's memory (request_trace.h), one hit per batch:
// `requests` carries up to kMaxRequestRecords RequestRecords (always attached) and `dma_calls` up
// to kMaxDmaRecords DmaRecords (attached only on request, --engine-dma; the vfio_dma program
// already times real VFIO calls from the kernel side). It also attaches unpin_scan (one hit per
// scan). request_start, request_done, dma_map and dma_unmap fire per request / per DMA call for
// ad-hoc tools (bpftrace), which accept that cost; engine.bpf.c does not attach them.
//
// The argument lists are an ABI shared with bpf/engine.bpf.c (bpf/abi/engine.h mirrors
// RequestRecord and DmaRecord); change both together.
//
//   requests     (u32 session, RequestRecord* records, u32 count)    count <= kMaxRequestRecords
//   dma_calls    (u32 session, DmaRecord* records, u32 count)        count <= kMaxDmaRecords
//   request_start(u32 session, u32 vcpu, u32 kind)                   kind: RequestKind
//   request_done (u32 session, u32 vcpu, u32 kind, u64 pages, s32 result, u64 latency_ns)
//                 result: 0 = every page pinned, else a negative errno (first failure)
//                 latency_ns: notification seen by the intake -> slot completed (the same value
//                 the engine's request_latency_ns histogram observes)
//   dma_map      (u64 iova, u64 size, s32 result, u64 latency_ns)    result: 0 or -errno
//                 fired by the fast engine per DMA call; the seed variant (pin_page) fires none
//   dma_unmap    (u64 iova, u64 size, s32 result, u64 latency_ns)
//   unpin_scan   (u32 session, u32 kind, u64 examined, u64 unpinned, u64 duration_ns)
//                 kind: ScanKind
#pragma once

#include <cstdint>

#include <sys/sdt.h>

#include "engine/base/domain.h"

namespace coiommu::telemetry {

using coiommu::RequestKind;  // engine/base/domain.h; the probes' `kind` argument is its value
enum class ScanKind : uint32_t { Lru = 0, Balloon = 1 };

// One served request in a `requests` batch: the fields of request_done.
struct RequestRecord {
    uint64_t latency_ns;
    uint64_t pages;
    int32_t result;
    uint32_t kind;  // RequestKind
};
static_assert(sizeof(RequestRecord) == 24, "RequestRecord is an ABI (bpf/abi/engine.h)");
inline constexpr uint32_t kMaxRequestRecords = 64;

// One DMA backend call in a `dma_calls` batch: the fields of dma_map / dma_unmap.
struct DmaRecord {
    uint64_t iova;
    uint64_t size;
    uint64_t latency_ns;
    int32_t result;  // 0 or -errno
    uint32_t op;     // DmaRecordOp
};
static_assert(sizeof(DmaRecord) == 32, "DmaRecord is an ABI (bpf/abi/engine.h)");
inline constexpr uint32_t kMaxDmaRecords = 64;
// DmaRecord::op; the values of telemetry::DmaOp (engine_stats.h).
enum class DmaRecordOp : uint32_t { Map = 0, Unmap = 1 };

}  // namespace coiommu::telemetry

#define COIOMMU_PROBE_REQUESTS(session, records, count)                                                   \
    DTRACE_PROBE3(coiommu, requests, static_cast<uint32_t>(session), reinterpret_cast<uint64_t>(records), \
                  static_cast<uint32_t>(count))
#define COIOMMU_PROBE_DMA_CALLS(session, records, count)                                                   \
    DTRACE_PROBE3(coiommu, dma_calls, static_cast<uint32_t>(session), reinterpret_cast<uint64_t>(records), \
                  static_cast<uint32_t>(count))
#define COIOMMU_PROBE_REQUEST_START(session, vcpu, kind)                                               \
    DTRACE_PROBE3(coiommu, request_start, static_cast<uint32_t>(session), static_cast<uint32_t>(vcpu), \
                  static_cast<uint32_t>(kind))
#define COIOMMU_PROBE_REQUEST_DONE(session, vcpu, kind, pages, result, latency_ns)                         \
    DTRACE_PROBE6(coiommu, request_done, static_cast<uint32_t>(session), static_cast<uint32_t>(vcpu),      \
                  static_cast<uint32_t>(kind), static_cast<uint64_t>(pages), static_cast<int32_t>(result), \
                  static_cast<uint64_t>(latency_ns))
#define COIOMMU_PROBE_DMA_MAP(iova, size, result, latency_ns)                                 \
    DTRACE_PROBE4(coiommu, dma_map, static_cast<uint64_t>(iova), static_cast<uint64_t>(size), \
                  static_cast<int32_t>(result), static_cast<uint64_t>(latency_ns))
#define COIOMMU_PROBE_DMA_UNMAP(iova, size, result, latency_ns)                                 \
    DTRACE_PROBE4(coiommu, dma_unmap, static_cast<uint64_t>(iova), static_cast<uint64_t>(size), \
                  static_cast<int32_t>(result), static_cast<uint64_t>(latency_ns))
#define COIOMMU_PROBE_UNPIN_SCAN(session, kind, examined, unpinned, duration_ns)                    \
    DTRACE_PROBE5(coiommu, unpin_scan, static_cast<uint32_t>(session), static_cast<uint32_t>(kind), \
                  static_cast<uint64_t>(examined), static_cast<uint64_t>(unpinned),                 \
                  static_cast<uint64_t>(duration_ns))
