// SPDX-License-Identifier: GPL-2.0
/* Optional kernel-internal view of VFIO type1, below the ioctl handler.
 *
 *   vfio_dma_do_map / vfio_dma_do_unmap (fentry/fexit): the time spent inside one MAP_DMA /
 *     UNMAP_DMA without the syscall entry/exit (vk_hist), and the calls and bytes (vk_calls).
 *   vfio_pin_pages_remote (fexit): each physically contiguous run a map pins; type1 maps each
 *     run with one iommu_map() per domain. Calls and bytes.
 *   vfio_remove_dma (fentry): each mapping type1 tears down, whether an UNMAP_DMA asked for it
 *     or the container lost its last group (close): the latter never passes through an ioctl.
 *
 * All four functions are static in vfio_iommu_type1.c and any of them may be inlined (Debian's
 * 6.1 and the project's 6.12 inline the two do_* ones): the loader turns on only the programs
 * whose function the kernel's BTF describes (vmlinux's when type1 is built in, else the module's)
 * and reports "not available: <reason>" when none is. Needs BPF_PROG_TYPE_TRACING.
 *
 * No module headers: the map/unmap structs are the uapi ones the ioctl handler copied in, read at
 * their fixed uapi offsets; struct vfio_dma's size is relocated by CO-RE against the BTF of
 * whichever kernel or module defines it. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "abi/vfio_dma.h"
#include "abi/vfio_kern.h"
#include "hist.bpf.h"

/* log2 of the kernel's PAGE_SIZE, set by the loader (not in BTF). */
const volatile __u32 page_shift = 12;

COIOMMU_PERCPU_ARRAY(vk_hist, struct coiommu_hist, COIOMMU_VK_FN_COUNT);
COIOMMU_PERCPU_ARRAY(vk_calls, struct coiommu_vk_calls, COIOMMU_VK_HOOK_COUNT);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, COIOMMU_VK_INFLIGHT_MAX);
	__type(key, __u64); /* pid_tgid; the two functions never nest */
	__type(value, __u64);
} vk_inflight SEC(".maps");

/* type1's private struct vfio_dma, only the field read here (the ___vk flavour keeps it apart
 * from a vmlinux.h that has the real one). */
struct vfio_dma___vk {
	size_t size;
} __attribute__((preserve_access_index));

static __always_inline void vk_enter(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();

	bpf_map_update_elem(&vk_inflight, &id, &ts, BPF_ANY);
}

static __always_inline void vk_exit(__u32 fn)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *ts = bpf_map_lookup_elem(&vk_inflight, &id);

	if (!ts)
		return;
	COIOMMU_HIST_ADD(vk_hist, fn, bpf_ktime_get_ns() - *ts);
	bpf_map_delete_elem(&vk_inflight, &id);
}

/* Counts one call of `hook`: ok with `bytes`, or failed. */
static __always_inline void vk_count(__u32 hook, int ok, __u64 bytes)
{
	struct coiommu_vk_calls *c = bpf_map_lookup_elem(&vk_calls, &hook);

	if (!c)
		return;
	if (!ok) {
		__sync_fetch_and_add(&c->failed, 1);
		return;
	}
	__sync_fetch_and_add(&c->ok, 1);
	__sync_fetch_and_add(&c->bytes, bytes);
}

/* The u64 at `at` in kernel memory; 0 when it cannot be read. */
static __always_inline __u64 read_u64(const char *at)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), at);
	return v;
}

SEC("fentry/vfio_dma_do_map")
int BPF_PROG(vk_map_enter)
{
	vk_enter();
	return 0;
}

/* vfio_dma_do_map(struct vfio_iommu *, struct vfio_iommu_type1_dma_map *) */
SEC("fexit/vfio_dma_do_map")
int BPF_PROG(vk_map_exit, void *iommu, const char *map, int ret)
{
	vk_exit(COIOMMU_VK_DO_MAP);
	vk_count(COIOMMU_VK_HOOK_DO_MAP, ret == 0,
		 ret == 0 ? read_u64(map + COIOMMU_VFIO_MAP_SIZE_OFF) : 0);
	return 0;
}

SEC("fentry/vfio_dma_do_unmap")
int BPF_PROG(vk_unmap_enter)
{
	vk_enter();
	return 0;
}

/* vfio_dma_do_unmap(struct vfio_iommu *, struct vfio_iommu_type1_dma_unmap *, struct
 * vfio_bitmap *) */
SEC("fexit/vfio_dma_do_unmap")
int BPF_PROG(vk_unmap_exit, void *iommu, const char *unmap, void *bitmap, int ret)
{
	vk_exit(COIOMMU_VK_DO_UNMAP);
	vk_count(COIOMMU_VK_HOOK_DO_UNMAP, ret == 0,
		 ret == 0 ? read_u64(unmap + COIOMMU_VFIO_UNMAP_SIZE_OFF) : 0);
	return 0;
}

/* long vfio_pin_pages_remote(struct vfio_dma *, unsigned long vaddr, long npage,
 *                            unsigned long *pfn_base, unsigned long limit, struct vfio_batch *):
 * the pages pinned, or -errno. */
SEC("fexit/vfio_pin_pages_remote")
int BPF_PROG(vk_pin_exit, void *dma, unsigned long vaddr, long npage, void *pfn_base,
	     unsigned long limit, void *batch, long ret)
{
	vk_count(COIOMMU_VK_HOOK_PIN_REMOTE, ret > 0, ret > 0 ? (__u64)ret << page_shift : 0);
	return 0;
}

/* void vfio_remove_dma(struct vfio_iommu *, struct vfio_dma *) */
SEC("fentry/vfio_remove_dma")
int BPF_PROG(vk_remove_dma, void *iommu, struct vfio_dma___vk *dma)
{
	vk_count(COIOMMU_VK_HOOK_REMOVE_DMA, 1, BPF_CORE_READ(dma, size));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
