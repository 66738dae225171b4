// coiommu-trace's command line: one CLI11 option table (engine/base/cli.h), durations in the
// grammar of engine/base/quantity.h, a did-you-mean for a mistyped option.
//
//   coiommu-trace [options] [interval [count]]
//
// interval is a duration (a bare number is seconds: "1", "0.5", "250ms"), 1ms..24h; count is a
// positive integer; options may come before or after them, short switches may be grouped (-uT),
// and of a repeated option, or of -u/-m and --pin/--pin-temp, the last one wins.
//
// Thread-safety: pure functions (parse_trace_args prints --help and --version to stdout).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "bpf/loader/pin.h"
#include "bpf/loader/vfio_dma_tracer.h"
#include "engine/base/cli.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

// The unit of the text histograms and averages (-u, -m); JSON is always in nanoseconds.
struct Unit {
    std::string_view name = "ns";
    uint64_t ns_per_unit = 1;  // 1: the histogram's own unit (ns, or pages)
};
inline constexpr Unit kMicroseconds{"us", 1000};
inline constexpr Unit kMilliseconds{"ms", 1000000};

inline constexpr uint32_t kMaxPid = 4194304;  // PID_MAX_LIMIT on 64-bit Linux
// --slow-us above an hour is a hung ioctl, not a latency (and an unbounded value once wrapped to
// a negative threshold that streamed every call).
inline constexpr std::chrono::nanoseconds kMaxSlowThreshold = std::chrono::hours(1);
inline constexpr std::chrono::nanoseconds kMinInterval = std::chrono::milliseconds(1);
inline constexpr std::chrono::nanoseconds kMaxInterval = std::chrono::hours(24);

struct TraceArgs {
    uint32_t pid = 0;  // 0: every process
    Unit unit;
    std::optional<std::chrono::nanoseconds> slow;  // --slow-us: stream every call at least this slow
    bool json = false;
    std::optional<std::string> engine;  // --engine BIN|PID
    bool engine_dma = false;
    bool kernel_hooks = false;
    VfioDmaMode vfio_mode = VfioDmaMode::Auto;  // --vfio-mode: the hooks of the vfio_dma program
    std::optional<Keep> pin;                    // --pin (Keep::Yes) or --pin-temp (Keep::No)
    std::string pin_root{kDefaultPinRoot};
    bool stats = false;
    std::optional<std::string> exporter;  // --exporter listen address
    bool timestamp = false;
    bool verbose = false;
    std::optional<std::chrono::nanoseconds> interval;  // none: print once, on SIGINT/SIGTERM
    uint64_t count = 0;                                // 0: until interrupted
};

// Checks an --exporter address; an empty function: the program is built without the exporter,
// and --exporter is refused.
using AddressCheck = std::function<Status(std::string_view address)>;

struct ParsedTrace {
    cli::Parsed action = cli::Parsed::Run;  // Exited: --help or --version was printed
    TraceArgs args;
};

// Parses argv (argv[0] is the program). Errors (EINVAL) carry the message for the user, naming
// the option or argument: an unknown option (with the closest known one), a missing, malformed or
// out-of-range value, a --vfio-mode that is not one of auto|fentry|tracepoint, an address
// `exporter` refuses, --engine-dma without --engine, an argument too many.
[[nodiscard]] Result<ParsedTrace> parse_trace_args(int argc, const char* const* argv, const AddressCheck& exporter);

// The --help text.
[[nodiscard]] std::string trace_usage();

}  // namespace coiommu::bpf
