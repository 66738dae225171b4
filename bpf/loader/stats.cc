#include "bpf/loader/stats.h"

#include <bpf/bpf.h>

#include "bpf/loader/privileges.h"

namespace coiommu::bpf {

Result<StatsGuard> StatsGuard::enable() {
    const int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    if (fd < 0) return coiommu::unexpected(bpf_error(-fd, "enable BPF run time stats"));
    return StatsGuard(UniqueFd(fd));
}

}  // namespace coiommu::bpf
