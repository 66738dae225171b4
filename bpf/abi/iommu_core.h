/* iommu_core.bpf.c <-> bpf/loader ABI: the IOMMU core's iommu:map / iommu:unmap tracepoints. */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "hist.h"

/* Key of every iommu_core map. */
enum coiommu_iommu_op {
	COIOMMU_IOMMU_MAP = 0,	 /* iommu:map (one per successful iommu_map() call) */
	COIOMMU_IOMMU_UNMAP = 1, /* iommu:unmap (one per iommu_unmap()/iommu_unmap_fast() call) */
	COIOMMU_IOMMU_OP_COUNT = 2,
};

/* Value of map iommu_core_calls (per-CPU array, key = op).
 *   map:   bytes = requested = the event's size (the tracepoint fires only on success).
 *   unmap: requested = the event's size, bytes = its unmapped_size; short_calls counts the
 *          calls that unmapped less than requested (a hole, or a range not mapped at all). */
struct coiommu_iommu_calls {
	__u64 calls;
	__u64 bytes;
	__u64 requested;
	__u64 short_calls;
};

/* Histograms of iommu_core_pages (per-CPU array, key = op) are in 4 KiB pages per call
 * (bytes >> 12, rounded down). */
#define COIOMMU_IOMMU_PAGE_SHIFT 12
