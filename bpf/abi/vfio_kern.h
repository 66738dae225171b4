/* vfio_kern.bpf.c <-> bpf/loader ABI: optional fentry/fexit hooks inside vfio_iommu_type1. */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "hist.h"

/* Key of vk_hist: which kernel function was timed. */
enum coiommu_vk_fn {
	COIOMMU_VK_DO_MAP = 0,	 /* vfio_dma_do_map */
	COIOMMU_VK_DO_UNMAP = 1, /* vfio_dma_do_unmap */
	COIOMMU_VK_FN_COUNT = 2,
};

/* Key of vk_calls: every hooked function. The first two are the timed ones (same values). */
enum coiommu_vk_hook {
	COIOMMU_VK_HOOK_DO_MAP = 0,	/* vfio_dma_do_map: one MAP_DMA */
	COIOMMU_VK_HOOK_DO_UNMAP = 1,	/* vfio_dma_do_unmap: one UNMAP_DMA */
	COIOMMU_VK_HOOK_PIN_REMOTE = 2, /* vfio_pin_pages_remote: one physically contiguous run
					 * pinned for a map (type1 then maps it with one
					 * iommu_map() per domain) */
	COIOMMU_VK_HOOK_REMOVE_DMA = 3, /* vfio_remove_dma: one mapping (struct vfio_dma) unmapped,
					 * by UNMAP_DMA or by container teardown */
	COIOMMU_VK_HOOK_COUNT = 4,
};

#define COIOMMU_VK_INFLIGHT_MAX 4096

/* Value of map vk_calls (per-CPU array, key = hook): every call seen, by result, and the bytes
 * of the ok ones:
 *   do_map      fexit; the size the caller asked for
 *   do_unmap    fexit; the size the kernel reports unmapped (it rewrites the struct's size)
 *   pin_remote  fexit; the pages pinned (the return value, failed when <= 0) << page shift
 *   remove_dma  fentry (always ok); the mapping's size */
struct coiommu_vk_calls {
	__u64 ok;
	__u64 failed;
	__u64 bytes;
};
