// Who may load BPF here, and how to explain it when the kernel says no.
#pragma once

#include <string>

#include "engine/base/result.h"

namespace coiommu::bpf {

// Effective capabilities of this process that matter for tracing (from /proc/self/status).
struct Privileges {
    bool sys_admin = false;  // CAP_SYS_ADMIN: everything (and mounting tracefs/bpffs)
    bool bpf = false;        // CAP_BPF (Linux >= 5.8)
    bool perfmon = false;    // CAP_PERFMON: tracepoints, uprobes/USDT
    bool dac_override = false;

    // True when the capabilities suffice for loading and attaching our programs.
    [[nodiscard]] bool can_trace() const { return sys_admin || (bpf && perfmon); }
    [[nodiscard]] std::string describe() const;  // e.g. "CAP_BPF CAP_PERFMON"
};

[[nodiscard]] Result<Privileges> current_privileges();

// Ok when current_privileges().can_trace(); otherwise EPERM with
// "BPF tracing needs root or CAP_BPF+CAP_PERFMON (have: ...)".
[[nodiscard]] Status check_bpf_privileges();

// The sentence appended to EPERM/EACCES failures of BPF syscalls.
[[nodiscard]] std::string privilege_hint();

// Builds an Error for a failed BPF/libbpf call, appending privilege_hint() to EPERM/EACCES.
[[nodiscard]] Error bpf_error(int err, std::string context);

}  // namespace coiommu::bpf
