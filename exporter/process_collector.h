// Standard process metrics, read from /proc at scrape time, under the names every Prometheus
// client library uses (no coiommu_ prefix, so stock dashboards work):
//   process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
//   process_open_fds, process_max_fds, process_start_time_seconds
// plus the memory-locking pair that matters for VFIO type1 accounting (pinned pages are charged
// to the process's locked memory):
//   coiommu_process_locked_memory_bytes (VmLck), coiommu_process_locked_memory_limit_bytes
//   (RLIMIT_MEMLOCK; +Inf when unlimited).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/metric_family.h>

#include "engine/base/result.h"
#include "exporter/collector.h"

namespace coiommu::exporter {

// The fields of /proc/<pid>/stat the collector needs (raw units: clock ticks, bytes, pages).
struct ProcStat {
    uint64_t utime_ticks = 0;      // field 14
    uint64_t stime_ticks = 0;      // field 15
    uint64_t starttime_ticks = 0;  // field 22, since boot
    uint64_t vsize_bytes = 0;      // field 23
    uint64_t rss_pages = 0;        // field 24
};

// Parses /proc/<pid>/stat text. The comm field (2) may hold spaces and parentheses; parsing
// resumes after its last ')'. Errors: EINVAL (malformed).
[[nodiscard]] Result<ProcStat> parse_proc_pid_stat(std::string_view text);
// The "btime N" line of /proc/stat (boot time, Unix seconds). Errors: EINVAL (missing).
[[nodiscard]] Result<uint64_t> parse_boot_time(std::string_view proc_stat_text);
// A "Key:   N kB" line of /proc/<pid>/status, in bytes. Errors: ENOENT (no such key), EINVAL.
[[nodiscard]] Result<uint64_t> parse_status_kb(std::string_view status_text, std::string_view key);

struct ProcessStats {
    double cpu_seconds = 0;
    uint64_t resident_memory_bytes = 0;
    uint64_t virtual_memory_bytes = 0;
    uint64_t open_fds = 0;
    double max_fds = 0;  // +Inf when unlimited
    double start_time_seconds = 0;
    uint64_t locked_memory_bytes = 0;
    double locked_memory_limit_bytes = 0;  // +Inf when unlimited
};

// Reads the calling process's stats from `proc_root` (normally "/proc"). Errors: the errno of
// the first file that could not be read, or EINVAL when one could not be parsed.
[[nodiscard]] Result<ProcessStats> read_process_stats(const std::string& proc_root = "/proc");

[[nodiscard]] std::vector<prometheus::MetricFamily> process_families(const ProcessStats& stats);

class ProcessCollector final : public Collector {
public:
    explicit ProcessCollector(std::string proc_root = "/proc") : proc_root_(std::move(proc_root)) {}
    // Errors: as read_process_stats (nothing is appended then).
    [[nodiscard]] Status collect_into(std::vector<prometheus::MetricFamily>& out) const override;

private:
    std::string proc_root_;
};

}  // namespace coiommu::exporter
