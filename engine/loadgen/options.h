// coiommu-load's options and command line.
//
// Every list flag (--engine, --strategy, --workload) takes comma-separated values, each at most
// once; the run matrix is workloads x strategies x engines, where the engine only varies the
// coiommu strategy (strict and static do not use a pin engine). All runs of one invocation use
// the same seed.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/result.h"
#include "engine/loadgen/strategy.h"
#include "engine/loadgen/workload.h"
#include "engine/workers/config.h"

namespace coiommu::loadgen {

enum class BackendKind : uint8_t { Fake, Null, Vfio, Iommufd };
[[nodiscard]] std::string_view to_string(BackendKind k);
enum class FakeLatency : uint8_t { Typical, None };
[[nodiscard]] std::string_view to_string(FakeLatency l);

// How long a vCPU holds a buffer mapped: a number of its own later operations, or a time.
struct Lifetime {
    uint64_t ops = 4;  // used when time == 0
    std::chrono::nanoseconds time{0};

    [[nodiscard]] bool timed() const { return time.count() != 0; }
};

// The engine options the load generator starts from (the engine's own defaults, except that LRU
// unpinning runs every second so that short runs show unpinning; --engine-opts overrides).
[[nodiscard]] workers::EngineConfig default_engine_config();

struct LoadOptions {
    uint32_t vcpus = 2;
    uint64_t ram_bytes = uint64_t{1} << 30;
    std::vector<WorkloadKind> workloads{WorkloadKind::Mix};
    uint32_t buffer_pages = 16;
    Lifetime lifetime;
    std::chrono::nanoseconds think{0};  // pause after each operation, per vCPU
    double rate = 0;                    // target operations/s over all vCPUs; 0 = as fast as possible
    std::chrono::nanoseconds duration = std::chrono::seconds(5);
    uint64_t seed = 1;
    std::vector<workers::Variant> engines{workers::Variant::Fast};
    std::vector<StrategyKind> strategies{StrategyKind::Coiommu};
    BackendKind backend = BackendKind::Fake;
    std::string vfio_group;   // --backend vfio: /dev/vfio/N
    std::string vfio_device;  // --backend iommufd: /dev/vfio/devices/vfioN
    // --connect: a running coiommud serves the coiommu strategy (its engine, its fake or null
    // backend); empty: the engine runs in this process.
    std::string connect_path;
    // --reconnect: a daemon that dies or restarts is resumed (PROTOCOL.md, "Resumable sessions")
    // and the run goes on; without it the run ends at once with exit 1.
    bool reconnect = false;
    std::chrono::nanoseconds reconnect_timeout = std::chrono::seconds(30);  // --reconnect-timeout
    std::string engine_opts;                                                // as given (for the report)
    workers::EngineConfig engine = default_engine_config();                 // parsed --engine-opts
    FakeLatency latency = FakeLatency::Typical;
    uint64_t entry_limit = 65535;  // fake and null backends (dma_entry_limit)
    double zipf_s = 1.1;
    uint32_t ring_buffers = 64;
    uint32_t balloon_pages = 1024;  // 4 MiB per balloon inflation
    std::chrono::nanoseconds balloon_interval = std::chrono::milliseconds(100);
    std::string json_path;
    std::string plot_path;
    bool progress = false;                    // force the progress line even when stdout is not a TTY
    bool quiet = false;                       // no progress line, no summary (errors and the JSON/plot still)
    bool table_only = false;                  // no per-run summaries: the comparison table alone
    log::Level log_level = log::Level::Warn;  // the engine's and ours

    // The buffers one vCPU may hold mapped at once (a timed lifetime is capped at 4096).
    [[nodiscard]] uint32_t max_outstanding() const;
};

inline constexpr uint32_t kMaxBufferPages = 4096;  // 16 MiB
inline constexpr uint32_t kMaxVcpusFlag = 256;
inline constexpr uint32_t kMaxTimedOutstanding = 4096;

// One cell of the run matrix.
struct RunSpec {
    WorkloadKind workload = WorkloadKind::Mix;
    StrategyKind strategy = StrategyKind::Coiommu;
    workers::Variant engine = workers::Variant::Fast;  // meaningful for coiommu only

    // "coiommu/fast/stream", "strict/ring", ...
    [[nodiscard]] std::string label() const;
};

// workloads x strategies x engines (engines only for coiommu), in the order given.
[[nodiscard]] std::vector<RunSpec> expand_matrix(const LoadOptions& o);

enum class CliAction : uint8_t { Run, Help, Version };
struct ParsedCli {
    CliAction action = CliAction::Run;
    LoadOptions options;
};

// Parses argv[1..] through the option table (one CLI11 App; durations and sizes in the grammar of
// engine/base/quantity.h). -h/--help and -V/--version are actions for the caller to print; they
// answer even when another option is wrong (not where a value belongs). Errors (EINVAL) carry a
// message for the user naming the flag: an unknown flag (with the closest known one, "did you
// mean '--duration'?"), a missing, malformed or out-of-range value, a value that is itself an
// option ("--json --help"), conflicting flags (--think-us with --rate; a variant= in --engine-opts
// other than the --engine it runs), --backend vfio without --vfio-group, --connect with --backend
// vfio, a strict/static strategy, --engine, --compare or --engine-opts (the daemon's engine).
[[nodiscard]] Result<ParsedCli> parse_cli(const std::vector<std::string_view>& args);
// The --help text: the option table with each flag's range and default.
[[nodiscard]] std::string usage();

}  // namespace coiommu::loadgen
