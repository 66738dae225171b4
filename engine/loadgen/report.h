// Reports of coiommu-load: the human summary, the comparison table (ratios to the seed engine),
// the JSON document (--json) and the gnuplot plots (--plot).
//
// JSON schema (every number is a JSON number; latencies in ns; memory in pages of 4 KiB unless
// the key says mib):
//   { "tool", "version", "ok",
//     "environment": {host, kernel (uname release and version), cpu: {model, online},
//                     time (ISO-8601 UTC of the run start), version, git_revision},
//     "options": {...every flag..., connect ("" unless --connect)},
//     "runs": [ { "label", "workload", "strategy", "engine" (fast|seed, null unless coiommu),
//                 "backend", "served_by", "passed",
//                 "setup_s", "duration_s",
//                 "operations": {maps, map_failures, unmaps, unmap_failures, pages_mapped,
//                                pages_unmapped, skipped, maps_per_s, pages_per_s},
//                 "requests": {sent, completed, pages_requested},
//                 "latency_ns": {map, request, unmap, balloon: {count,min,p50,p90,p99,p999,max,mean}},
//                 "memory": {pinned_peak_pages, pinned_mean_pages, pinned_end_pages, pinned_peak_mib,
//                            pinned_mean_mib, pages_pinned, pages_unpinned, pins_per_s,
//                            guest_touched_pages},
//                 "dma": {map_calls, unmap_calls, map_failures, unmap_failures, entries_peak,
//                         entry_limit},
//                 "failures": {by reason: not_pinned, timeout, ...},
//                 "invariant": {checked, note, checks, violations},
//                 "balloon": {requests, success, failed, aborted, violations, pages},
//                 "engine_stats": null | {config, requests_single, requests_batch, requests_failed,
//                           pages_requested, pages_pinned, pages_already_pinned, pages_unpinned,
//                           pinned_pages, dma_map_calls, dma_unmap_calls, request_p50_ns,
//                           request_p99_ns, balloon_success, balloon_failed, lru_scans,
//                           pin_failures: {...}, unpin_attempts: {...}},
//                 "checks": [{name, passed, detail}],
//                 "cpu": {process_s, threads: [{name, cpu_s}]},
//                 "timeline": [{t_s, pinned_pages, dma_entries, maps, pages_mapped, failures,
//                               maps_per_s, pins_per_s, map_p99_ns, engine_pinned_pages}] } ],
//     "comparison": [ {label, maps_per_s, pages_per_s, pinned_peak_mib, map_p99_ns,
//                      pages_per_s_vs_seed, pinned_peak_vs_seed} ] }
// *_vs_seed is null when the invocation has no coiommu/seed run of the same workload.
//
// Thread-safety: pure functions of their arguments (the writers touch only their files;
// capture_environment reads the host's identity).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/loadgen/options.h"
#include "engine/loadgen/run.h"
#include "engine/loadgen/units.h"

namespace coiommu::loadgen {

// Where and when the runs ran (the JSON's "environment").
struct Environment {
    std::string host;       // gethostname
    std::string kernel;     // uname release and version
    std::string cpu_model;  // /proc/cpuinfo's model name ("unknown" when it has none)
    uint64_t online_cpus = 0;
    std::string time;  // ISO-8601 UTC, "2026-12-01T21:30:00Z"
    std::string version;
    std::string git_revision;
};
[[nodiscard]] Environment capture_environment(std::chrono::system_clock::time_point start);

struct ComparisonRow {
    std::string label;
    double maps_per_s = 0;
    double pages_per_s = 0;
    double pinned_peak_mib = 0;
    uint64_t map_p99_ns = 0;
    std::optional<double> pages_per_s_vs_seed;  // this run's pages/s over the coiommu/seed run's
    std::optional<double> pinned_peak_vs_seed;  // this run's peak pinned memory over the seed run's
};
[[nodiscard]] std::vector<ComparisonRow> compare(const std::vector<RunResult>& runs);

[[nodiscard]] std::string render_json(const LoadOptions& o, const std::vector<RunResult>& runs, const Environment& env);
// The environment captured now.
[[nodiscard]] std::string render_json(const LoadOptions& o, const std::vector<RunResult>& runs);
// Errors: errno of writing the file.
[[nodiscard]] Status write_json(const std::string& path, const LoadOptions& o, const std::vector<RunResult>& runs,
                                const Environment& env);

// Whether `path` can be opened for writing (checked before the runs, so that a bad --json fails
// fast). Leaves an existing file untouched and removes the file it created. Errors: errno of open.
[[nodiscard]] Status check_writable(const std::string& path);

// The per-run summary (a few lines) and the comparison table of all runs.
void print_summary(std::FILE* out, const RunResult& r);
void print_table(std::FILE* out, const std::vector<RunResult>& runs);

// Writes `png_path`.gp (the script) and `png_path`.dat / .bars.dat (the data) for a plot of
// png_path: pinned memory and p99 map latency over time (one line per run), and the strategy
// comparison as bars (pages/s and peak pinned memory). Returns the script's path. Errors: errno of
// writing the files.
[[nodiscard]] Result<std::string> write_plot_files(const std::string& png_path, const std::vector<RunResult>& runs);
// Runs gnuplot on the script. Errors: ENOENT when gnuplot is not installed; EIO when it failed.
[[nodiscard]] Status run_gnuplot(const std::string& script_path);
// write_plot_files, then run_gnuplot. Errors: theirs (ENOENT is ambiguous here: call the two
// steps to tell a missing gnuplot from a missing directory).
[[nodiscard]] Status write_plot(const std::string& png_path, const std::vector<RunResult>& runs);

}  // namespace coiommu::loadgen
