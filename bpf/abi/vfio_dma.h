/* vfio_dma.bpf.c <-> bpf/loader ABI: VFIO type1 and iommufd map/unmap ioctl tracing. */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "hist.h"

/* ioctl numbers, all _IO(';', nr) (no size encoded). Values from linux/vfio.h and
 * linux/iommufd.h (VFIO_BASE 100, IOMMUFD_CMD_BASE 0x80). */
#define COIOMMU_VFIO_IOMMU_MAP_DMA   0x3b71u
#define COIOMMU_VFIO_IOMMU_UNMAP_DMA 0x3b72u
#define COIOMMU_IOMMU_IOAS_MAP	     0x3b85u
#define COIOMMU_IOMMU_IOAS_UNMAP     0x3b86u

/* Operation index: key of every per-op map. */
enum coiommu_vfio_op {
	COIOMMU_OP_VFIO_MAP = 0,
	COIOMMU_OP_VFIO_UNMAP = 1,
	COIOMMU_OP_IOAS_MAP = 2,
	COIOMMU_OP_IOAS_UNMAP = 3,
	COIOMMU_OP_COUNT = 4,
};

/* Where iova and size live in each op's user struct (byte offsets):
 *   vfio_iommu_type1_dma_map   {argsz u32, flags u32, vaddr u64, iova u64, size u64}
 *   vfio_iommu_type1_dma_unmap {argsz u32, flags u32, iova u64, size u64, data[]}
 *   iommu_ioas_map   {size u32, flags u32, ioas_id u32, reserved u32, user_va u64, length u64, iova
 * u64} iommu_ioas_unmap {size u32, ioas_id u32, iova u64, length u64} */
#define COIOMMU_VFIO_MAP_IOVA_OFF   16
#define COIOMMU_VFIO_MAP_SIZE_OFF   24
#define COIOMMU_VFIO_UNMAP_IOVA_OFF 8
#define COIOMMU_VFIO_UNMAP_SIZE_OFF 16
#define COIOMMU_IOAS_MAP_IOVA_OFF   32
#define COIOMMU_IOAS_MAP_SIZE_OFF   24
#define COIOMMU_IOAS_UNMAP_IOVA_OFF 8
#define COIOMMU_IOAS_UNMAP_SIZE_OFF 16

/* Value of map vfio_dma_calls (per-CPU array, key = op): calls by result class from the
 * sys_exit return value, plus the bytes requested (the struct's size/length field). */
struct coiommu_vfio_calls {
	__u64 ok;
	__u64 eexist;
	__u64 enospc;
	__u64 enomem;
	__u64 einval;
	__u64 other;
	__u64 bytes;
};

/* Value of map vfio_dma_drops (per-CPU array, one entry). */
struct coiommu_vfio_drops {
	__u64 inflight_full; /* sys_enter could not record the call: no slot could be inserted */
	__u64 ringbuf_full;  /* a slow event was lost: ring buffer reserve failed */
	__u64 read_fault;    /* the user struct could not be read (size/iova recorded as 0) */
};

/* Value of map vfio_dma_flight (LRU hash keyed by pid_tgid): the thread's slot; a call is in
 * flight between enter and exit while start_ns != 0. */
struct coiommu_vfio_inflight {
	__u64 start_ns;
	__u64 iova;
	__u64 size;
	__u32 op;
	__u32 pad;
};

#define COIOMMU_VFIO_INFLIGHT_MAX 10240
#define COIOMMU_VFIO_EVENTS_BYTES (256 * 1024)
#define COIOMMU_COMM_LEN	  16

/* Ring buffer record of a call slower than the threshold. */
struct coiommu_vfio_event {
	__u64 ts_ns; /* bpf_ktime_get_ns() at exit (CLOCK_MONOTONIC) */
	__u64 latency_ns;
	__u64 iova;
	__u64 size;
	__s64 ret; /* syscall return: 0 or -errno */
	__u32 pid; /* tgid */
	__u32 tid;
	__u32 op; /* enum coiommu_vfio_op */
	__u32 pad;
	char comm[COIOMMU_COMM_LEN];
};
