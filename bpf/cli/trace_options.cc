#include "bpf/cli/trace_options.h"

#include <array>
#include <span>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/base/cli_values.h"
#include "engine/base/quantity.h"

namespace coiommu::bpf {
namespace {

using std::chrono::nanoseconds;

constexpr std::array kVfioModes{VfioDmaMode::Auto, VfioDmaMode::Fentry, VfioDmaMode::Tracepoint};

constexpr std::string_view kDescription =
    "Summarise VFIO DMA map/unmap ioctl latency (VFIO type1 MAP_DMA/UNMAP_DMA and iommufd\n"
    "IOAS_MAP/IOAS_UNMAP) as log2 histograms, for every process or one pid (crosvm, QEMU or the\n"
    "coiommu engine): every INTERVAL, COUNT times (default: until Ctrl-C), or without an INTERVAL\n"
    "once, on Ctrl-C.";

constexpr std::string_view kFooter =
    "Durations: 500ms, 1.5s, 2m, 250us (a bare interval is seconds, a bare --slow-us microseconds).\n"
    "Needs root or CAP_BPF+CAP_PERFMON (and CAP_SYS_ADMIN to mount tracefs/bpffs if missing).\n"
    "Exit status: 0 done or interrupted; 1 tracing could not start or a read failed; 2 bad command line.\n\n"
    "examples:\n"
    "  coiommu-trace 1 10              10 one-second histograms of every process's DMA ioctls\n"
    "  coiommu-trace -p $(pidof crosvm) -u --slow-us 500\n"
    "  coiommu-trace --pin --json 5    JSON every 5 s; maps stay in /sys/fs/bpf/coiommu/v2/\n"

