// StatsGuard: keeps the kernel's per-program run time accounting on (run_time_ns/run_cnt in
// ProgramInfo) while it lives, like `sysctl kernel.bpf_stats_enabled=1` but scoped to the
// holder: the kernel turns it off when the last such fd closes. Accounting costs a few ns per
// program run, so it is opt-in.
#pragma once

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu::bpf {

class StatsGuard {
public:
    [[nodiscard]] static Result<StatsGuard> enable();

private:
    explicit StatsGuard(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
};

}  // namespace coiommu::bpf
