// SPDX-License-Identifier: GPL-2.0
/* VFIO DMA map/unmap latency from the ioctl syscall tracepoints.
 *
 * sys_enter_ioctl records (start time, op, iova, size) in the thread's slot for the four DMA
 * commands (VFIO type1 MAP/UNMAP, iommufd IOAS_MAP/UNMAP); sys_exit_ioctl turns it into a latency
 * observation, a call count by result class and, above the slow threshold, a ring buffer event.
 * Works for any process (crosvm, QEMU, our engine) or one target tgid, and without any VFIO
 * device: the tracepoints fire even when the ioctl fails (ENOTTY on a non-VFIO fd).
 *
 * Maps only ever grow; readers compute interval deltas themselves (exporter-safe). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "abi/vfio_dma.h"
#include "hist.bpf.h"

/* Load-time configuration (set between open and load). */
const volatile __u32 targ_tgid = 0;    /* 0 = every process */
const volatile __u32 slow_enabled = 0; /* 1 = emit events for calls >= slow_threshold_ns */
const volatile __u64 slow_threshold_ns = 0;

COIOMMU_PERCPU_ARRAY(vfio_dma_hist, struct coiommu_hist, COIOMMU_OP_COUNT);
COIOMMU_PERCPU_ARRAY(vfio_dma_calls, struct coiommu_vfio_calls, COIOMMU_OP_COUNT);
COIOMMU_PERCPU_ARRAY(vfio_dma_drops, struct coiommu_vfio_drops, 1);

/* One slot per thread that issued a DMA ioctl, reused call after call (start_ns == 0: idle).
 * Reusing the slot in place (lookup, write) instead of insert + delete per call halves the
 * map cost; LRU eviction recycles the slots of threads that went away. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, COIOMMU_VFIO_INFLIGHT_MAX);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct coiommu_vfio_inflight);
} vfio_dma_flight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, COIOMMU_VFIO_EVENTS_BYTES);
} vfio_dma_events SEC(".maps");

static __always_inline int op_of(__u32 cmd)
{
	switch (cmd) {
	case COIOMMU_VFIO_IOMMU_MAP_DMA:
		return COIOMMU_OP_VFIO_MAP;
	case COIOMMU_VFIO_IOMMU_UNMAP_DMA:
		return COIOMMU_OP_VFIO_UNMAP;
	case COIOMMU_IOMMU_IOAS_MAP:
		return COIOMMU_OP_IOAS_MAP;
	case COIOMMU_IOMMU_IOAS_UNMAP:
		return COIOMMU_OP_IOAS_UNMAP;
	default:
		return -1;
	}
}

/* iova and size are adjacent u64s in all four structs: one user read per call. */
struct iova_size {
	__u64 first;
	__u64 second;
};
_Static_assert(COIOMMU_VFIO_MAP_IOVA_OFF + 8 == COIOMMU_VFIO_MAP_SIZE_OFF, "vfio map: iova, size");
_Static_assert(COIOMMU_VFIO_UNMAP_IOVA_OFF + 8 == COIOMMU_VFIO_UNMAP_SIZE_OFF,
	       "vfio unmap: iova, size");
_Static_assert(COIOMMU_IOAS_MAP_SIZE_OFF + 8 == COIOMMU_IOAS_MAP_IOVA_OFF,
	       "ioas map: length, iova");
_Static_assert(COIOMMU_IOAS_UNMAP_IOVA_OFF + 8 == COIOMMU_IOAS_UNMAP_SIZE_OFF,
	       "ioas unmap: iova, length");

