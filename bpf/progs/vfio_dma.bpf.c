// SPDX-License-Identifier: GPL-2.0
/* VFIO DMA map/unmap latency, from one of two sets of hooks (the loader picks one set with
 * autoload; both feed the same maps):
 *
 *  - fentry mode: fentry/fexit on vfio_iommu_type1_ioctl and iommufd_fops_ioctl, the ioctl
 *    handlers of a type1 container and of /dev/iommu (which also serves VFIO's type1 commands
 *    when it stands in for /dev/vfio/vfio). Only VFIO traffic ever reaches them, so nothing else
 *    on the host pays. Needs BPF_PROG_TYPE_TRACING and the modules' BTF.
 *  - tracepoint mode (fallback): syscalls/sys_{enter,exit}_ioctl, which every ioctl of every
 *    process hits. Also works without any VFIO device: the tracepoints fire even when the ioctl
 *    fails (ENOTTY on a non-VFIO fd).
 *
 * The enter hook records (start time, op, iova, size) in the thread's slot for the four DMA
 * commands (VFIO type1 MAP/UNMAP, iommufd IOAS_MAP/UNMAP); the exit hook turns it into a latency
 * observation, a call count by result class and, above the slow threshold, a ring buffer event.
 * Any process (crosvm, QEMU, our engine) or one target tgid.
 *
 * Maps only ever grow; readers compute interval deltas themselves (exporter-safe). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

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

/* DMA calls between enter and exit, every thread together: the slots whose start_ns != 0. The
 * tracepoint exit hook runs for every ioctl of the host and cannot tell a DMA command from any
 * other (sys_exit has no cmd), so it returns at once while this is 0: no map lookup at all.
 * Raised when a slot goes idle -> busy at enter, lowered only when exit finds a busy slot: an exit
 * without its enter (attached mid-call) never lowers it. A busy slot the LRU evicts leaves it one
 * too high, which only costs lookups, never a lost call. */
__u64 vfio_dma_active = 0;

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

/* Reads iova and size from the command's user struct; 0 and 0, counted, when it cannot. */
static __always_inline void read_args(int op, const char *uarg, struct coiommu_vfio_inflight *rec)
{
	struct iova_size pair = {};
	long fault;

	switch (op) {
	case COIOMMU_OP_VFIO_MAP: /* iova, size */
		fault = bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_VFIO_MAP_IOVA_OFF);
		rec->iova = pair.first;
		rec->size = pair.second;
		break;
	case COIOMMU_OP_VFIO_UNMAP: /* iova, size */
		fault =
		    bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_VFIO_UNMAP_IOVA_OFF);
		rec->iova = pair.first;
		rec->size = pair.second;
		break;
	case COIOMMU_OP_IOAS_MAP: /* length, iova */
		fault = bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_IOAS_MAP_SIZE_OFF);
		rec->size = pair.first;
		rec->iova = pair.second;
		break;
	default: /* IOAS_UNMAP: iova, length */
		fault =
		    bpf_probe_read_user(&pair, sizeof(pair), uarg + COIOMMU_IOAS_UNMAP_IOVA_OFF);
		rec->iova = pair.first;
		rec->size = pair.second;
		break;
	}
	if (fault) {
		rec->iova = 0;
		rec->size = 0;
		COIOMMU_COUNT(vfio_dma_drops, 0, struct coiommu_vfio_drops, read_fault, 1);
	}
}

