// SPDX-License-Identifier: GPL-2.0
/* Engine USDT probes (provider "coiommu", engine/telemetry/probes.h) turned into histograms:
 * guest-visible request latency per kind (request_done carries the engine's own measure, so one
 * probe hit per request is enough), pages per request, DMA map/unmap latency as measured by the
 * engine (per DMA call: the loader attaches those two only on request), and unpin scan
 * durations. Programs are attached by the loader with bpf_program__attach_usdt to one binary
 * (every process running it) or one pid. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>

#include "abi/engine.h"
#include "hist.bpf.h"

COIOMMU_PERCPU_ARRAY(eng_req_hist, struct coiommu_hist, COIOMMU_ENG_REQ_KINDS);
COIOMMU_PERCPU_ARRAY(eng_req_pages, struct coiommu_hist, COIOMMU_ENG_REQ_KINDS);
COIOMMU_PERCPU_ARRAY(eng_req_calls, struct coiommu_eng_req_calls, COIOMMU_ENG_REQ_KINDS);
COIOMMU_PERCPU_ARRAY(eng_dma_hist, struct coiommu_hist, COIOMMU_ENG_DMA_OPS);
COIOMMU_PERCPU_ARRAY(eng_dma_calls, struct coiommu_eng_dma_calls, COIOMMU_ENG_DMA_OPS);
COIOMMU_PERCPU_ARRAY(eng_scan_hist, struct coiommu_hist, COIOMMU_ENG_SCAN_KINDS);
COIOMMU_PERCPU_ARRAY(eng_scan_stats, struct coiommu_eng_scan_stats, COIOMMU_ENG_SCAN_KINDS);
COIOMMU_PERCPU_ARRAY(eng_drops, struct coiommu_eng_drops, 1);

static __always_inline void bad_kind(void)
{
	COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_kind, 1);
}

SEC("usdt")
int BPF_USDT(eng_req_done, __u32 session, __u32 vcpu, __u32 kind, __u64 pages, __s32 result,
	     __u64 latency_ns)
{
	struct coiommu_eng_req_calls *calls;

	if (kind >= COIOMMU_ENG_REQ_KINDS) {
		bad_kind();
		return 0;
	}
	calls = bpf_map_lookup_elem(&eng_req_calls, &kind);
	if (calls) {
		if (result == 0)
			__sync_fetch_and_add(&calls->ok, 1);
		else
			__sync_fetch_and_add(&calls->failed, 1);
	}
	COIOMMU_HIST_ADD(eng_req_pages, kind, pages);
	COIOMMU_HIST_ADD(eng_req_hist, kind, latency_ns);
	return 0;
}

static __always_inline void dma_done(__u32 op, __u64 size, __s32 result, __u64 latency_ns)
{
	struct coiommu_eng_dma_calls *calls = bpf_map_lookup_elem(&eng_dma_calls, &op);

	if (calls) {
		if (result == 0)
			__sync_fetch_and_add(&calls->ok, 1);
		else
			__sync_fetch_and_add(&calls->failed, 1);
		__sync_fetch_and_add(&calls->bytes, size);
	}
	COIOMMU_HIST_ADD(eng_dma_hist, op, latency_ns);
}

SEC("usdt")
int BPF_USDT(eng_dma_map, __u64 iova, __u64 size, __s32 result, __u64 latency_ns)
{
	dma_done(0, size, result, latency_ns);
	return 0;
}

SEC("usdt")
int BPF_USDT(eng_dma_unmap, __u64 iova, __u64 size, __s32 result, __u64 latency_ns)
{
	dma_done(1, size, result, latency_ns);
	return 0;
}

SEC("usdt")
int BPF_USDT(eng_unpin_scan, __u32 session, __u32 kind, __u64 examined, __u64 unpinned,
	     __u64 duration_ns)
{
	struct coiommu_eng_scan_stats *st;

	if (kind >= COIOMMU_ENG_SCAN_KINDS) {
		bad_kind();
		return 0;
	}
	st = bpf_map_lookup_elem(&eng_scan_stats, &kind);
	if (st) {
		__sync_fetch_and_add(&st->scans, 1);
		__sync_fetch_and_add(&st->examined, examined);
		__sync_fetch_and_add(&st->unpinned, unpinned);
	}
	COIOMMU_HIST_ADD(eng_scan_hist, kind, duration_ns);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