SEC("tracepoint/syscalls/sys_enter_ioctl")
int vfio_dma_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct coiommu_vfio_inflight rec = {}, *slot;
	struct iova_size pair = {};
	const char *uarg;
	long fault;
	int op;

	op = op_of((__u32)ctx->args[1]);
	if (op < 0)
		return 0;
	if (targ_tgid && (__u32)(pid_tgid >> 32) != targ_tgid)
		return 0;

	uarg = (const char *)ctx->args[2];
	switch (op) {
	case COIOMMU_OP_VFIO_MAP: /* iova, size */
		fault = bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_VFIO_MAP_IOVA_OFF);
		rec.iova = pair.first;
		rec.size = pair.second;
		break;
	case COIOMMU_OP_VFIO_UNMAP: /* iova, size */
		fault =
		    bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_VFIO_UNMAP_IOVA_OFF);
		rec.iova = pair.first;
		rec.size = pair.second;
		break;
	case COIOMMU_OP_IOAS_MAP: /* length, iova */
		fault = bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_IOAS_MAP_SIZE_OFF);
		rec.size = pair.first;
		rec.iova = pair.second;
		break;
	default: /* IOAS_UNMAP: iova, length */
		fault =
		    bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_IOAS_UNMAP_IOVA_OFF);
		rec.iova = pair.first;
		rec.size = pair.second;
		break;
	}
	if (fault) {
		rec.iova = 0;
		rec.size = 0;
		COIOMMU_COUNT(vfio_dma_drops, 0, struct coiommu_vfio_drops, read_fault, 1);
	}

	rec.op = op;
	rec.start_ns = bpf_ktime_get_ns();
	/* A thread is in one syscall at a time, so nobody else writes this slot meanwhile. */
	slot = bpf_map_lookup_elem(&vfio_dma_flight, &pid_tgid);
	if (slot)
		*slot = rec;
	else if (bpf_map_update_elem(&vfio_dma_flight, &pid_tgid, &rec, BPF_NOEXIST) != 0)
		COIOMMU_COUNT(vfio_dma_drops, 0, struct coiommu_vfio_drops, inflight_full, 1);
	return 0;
}

static __always_inline void count_result(__u32 op, __s64 ret, __u64 size)
{
	struct coiommu_vfio_calls *c = bpf_map_lookup_elem(&vfio_dma_calls, &op);

	if (!c)
		return;
	__sync_fetch_and_add(&c->bytes, size);
	switch (ret) {
	case 0:
		__sync_fetch_and_add(&c->ok, 1);
		break;
	case -17: /* EEXIST: overlaps an existing mapping */
		__sync_fetch_and_add(&c->eexist, 1);
		break;
	case -28: /* ENOSPC: dma_entry_limit reached */
		__sync_fetch_and_add(&c->enospc, 1);
		break;
	case -12: /* ENOMEM: RLIMIT_MEMLOCK or allocation */
		__sync_fetch_and_add(&c->enomem, 1);
		break;
	case -22: /* EINVAL */
		__sync_fetch_and_add(&c->einval, 1);
		break;
	default:
		__sync_fetch_and_add(&c->other, 1);
		break;
	}
}

SEC("tracepoint/syscalls/sys_exit_ioctl")
int vfio_dma_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct coiommu_vfio_inflight *rec;
	struct coiommu_vfio_event *ev;
	__u64 now, latency;
	__u32 op;

	if (targ_tgid && (__u32)(pid_tgid >> 32) != targ_tgid)
		return 0;
	rec = bpf_map_lookup_elem(&vfio_dma_flight, &pid_tgid);
	if (!rec || rec->start_ns == 0)
		return 0;

	now = bpf_ktime_get_ns();
	latency = now - rec->start_ns;
	op = rec->op;
	if (op >= COIOMMU_OP_COUNT)
		goto out;

	COIOMMU_HIST_ADD(vfio_dma_hist, op, latency);
	count_result(op, ctx->ret, rec->size);

	if (slow_enabled && latency >= slow_threshold_ns) {
		ev = bpf_ringbuf_reserve(&vfio_dma_events, sizeof(*ev), 0);
		if (!ev) {
			COIOMMU_COUNT(vfio_dma_drops, 0, struct coiommu_vfio_drops, ringbuf_full,
				      1);
			goto out;
		}
		ev->ts_ns = now;
		ev->latency_ns = latency;
		ev->iova = rec->iova;
		ev->size = rec->size;
		ev->ret = ctx->ret;
		ev->pid = pid_tgid >> 32;
		ev->tid = (__u32)pid_tgid;
		ev->op = op;
		ev->pad = 0;
		bpf_get_current_comm(ev->comm, sizeof(ev->comm));
		bpf_ringbuf_submit(ev, 0);
	}
out:
	rec->start_ns = 0; /* idle until the thread's next DMA ioctl */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
