/* engine.bpf.c <-> bpf/loader ABI: USDT probes of the engine (engine/telemetry/probes.h). */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "hist.h"

/* Mirrors coiommu::telemetry::RequestKind / ScanKind. */
#define COIOMMU_ENG_REQ_KINDS  2 /* single, batch */
#define COIOMMU_ENG_DMA_OPS    2 /* map, unmap */
#define COIOMMU_ENG_SCAN_KINDS 2 /* lru, balloon */

/* Mirrors coiommu::telemetry::RequestRecord: one served request in a `requests` probe batch. */
struct coiommu_eng_request_record {
	__u64 latency_ns;
	__u64 pages;
	__s32 result;
	__u32 kind;
};
#define COIOMMU_ENG_BATCH_MAX 64 /* kMaxRequestRecords */

/* Value of eng_scratch (per-CPU array, one entry): a batch copied from the engine's memory. */
struct coiommu_eng_batch {
	struct coiommu_eng_request_record records[COIOMMU_ENG_BATCH_MAX];
};

/* Mirrors coiommu::telemetry::DmaRecord: one DMA backend call in a `dma_calls` probe batch. */
struct coiommu_eng_dma_record {
	__u64 iova;
	__u64 size;
	__u64 latency_ns;
	__s32 result; /* 0 or -errno */
	__u32 op;     /* 0 map, 1 unmap */
};
#define COIOMMU_ENG_DMA_BATCH_MAX 64 /* kMaxDmaRecords */

/* Value of eng_dma_scratch (per-CPU array, one entry): a DMA batch copied from the engine. */
struct coiommu_eng_dma_batch {
	struct coiommu_eng_dma_record records[COIOMMU_ENG_DMA_BATCH_MAX];
};

/* Value of eng_req_calls (per-CPU array, key = request kind). */
struct coiommu_eng_req_calls {
	__u64 ok;     /* request_done with result 0 */
	__u64 failed; /* request_done with result < 0 */
};

/* Value of eng_dma_calls (per-CPU array, key = 0 map / 1 unmap). */
struct coiommu_eng_dma_calls {
	__u64 ok;
	__u64 failed;
	__u64 bytes;
};

/* Value of eng_scan_stats (per-CPU array, key = scan kind). */
struct coiommu_eng_scan_stats {
	__u64 scans;
	__u64 examined;
	__u64 unpinned;
};

/* Value of eng_drops (per-CPU array, one entry). */
struct coiommu_eng_drops {
	__u64 bad_kind; /* a probe or record carried a kind outside the known range */
	/* records lost: a count above COIOMMU_ENG_BATCH_MAX (COIOMMU_ENG_DMA_BATCH_MAX), or
	 * unreadable memory; request and DMA batches alike */
	__u64 bad_batch;
};
