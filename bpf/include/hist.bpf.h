/* Log2 histogram helpers for the BPF side (ceil log2 buckets, see abi/hist.h).
 *
 * clang 14 crashes (ICE) on __builtin_clzll for -target bpf, so log2 is computed with the
 * branch-free bit-twiddling of bcc's bits.bpf.h. */
#pragma once

#include "abi/hist.h"

/* floor(log2(v)) for v > 0; 0 for v == 0. */
static __always_inline __u32 coiommu_log2_u32(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 coiommu_log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return coiommu_log2_u32(hi) + 32;
	return coiommu_log2_u32((__u32)v);
}

/* Histogram slot of v: ceil(log2(v)), 0 for v <= 1, clamped to the overflow slot. */
static __always_inline __u32 coiommu_hist_slot(__u64 v)
{
	__u32 slot;

	if (v <= 1)
		return 0;
	slot = coiommu_log2_u64(v - 1) + 1;
	if (slot >= COIOMMU_HIST_SLOTS)
		slot = COIOMMU_HIST_SLOTS - 1;
	return slot;
}

/* Adds one observation. h points into a per-CPU map value; the atomics keep it exact even if
 * two programs interleave on one CPU (preemptible BPF). */
static __always_inline void coiommu_hist_add(struct coiommu_hist *h, __u64 v)
{
	__u64 slot = coiommu_hist_slot(v);

	/* Pin the index in one register: without this clang checks a zero-extended copy and
	 * indexes with another, which the 6.1 verifier rejects ("R2 unbounded memory access"). */
	asm volatile("" : "+r"(slot));
	if (slot >= COIOMMU_HIST_SLOTS) /* for the verifier */
		return;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, v);
	__sync_fetch_and_add(&h->count, 1);
}

/* Adds one observation to entry `key` of a per-CPU array of struct coiommu_hist. */
#define COIOMMU_HIST_ADD(map, key, v)                                                              \
	({                                                                                         \
		__u32 __k = (key);                                                                 \
		struct coiommu_hist *__h = bpf_map_lookup_elem(&(map), &__k);                      \
		if (__h)                                                                           \
			coiommu_hist_add(__h, (v));                                                \
	})

/* Per-CPU counter bump: `field` of entry `key` of a per-CPU array of structs. */
#define COIOMMU_COUNT(map, key, type, field, n)                                                    \
	({                                                                                         \
		__u32 __k = (key);                                                                 \
		type *__c = bpf_map_lookup_elem(&(map), &__k);                                     \
		if (__c)                                                                           \
			__sync_fetch_and_add(&__c->field, (n));                                    \
	})

/* Per-CPU array map of `n` entries with a named struct value (bpftool prints field names). */
#define COIOMMU_PERCPU_ARRAY(name, value_type, n)                                                  \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                           \
		__uint(max_entries, n);                                                            \
		__type(key, __u32);                                                                \
		__type(value, value_type);                                                         \
	} name SEC(".maps")