/* Enter of a DMA command: fills the thread's slot and marks it busy. */
static __always_inline void dma_enter(int op, const char *uarg)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct coiommu_vfio_inflight rec = {}, *slot;

	if (targ_tgid && (__u32)(pid_tgid >> 32) != targ_tgid)
		return;
	read_args(op, uarg, &rec);
	rec.op = op;
	rec.start_ns = bpf_ktime_get_ns();
	/* A thread is in one syscall at a time, so nobody else writes this slot meanwhile. */
	slot = bpf_map_lookup_elem(&vfio_dma_flight, &pid_tgid);
	if (slot) {
		if (slot->start_ns == 0) /* else an enter whose exit was never seen: still one */
			__sync_fetch_and_add(&vfio_dma_active, 1);
		*slot = rec;
	} else if (bpf_map_update_elem(&vfio_dma_flight, &pid_tgid, &rec, BPF_NOEXIST) == 0) {
		__sync_fetch_and_add(&vfio_dma_active, 1);
	} else {
		COIOMMU_COUNT(vfio_dma_drops, 0, struct coiommu_vfio_drops, inflight_full, 1);
	}
}

SEC("tracepoint/syscalls/sys_enter_ioctl")
int vfio_dma_enter(struct trace_event_raw_sys_enter *ctx)
{
	int op = op_of((__u32)ctx->args[1]);

	if (op >= 0)
		dma_enter(op, (const char *)ctx->args[2]);
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

/* Exit of a call whose enter may have recorded it: observes it and marks the slot idle. */
static __always_inline void dma_exit(__s64 ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct coiommu_vfio_inflight *rec;
	struct coiommu_vfio_event *ev;
	__u64 now, latency;
	__u32 op;

	if (targ_tgid && (__u32)(pid_tgid >> 32) != targ_tgid)
		return;
	rec = bpf_map_lookup_elem(&vfio_dma_flight, &pid_tgid);
	if (!rec || rec->start_ns == 0)
		return;

	now = bpf_ktime_get_ns();
	latency = now - rec->start_ns;
	op = rec->op;
	if (op >= COIOMMU_OP_COUNT)
		goto out;

	COIOMMU_HIST_ADD(vfio_dma_hist, op, latency);
	count_result(op, ret, rec->size);

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
		ev->ret = ret;
		ev->pid = pid_tgid >> 32;
		ev->tid = (__u32)pid_tgid;
		ev->op = op;
		ev->pad = 0;
		bpf_get_current_comm(ev->comm, sizeof(ev->comm));
		bpf_ringbuf_submit(ev, 0);
	}
out:
	rec->start_ns = 0; /* idle until the thread's next DMA ioctl */
	__sync_fetch_and_add(&vfio_dma_active, -1);
}

SEC("tracepoint/syscalls/sys_exit_ioctl")
int vfio_dma_exit(struct trace_event_raw_sys_exit *ctx)
{
	/* Every ioctl of the host passes here: with no DMA call in flight anywhere (nearly always)
	 * one load decides, before any helper call or map lookup. */
	if (vfio_dma_active == 0)
		return 0;
	dma_exit(ctx->ret);
	return 0;
}

/* fentry mode. Both handlers see only their own file's ioctls, so a non-DMA command is the only
 * thing to filter out, and the exit hooks know the command too: no lookup for the others. */
SEC("fentry/vfio_iommu_type1_ioctl")
int BPF_PROG(vfio_t1_enter, void *iommu_data, unsigned int cmd, unsigned long arg)
{
	int op = op_of(cmd);

	if (op >= 0)
		dma_enter(op, (const char *)arg);
	return 0;
}

SEC("fexit/vfio_iommu_type1_ioctl")
int BPF_PROG(vfio_t1_exit, void *iommu_data, unsigned int cmd, unsigned long arg, long ret)
{
	if (op_of(cmd) >= 0)
		dma_exit(ret);
	return 0;
}

SEC("fentry/iommufd_fops_ioctl")
int BPF_PROG(iommufd_enter, struct file *filp, unsigned int cmd, unsigned long arg)
{
	int op = op_of(cmd);

	if (op >= 0)
		dma_enter(op, (const char *)arg);
	return 0;
}

SEC("fexit/iommufd_fops_ioctl")
int BPF_PROG(iommufd_exit, struct file *filp, unsigned int cmd, unsigned long arg, long ret)
{
	if (op_of(cmd) >= 0)
		dma_exit(ret);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
