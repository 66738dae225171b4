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

#define COIOMMU_VK_INFLIGHT_MAX 4096
