// Compile-time checks that the C++ side reads the BPF ABI structs (bpf/abi/*.h) with the layout
// the BPF programs write. A failing assert here means a map layout changed: bump
// COIOMMU_BPF_ABI_VERSION (pinned paths are versioned) and update the readers.
#include <cstddef>

#include "bpf/abi/engine.h"
#include "bpf/abi/iommu_core.h"
#include "bpf/abi/vfio_dma.h"
#include "bpf/abi/vfio_kern.h"
#include "bpf/loader/snapshot.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/telemetry/probes.h"

namespace coiommu::bpf {

static_assert(COIOMMU_HIST_SLOTS == kHistSlots);
static_assert(sizeof(coiommu_hist) == (COIOMMU_HIST_SLOTS + 2) * 8);
static_assert(offsetof(coiommu_hist, sum) == COIOMMU_HIST_SLOTS * 8);
static_assert(offsetof(coiommu_hist, count) == COIOMMU_HIST_SLOTS * 8 + 8);

static_assert(COIOMMU_OP_COUNT == kVfioOpCount);
static_assert(COIOMMU_OP_VFIO_MAP == static_cast<int>(VfioOp::VfioMap));
static_assert(COIOMMU_OP_VFIO_UNMAP == static_cast<int>(VfioOp::VfioUnmap));
static_assert(COIOMMU_OP_IOAS_MAP == static_cast<int>(VfioOp::IoasMap));
static_assert(COIOMMU_OP_IOAS_UNMAP == static_cast<int>(VfioOp::IoasUnmap));

static_assert(sizeof(coiommu_vfio_calls) == 7 * 8);
static_assert(offsetof(coiommu_vfio_calls, ok) == 0);
static_assert(offsetof(coiommu_vfio_calls, other) == 5 * 8);
static_assert(offsetof(coiommu_vfio_calls, bytes) == 6 * 8);
static_assert(sizeof(coiommu_vfio_drops) == 3 * 8);
static_assert(sizeof(coiommu_vfio_inflight) == 32);
static_assert(offsetof(coiommu_vfio_inflight, op) == 24);

static_assert(sizeof(coiommu_vfio_event) == 72);
static_assert(offsetof(coiommu_vfio_event, ret) == 32);
static_assert(offsetof(coiommu_vfio_event, pid) == 40);
static_assert(offsetof(coiommu_vfio_event, tid) == 44);
static_assert(offsetof(coiommu_vfio_event, op) == 48);
static_assert(offsetof(coiommu_vfio_event, comm) == 56);

static_assert(COIOMMU_ENG_REQ_KINDS == kEngineRequestKinds);
static_assert(COIOMMU_ENG_DMA_OPS == kEngineDmaOps);
static_assert(COIOMMU_ENG_SCAN_KINDS == kEngineScanKinds);
static_assert(sizeof(coiommu_eng_req_calls) == 2 * 8);
static_assert(sizeof(coiommu_eng_dma_calls) == 3 * 8);
static_assert(sizeof(coiommu_eng_scan_stats) == 3 * 8);
static_assert(sizeof(coiommu_eng_drops) == 2 * 8);
static_assert(sizeof(coiommu_eng_request_record) == sizeof(telemetry::RequestRecord));
static_assert(offsetof(coiommu_eng_request_record, latency_ns) == offsetof(telemetry::RequestRecord, latency_ns));
static_assert(offsetof(coiommu_eng_request_record, pages) == offsetof(telemetry::RequestRecord, pages));
static_assert(offsetof(coiommu_eng_request_record, result) == offsetof(telemetry::RequestRecord, result));
static_assert(offsetof(coiommu_eng_request_record, kind) == offsetof(telemetry::RequestRecord, kind));
static_assert(COIOMMU_ENG_BATCH_MAX == telemetry::kMaxRequestRecords);
static_assert(sizeof(coiommu_eng_dma_record) == sizeof(telemetry::DmaRecord));
static_assert(offsetof(coiommu_eng_dma_record, iova) == offsetof(telemetry::DmaRecord, iova));
static_assert(offsetof(coiommu_eng_dma_record, size) == offsetof(telemetry::DmaRecord, size));
static_assert(offsetof(coiommu_eng_dma_record, latency_ns) == offsetof(telemetry::DmaRecord, latency_ns));
static_assert(offsetof(coiommu_eng_dma_record, result) == offsetof(telemetry::DmaRecord, result));
static_assert(offsetof(coiommu_eng_dma_record, op) == offsetof(telemetry::DmaRecord, op));
static_assert(COIOMMU_ENG_DMA_BATCH_MAX == telemetry::kMaxDmaRecords);
static_assert(static_cast<uint32_t>(telemetry::DmaRecordOp::Map) == static_cast<uint32_t>(telemetry::DmaOp::Map));
static_assert(static_cast<uint32_t>(telemetry::DmaRecordOp::Unmap) == static_cast<uint32_t>(telemetry::DmaOp::Unmap));

static_assert(COIOMMU_VK_FN_COUNT == kKernFnCount);
static_assert(COIOMMU_VK_HOOK_COUNT == kKernHookCount);
static_assert(COIOMMU_VK_HOOK_DO_MAP == static_cast<int>(KernHook::DoMap));
static_assert(COIOMMU_VK_HOOK_DO_UNMAP == static_cast<int>(KernHook::DoUnmap));
static_assert(static_cast<int>(COIOMMU_VK_HOOK_DO_MAP) == static_cast<int>(COIOMMU_VK_DO_MAP));
static_assert(static_cast<int>(COIOMMU_VK_HOOK_DO_UNMAP) == static_cast<int>(COIOMMU_VK_DO_UNMAP));
static_assert(COIOMMU_VK_HOOK_PIN_REMOTE == static_cast<int>(KernHook::PinPagesRemote));
static_assert(COIOMMU_VK_HOOK_REMOVE_DMA == static_cast<int>(KernHook::RemoveDma));
static_assert(sizeof(coiommu_vk_calls) == 3 * 8);
static_assert(offsetof(coiommu_vk_calls, bytes) == 2 * 8);

static_assert(COIOMMU_IOMMU_OP_COUNT == kIommuOpCount);
static_assert(COIOMMU_IOMMU_MAP == static_cast<int>(IommuOp::Map));
static_assert(COIOMMU_IOMMU_UNMAP == static_cast<int>(IommuOp::Unmap));
static_assert(sizeof(coiommu_iommu_calls) == 4 * 8);
static_assert(offsetof(coiommu_iommu_calls, bytes) == 8);
static_assert(offsetof(coiommu_iommu_calls, requested) == 2 * 8);
static_assert(offsetof(coiommu_iommu_calls, short_calls) == 3 * 8);

}  // namespace coiommu::bpf
