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
	__u64 bad_kind; /* a probe carried a kind outside the known range */
};
