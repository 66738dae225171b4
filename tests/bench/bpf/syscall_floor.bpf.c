// SPDX-License-Identifier: GPL-2.0
// Empty programs on the two syscall tracepoints vfio_dma uses in tracepoint mode. Attached, they
// show what the kernel charges an ioctl for the hook alone, before any program logic: the floor
// that bpf_overhead_bench's BM_OtherIoctl_EmptyTracepoints measures against vfio_dma's cost.
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_ioctl")
int floor_enter(void* ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_ioctl")
int floor_exit(void* ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
