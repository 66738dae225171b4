// SPDX-License-Identifier: GPL-2.0
/* Engine USDT probes (provider "coiommu", engine/telemetry/probes.h) turned into histograms:
 * guest-visible request latency per kind (the engine's own measure, read from batches of request
 * records: one probe hit per batch), pages per request, DMA map/unmap latency as measured by the
 * engine (from batches of DMA call records, eng_dma_batch: the loader loads and attaches it only
 * on request; eng_dma_map/eng_dma_unmap read the per-call probes, which the loader leaves
 * detached), and unpin scan durations. Programs are attached by the loader with
 * bpf_program__attach_usdt to one binary (every process running it) or one pid. */
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
COIOMMU_PERCPU_ARRAY(eng_scratch, struct coiommu_eng_batch, 1);
COIOMMU_PERCPU_ARRAY(eng_dma_scratch, struct coiommu_eng_dma_batch, 1);

static __always_inline void bad_kind(void)
{
	COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_kind, 1);
}

struct batch_ctx {
	struct coiommu_eng_batch *batch;
};

/* bpf_loop callback: counts record i. Verified once, however many records a batch holds. */
static long count_record(__u64 index, void *data)
{
	struct batch_ctx *ctx = data;
	struct coiommu_eng_request_record *r;
	struct coiommu_eng_req_calls *calls;
	__u64 i = index;
	__u32 kind;

	asm volatile("" : "+r"(i)); /* check and index with the same register */
	if (i >= COIOMMU_ENG_BATCH_MAX)
		return 1;
	r = &ctx->batch->records[i];
	kind = r->kind;
	if (kind >= COIOMMU_ENG_REQ_KINDS) {
		bad_kind();
		return 0;
	}
	calls = bpf_map_lookup_elem(&eng_req_calls, &kind);
	if (calls) {
		if (r->result == 0)
			__sync_fetch_and_add(&calls->ok, 1);
		else
			__sync_fetch_and_add(&calls->failed, 1);
	}
	COIOMMU_HIST_ADD(eng_req_pages, kind, r->pages);
	COIOMMU_HIST_ADD(eng_req_hist, kind, r->latency_ns);
	return 0;
}

/* One hit per batch of up to COIOMMU_ENG_BATCH_MAX served requests (engine/telemetry/
 * request_trace.h): the records are copied from the engine's memory in one read, then counted
 * with bpf_loop (5.17+). */
SEC("usdt")
int BPF_USDT(eng_requests, __u32 session, __u64 records, __u32 count)
{
	struct batch_ctx bc = {};
	__u32 zero = 0, n = count;
	__u64 size;

	bc.batch = bpf_map_lookup_elem(&eng_scratch, &zero);
	if (!bc.batch)
		return 0;
	if (n > COIOMMU_ENG_BATCH_MAX) {
		COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_batch,
			      n - COIOMMU_ENG_BATCH_MAX);
		n = COIOMMU_ENG_BATCH_MAX;
	}
	size = (__u64)n * sizeof(bc.batch->records[0]);
	/* Bound the very register the helper gets: clang would otherwise check one copy of the size
	 * and pass another, which the verifier cannot relate. */
	asm volatile("" : "+r"(size));
	if (size > sizeof(bc.batch->records))
		return 0;
	if (bpf_probe_read_user(bc.batch->records, size, (const void *)records) != 0) {
		COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_batch, n);
		return 0;
	}
	bpf_loop(n, count_record, &bc, 0);
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

struct dma_batch_ctx {
	struct coiommu_eng_dma_batch *batch;
};

/* bpf_loop callback: counts DMA record i. */
static long count_dma_record(__u64 index, void *data)
{
	struct dma_batch_ctx *ctx = data;
	struct coiommu_eng_dma_record *r;
	__u64 i = index;

	asm volatile("" : "+r"(i)); /* check and index with the same register */
	if (i >= COIOMMU_ENG_DMA_BATCH_MAX)
		return 1;
	r = &ctx->batch->records[i];
	if (r->op >= COIOMMU_ENG_DMA_OPS) {
		bad_kind();
		return 0;
	}
	dma_done(r->op, r->size, r->result, r->latency_ns);
	return 0;
}

/* One hit per batch of up to COIOMMU_ENG_DMA_BATCH_MAX DMA backend calls (engine/telemetry/
 * request_trace.h, DmaTraceBatch): copied in one read, counted with bpf_loop, as eng_requests. */
SEC("usdt")
int BPF_USDT(eng_dma_batch, __u32 session, __u64 records, __u32 count)
{
	struct dma_batch_ctx bc = {};
	__u32 zero = 0, n = count;
	__u64 size;

	bc.batch = bpf_map_lookup_elem(&eng_dma_scratch, &zero);
	if (!bc.batch)
		return 0;
	if (n > COIOMMU_ENG_DMA_BATCH_MAX) {
		COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_batch,
			      n - COIOMMU_ENG_DMA_BATCH_MAX);
		n = COIOMMU_ENG_DMA_BATCH_MAX;
	}
	size = (__u64)n * sizeof(bc.batch->records[0]);
	asm volatile("" : "+r"(size)); /* as in eng_requests */
	if (size > sizeof(bc.batch->records))
		return 0;
	if (bpf_probe_read_user(bc.batch->records, size, (const void *)records) != 0) {
		COIOMMU_COUNT(eng_drops, 0, struct coiommu_eng_drops, bad_batch, n);
		return 0;
	}
	bpf_loop(n, count_dma_record, &bc, 0);
	return 0;
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
