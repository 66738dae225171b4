/* Log2 histogram shared by every BPF program and the C++ loader.
 *
 * Slot k counts values v with ceil(log2(v)) == k, i.e. 2^(k-1) < v <= 2^k; slot 0 holds v <= 1.
 * So slot k maps exactly to a Prometheus bucket le = 2^k (in the histogram's unit).
 * The last slot (COIOMMU_HIST_SLOTS - 1) also absorbs every larger value: treat it as +Inf.
 * sum is the sum of the raw values, count the number of observations (== sum of slots).
 *
 * Fixed-width fields only: this struct is a map value read by bpftool (BTF names the fields)
 * and by bpf/loader (static_asserts in abi_check.cc).
 */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* 2^38 ns ~ 275 s is the largest finite bound; slot 39 is the overflow (+Inf) slot. */
#define COIOMMU_HIST_SLOTS 40

struct coiommu_hist {
	__u64 slots[COIOMMU_HIST_SLOTS];
	__u64 sum;
	__u64 count;
};

/* Version of every pinned map layout below /sys/fs/bpf/coiommu/. Bump it whenever a map
 * definition (key, value, max_entries) changes: libbpf refuses to reuse a pinned map whose
 * definition differs, and old readers must not misread new layouts. */
#define COIOMMU_BPF_ABI_VERSION 2
