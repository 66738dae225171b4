// SPDX-License-Identifier: GPL-2.0
/* Optional kernel-internal view of VFIO type1: time spent inside vfio_dma_do_map and
 * vfio_dma_do_unmap (fentry/fexit), i.e. the map/unmap cost without syscall entry/exit.
 *
 * Loads only where the kernel allows BPF_PROG_TYPE_TRACING and the vfio_iommu_type1 module
 * with BTF is present; the loader probes with a trial load and reports "not available:
 * <reason>" otherwise. Both functions are static in vfio_iommu_type1.c and may be inlined on
 * some builds, in which case attaching fails and is reported the same way.
 * The arguments are not used, so no module types (struct vfio_iommu) are needed. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "abi/vfio_kern.h"
#include "hist.bpf.h"

COIOMMU_PERCPU_ARRAY(vk_hist, struct coiommu_hist, COIOMMU_VK_FN_COUNT);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, COIOMMU_VK_INFLIGHT_MAX);
	__type(key, __u64); /* pid_tgid; the two functions never nest */
	__type(value, __u64);
} vk_inflight SEC(".maps");

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

SEC("fentry/vfio_dma_do_map")
int BPF_PROG(vk_map_enter)
{
	vk_enter();
	return 0;
}

SEC("fexit/vfio_dma_do_map")
int BPF_PROG(vk_map_exit)
{
	vk_exit(COIOMMU_VK_DO_MAP);
	return 0;
}

SEC("fentry/vfio_dma_do_unmap")
int BPF_PROG(vk_unmap_enter)
{
	vk_enter();
	return 0;
}

SEC("fexit/vfio_dma_do_unmap")
int BPF_PROG(vk_unmap_exit)
{
	vk_exit(COIOMMU_VK_DO_UNMAP);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
