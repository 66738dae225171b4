// SPDX-License-Identifier: GPL-2.0
/* The IOMMU core's view: the iommu:map and iommu:unmap tracepoints, calls and bytes per op.
 *
 * Below every IOMMU user (VFIO type1, iommufd, the DMA API on translated domains), so it also
 * sees what never passes through a DMA ioctl, e.g. type1 unmapping every mapping left when a
 * container loses its last group, or the probe mapping type1 makes when a group is attached.
 * The core fires one event per iommu_map()/iommu_unmap() call with the caller's size, not one
 * per page-size chunk the driver writes.
 *
 * Plain tracepoints (BPF_PROG_TYPE_TRACEPOINT), so this loads where fentry does not; the
 * fields are read through vmlinux.h's trace_event_raw_map/_unmap, relocated by CO-RE against
 * the running kernel's BTF. No pid filter: teardown unmaps run in whichever task drops the last
 * reference. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "abi/iommu_core.h"
#include "hist.bpf.h"

COIOMMU_PERCPU_ARRAY(iommu_core_calls, struct coiommu_iommu_calls, COIOMMU_IOMMU_OP_COUNT);
COIOMMU_PERCPU_ARRAY(iommu_core_pages, struct coiommu_hist, COIOMMU_IOMMU_OP_COUNT);

static __always_inline void iommu_count(__u32 op, __u64 requested, __u64 done)
{
	struct coiommu_iommu_calls *c = bpf_map_lookup_elem(&iommu_core_calls, &op);

	if (!c)
		return;
	__sync_fetch_and_add(&c->calls, 1);
	__sync_fetch_and_add(&c->bytes, done);
	__sync_fetch_and_add(&c->requested, requested);
	if (done < requested)
		__sync_fetch_and_add(&c->short_calls, 1);
	COIOMMU_HIST_ADD(iommu_core_pages, op, done >> COIOMMU_IOMMU_PAGE_SHIFT);
}

SEC("tracepoint/iommu/map")
int iommu_core_map(struct trace_event_raw_map *ctx)
{
	iommu_count(COIOMMU_IOMMU_MAP, ctx->size, ctx->size);
	return 0;
}

SEC("tracepoint/iommu/unmap")
int iommu_core_unmap(struct trace_event_raw_unmap *ctx)
{
	iommu_count(COIOMMU_IOMMU_UNMAP, ctx->size, ctx->unmapped_size);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