    "  coiommu-trace --exporter 127.0.0.1:9465 --stats --slow-us 1000\n"
    "                                  Prometheus exporter for a crosvm/QEMU host (Ctrl-C ends)";

// What the table binds, besides TraceArgs' plain fields: the values whose presence matters
// (optionals) and the options where the last one given wins.
struct Table {
    nanoseconds slow{0};
    nanoseconds interval{0};
    std::string engine;
    bool micro = false;
    bool milli = false;
    bool pin = false;
    bool pin_temp = false;
    CLI::Option* slow_opt = nullptr;
    CLI::Option* interval_opt = nullptr;
    CLI::Option* engine_opt = nullptr;
    CLI::Option* micro_opt = nullptr;
    CLI::Option* milli_opt = nullptr;
    CLI::Option* pin_opt = nullptr;
    CLI::Option* pin_temp_opt = nullptr;
};

CLI::Option* add_exporter(CLI::App& app, std::optional<std::string>& out, const AddressCheck& check) {
    auto set = [&out, check](const std::string& text) {
        if (!check)
            throw CLI::ValidationError("--exporter: built without the Prometheus exporter (COIOMMU_EXPORTER=OFF)");
        if (auto st = check(text); !st) throw CLI::ValidationError("--exporter: " + st.error().context);
        out = text;
    };
    auto* opt = app.add_option_function<std::string>("--exporter", set,
                                                     "also serve Prometheus metrics at http://ADDR/metrics (e.g.\n"
                                                     "127.0.0.1:9465; port 0 picks a free port, printed on stderr)");
    return opt->type_name("ADDR")->check(cli::kValueWord);
}

void add_what_options(CLI::App& app, TraceArgs& a, Table& t) {
    cli::add_integer(app, "-p,--pid", a.pid, 1, kMaxPid, "trace only this process")->default_str("");
    t.micro_opt = cli::add_switch(app, "-u,--microseconds", t.micro,
                                  "histograms in microseconds, biolatency's integer rows (default:\n"
                                  "nanoseconds); a ns slot straddling a row goes to its upper bound's row");
    t.milli_opt = cli::add_switch(app, "-m,--milliseconds", t.milli, "histograms in milliseconds, likewise");
    t.slow_opt =
        cli::add_duration_in(app, "--slow-us", t.slow, BareUnit::Microseconds, nanoseconds(0), kMaxSlowThreshold,
                             "also stream every call that took at least this long (a bare\n"
                             "number is microseconds; 0: every call)");
    t.slow_opt->default_str("");
    cli::add_switch(app, "-j,--json", a.json, "one JSON object per interval (and per slow event) on stdout");
    t.engine_opt = cli::add_text(app, "--engine", t.engine, "BIN|PID",
                                 "also attach to the engine's USDT probes (binary path, or pid):\n"
                                 "request latency, pages per request, unpin scans (one probe hit per\n"
                                 "batch of request records)");
    cli::add_switch(app, "--engine-dma", a.engine_dma,
                    "with --engine: also the engine's DMA map/unmap calls (one more probe\n"
                    "hit per batch of up to 64 call records)")
        ->needs(t.engine_opt);
    cli::add_switch(app, "--kernel-hooks", a.kernel_hooks, "also try the fentry hooks inside vfio_iommu_type1");
    cli::add_choice(app, "--vfio-mode", a.vfio_mode, std::span<const VfioDmaMode>(kVfioModes), mode_name,
                    "the hooks of the DMA ioctls: fentry (fentry/fexit on the VFIO\n"
                    "type1 and iommufd ioctl handlers: only VFIO calls pay; fails where\n"
                    "the kernel or its loaded modules do not allow it), tracepoint\n"
                    "(sys_enter/sys_exit of every ioctl: also sees ioctls on other\n"
                    "files), auto (fentry where possible, else tracepoint; stderr says\n"
                    "which and why)");
}

void add_output_options(CLI::App& app, TraceArgs& a, Table& t, const AddressCheck& exporter) {
    t.pin_opt = cli::add_switch(app, "--pin", t.pin, "pin the maps under <pin-root>/v2/ and keep them after exit");
    t.pin_temp_opt = cli::add_switch(app, "--pin-temp", t.pin_temp, "pin the maps while running, remove them on exit");
    cli::add_text(app, "--pin-root", a.pin_root, "DIR", "pin root")->default_str(a.pin_root);
    cli::add_switch(app, "--stats", a.stats, "enable BPF run time accounting and print per-program cost");
    add_exporter(app, a.exporter, exporter);
    cli::add_switch(app, "-T,--timestamp", a.timestamp, "print a timestamp with each interval");
    cli::add_switch(app, "-v,--verbose", a.verbose, "debug logging (libbpf and verifier messages)");
    t.interval_opt = cli::add_duration_in(app, "interval", t.interval, BareUnit::Seconds, kMinInterval, kMaxInterval,
                                          "print every INTERVAL (a bare number is seconds)");
    t.interval_opt->default_str("");
    cli::add_integer(app, "count", a.count, 1, UINT64_MAX, "stop after COUNT intervals")->default_str("");
}

// -h ends the parse where it appears; -V comes next: the callbacks run in the order of the table,
// so --version answers before any other value is parsed.
void build_table(CLI::App& app, TraceArgs& a, Table& t, const AddressCheck& exporter) {
    app.name("coiommu-trace");
    app.description(std::string(kDescription));
    app.footer(std::string(kFooter));
    app.get_formatter()->column_width(30);
    cli::add_help(app);
    cli::add_version(app, "coiommu-trace");
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    add_what_options(app, a, t);
    add_output_options(app, a, t, exporter);
}

// The values whose presence matters, and the last of -u/-m and of --pin/--pin-temp.
void finish(const CLI::App& app, const Table& t, TraceArgs& a) {
    if (t.slow_opt->count() > 0) a.slow = t.slow;
    if (t.interval_opt->count() > 0) a.interval = t.interval;
    if (t.engine_opt->count() > 0) a.engine = t.engine;
    if (const CLI::Option* u = cli::last_given(app, {t.micro_opt, t.milli_opt})) {
        a.unit = u == t.micro_opt ? kMicroseconds : kMilliseconds;
    }
    if (const CLI::Option* p = cli::last_given(app, {t.pin_opt, t.pin_temp_opt})) {
        a.pin = p == t.pin_opt ? Keep::Yes : Keep::No;
    }
}

}  // namespace

Result<ParsedTrace> parse_trace_args(int argc, const char* const* argv, const AddressCheck& exporter) {
    ParsedTrace out;
    CLI::App app;
    Table t;
    build_table(app, out.args, t, exporter);
    COIOMMU_ASSIGN_OR_RETURN(out.action, cli::parse(app, argc, argv));
    if (out.action == cli::Parsed::Run) finish(app, t, out.args);
    return out;
}

std::string trace_usage() {
    TraceArgs defaults;
    Table t;
    CLI::App app;
    build_table(app, defaults, t, AddressCheck{});
    return app.help();
}

}  // namespace coiommu::bpf
