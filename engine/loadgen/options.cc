#include "engine/loadgen/options.h"

#include <cerrno>
#include <span>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/base/cli.h"
#include "engine/base/cli_values.h"
#include "engine/base/quantity.h"
#include "engine/loadgen/guest_layout.h"

namespace coiommu::loadgen {
namespace {

using std::chrono::nanoseconds;
using namespace std::chrono_literals;

template <class... Args>
coiommu::unexpected<Error> bad(fmt::format_string<Args...> f, Args&&... args) {
    return make_error(EINVAL, fmt::format(f, std::forward<Args>(args)...));
}

constexpr workers::Variant kAllVariants[] = {workers::Variant::Fast, workers::Variant::Seed};
constexpr BackendKind kAllBackends[] = {BackendKind::Fake, BackendKind::Null, BackendKind::Vfio, BackendKind::Iommufd};
constexpr FakeLatency kAllLatencies[] = {FakeLatency::Typical, FakeLatency::None};

constexpr uint64_t kMaxLifetimeOps = 65535;
constexpr nanoseconds kMinDuration = 100ms;
constexpr nanoseconds kMaxDuration = 24h;  // also the longest timed --lifetime and --balloon-interval
constexpr nanoseconds kMaxThink = 1000s;
constexpr nanoseconds kMinBalloonInterval = 1ms;
constexpr double kMaxRate = 1e9;
constexpr double kMaxZipfS = 100;

// The name of an option value in the table ("ring", "seed", "vfio"): the to_string of
// loadgen:: and, by ADL, of workers::.
constexpr auto kNameOf = [](auto v) { return to_string(v); };

template <class T, size_t N>
std::span<const T> all(const T (&values)[N]) {
    return std::span<const T>(values);
}

constexpr std::string_view kDescription =
    "Emulates a guest's CoIOMMU driver on N vCPU threads doing DMA maps over a workload, against the pin\n"
    "engine in this process (or a running coiommud: --connect), and reports pin throughput, latency and\n"
    "pinned memory. With several engines/strategies/workloads it runs each cell of the matrix with the\n"
    "same seed and compares them.";

constexpr std::string_view kFooter =
    "Durations: 500ms, 1.5s, 2m, 250us (a bare number is seconds; microseconds for --think-us).\n"
    "Sizes: 4096, 64K, 1.5G, 512MiB (binary units). Lists: comma-separated, each item at most once.\n"
    "Exit status: 0 all runs passed; 1 a run failed (safety invariant or a final check) or could not\n"
    "be set up; 2 bad command line.\n\n"
    "ENGINE OPTIONS (--engine-opts name=value,...; each name at most once; the load generator's\n"
    "defaults):\n";

// --ram: a size (the shared grammar) that the guest layout can hold.
CLI::Option* add_ram(CLI::App& app, uint64_t& out) {
    const CLI::Validator guest_ram(
        [](std::string& text) -> std::string {
            auto n = parse_size("--ram", text);
            if (!n) return "";  // malformed: add_size's parse says why
            if (*n >= kMinRamBytes && *n <= kMaxRamBytes && (*n & (kPageSize - 1)) == 0) return "";
            return fmt::format("'{}' is not a multiple of 4K between {} and {}", text, format_size(kMinRamBytes),
                               format_size(kMaxRamBytes));
        },
        "", "guest RAM");
    const std::string help =
        fmt::format("guest RAM, a multiple of 4K, {}..{}", format_size(kMinRamBytes), format_size(kMaxRamBytes));
    return cli::add_size(app, "--ram", out, help)->check(cli::kValueWord)->check(guest_ram);
}

// --lifetime N|T: a bare integer is an operation count, a number with a unit is a time.
CLI::Option* add_lifetime(CLI::App& app, Lifetime& out) {
    auto parse = [&out](const std::string& text) {
        const bool bare = !text.empty() && text.back() >= '0' && text.back() <= '9';
        if (bare && parse_u64("--lifetime", text)) {
            auto n = parse_u64_in("--lifetime", text, 0, kMaxLifetimeOps);
            if (!n) throw CLI::ValidationError(n.error().context);
            out = Lifetime{*n, 0ns};
            return;
        }
        auto t = parse_duration("--lifetime", text, BareUnit::Seconds);
        if (bare || !t || t->count() == 0) {
            throw CLI::ValidationError(
                fmt::format("--lifetime: '{}' is neither an operation count nor a time such as 50us", text));
        }
        if (*t > kMaxDuration) {
            throw CLI::ValidationError(
                fmt::format("--lifetime: '{}' is longer than {}", text, format_duration(kMaxDuration)));
        }
        out = Lifetime{0, *t};
    };
    const std::string help = fmt::format(
        "hold each buffer for N later operations (0..{}; 0 = unmap\n"
        "right after the DMA), or for a time T such as 50us or 2ms",
        kMaxLifetimeOps);
    auto* opt = app.add_option_function<std::string>("--lifetime", parse, help);
    opt->type_name("N|T")->default_str(out.timed() ? format_duration(out.time) : std::to_string(out.ops));
    return opt->check(cli::kValueWord);
}

CLI::Option* add_log_level(CLI::App& app, log::Level& out) {
    auto parse = [&out](const std::string& text) {
        if (!log::parse_level(text, &out)) {
            throw CLI::ValidationError(fmt::format("--log-level: '{}' is not one of debug|info|warn|error|off", text));
        }
    };
    auto* opt =
        app.add_option_function<std::string>("--log-level", parse, "level of the engine's log (and ours) on stderr");
    opt->type_name("debug|info|warn|error|off")->default_str(std::string(log::level_name(out)));
    return opt->check(cli::kValueWord);
}

void add_workload_options(CLI::App& app, LoadOptions& o) {
    const std::string g = "workload";
    cli::add_list(app, "--workload", o.workloads, all(kAllWorkloads), kNameOf, "the workloads")->group(g);
    cli::add_integer(app, "--vcpus", o.vcpus, 1, kMaxVcpusFlag, "emulated vCPU threads")->group(g);
    add_ram(app, o.ram_bytes)->group(g);
    cli::add_integer(app, "--buffer-pages", o.buffer_pages, 1, kMaxBufferPages, "pages per DMA buffer")->group(g);
    add_lifetime(app, o.lifetime)->group(g);
    cli::add_duration_in(app, "--think-us", o.think, BareUnit::Microseconds, 0ns, kMaxThink,
                         "pause after each operation, per vCPU (a bare number\nis microseconds)")
        ->group(g);
    cli::add_decimal(app, "--rate", o.rate, 0, kMaxRate, "target operations/s over all vCPUs (instead of\n--think-us)")
        ->default_str("")
        ->group(g);
    cli::add_duration_in(app, "--duration", o.duration, BareUnit::Seconds, kMinDuration, kMaxDuration,
                         "length of each run (a bare number is seconds)")
        ->group(g);
    cli::add_integer(app, "--seed", o.seed, 0, UINT64_MAX, "seed of every random choice")->group(g);
    cli::add_decimal(app, "--zipf-s", o.zipf_s, 0, kMaxZipfS, "Zipf exponent of the zipf workload")->group(g);
    cli::add_integer(app, "--ring-buffers", o.ring_buffers, 1, uint64_t{1} << 20,
                     "buffers per vCPU ring (ring workload)")
        ->group(g);
    cli::add_integer(app, "--balloon-pages", o.balloon_pages, 1, uint64_t{1} << 24,
                     "pages per balloon inflation (balloon, mix)")
        ->group(g);
    cli::add_duration_in(app, "--balloon-interval", o.balloon_interval, BareUnit::Seconds, kMinBalloonInterval,
                         kMaxDuration, "time between balloon inflations")
        ->group(g);
}

void add_compare_options(CLI::App& app, LoadOptions& o) {
    const std::string g = "what to compare";
    cli::add_list(app, "--engine", o.engines, all(kAllVariants), kNameOf,
                  "the pin engines of the coiommu strategy: fast (the\n"
                  "throughput engine), seed (crosvm's serial algorithm)")
        ->group(g);
    cli::add_list(app, "--strategy", o.strategies, all(kAllStrategies), kNameOf,
                  "the strategies:\n"
                  "  coiommu: CoIOMMU DTT + precise pin requests, lazy unpinning\n"
                  "  strict:  virtio-iommu, a MAP/UNMAP request per DMA map/unmap\n"
                  "  static:  all guest RAM mapped up front")
        ->group(g);
    cli::add_switch(app, "--compare", "shorthand for --engine fast,seed\n--strategy coiommu,strict,static")->group(g);
    cli::add_text(app, "--engine-opts", o.engine_opts, "K=V[,K=V..]",
                  "engine options, as coiommud's --engine (ENGINE OPTIONS below);\n"
                  "a variant= must agree with --engine")
        ->group(g);
}

void add_backend_options(CLI::App& app, LoadOptions& o) {
    const std::string g = "DMA backend";
    cli::add_choice(app, "--backend", o.backend, all(kAllBackends), kNameOf,
                    "fake: a model of a VFIO type1 container; null: accepts\n"
                    "every map; vfio: a real type1 container (--vfio-group);\n"
                    "iommufd: a real IOAS of /dev/iommu (--vfio-device)")
        ->group(g);
    cli::add_choice(app, "--latency", o.latency, all(kAllLatencies), kNameOf, "latency model of the fake backend")
        ->group(g);
    cli::add_integer(app, "--entry-limit", o.entry_limit, 1, uint64_t{1} << 32,
                     "dma_entry_limit of the fake/null container")
        ->group(g);
    cli::add_text(app, "--vfio-group", o.vfio_group, "PATH", "the VFIO group of --backend vfio, e.g. /dev/vfio/12")
        ->group(g);
    cli::add_text(app, "--vfio-device", o.vfio_device, "PATH",
                  "the VFIO device cdev of --backend iommufd, e.g.\n/dev/vfio/devices/vfio0 (Linux >= 6.6)")
        ->group(g);
    cli::add_text(app, "--connect", o.connect_path, "SOCKET",
                  "drive a running coiommud at SOCKET as a VMM would (guest\n"
                  "RAM memfds, trigger eventfds, BAR0 writes, balloon requests\n"
                  "over its protocol) instead of an in-process engine. The\n"
                  "daemon's engine serves, on its fake (--latency,\n"
                  "--entry-limit) or null backend, or on a real container:\n"
                  "with --backend vfio we set up the container of\n"
                  "--vfio-group (type1v2) and hand it over. Only the coiommu\n"
                  "strategy; not with --engine, --compare, --engine-opts.\n"
                  "The safety invariant is checked through the daemon's\n"
                  "QueryMapped (fake backend; skipped otherwise)")
        ->group(g);
    cli::add_switch(app, "--reconnect", o.reconnect,
                    "with --connect: when the daemon dies or restarts, resume\n"
                    "the session (the fake backend's mappings are kept in a\n"
                    "memfd of ours, as a container's outlive the daemon) and\n"
                    "go on; at each loss the daemon's host record is checked\n"
                    "against the container. Without it a lost daemon ends the\n"
                    "run at once (exit 1)")
        ->group(g);
    cli::add_duration_in(app, "--reconnect-timeout", o.reconnect_timeout, BareUnit::Seconds, nanoseconds(10ms),
                         kMaxDuration,
                         "with --reconnect: give up when the daemon has not\n"
                         "been back for this long (a bare number is seconds)")
        ->group(g);
}

void add_output_options(CLI::App& app, LoadOptions& o) {
    const std::string g = "output";
    cli::add_text(app, "--json", o.json_path, "FILE", "every figure of every run as JSON")->group(g);
    cli::add_text(app, "--plot", o.plot_path, "FILE.png",
                  "pinned memory and latency over time, comparison bars (gnuplot)")
        ->group(g);
    cli::add_switch(app, "--progress", o.progress, "progress line once a second even when stdout is not a TTY")
        ->group(g);
    cli::add_switch(app, "--quiet", o.quiet, "no progress line and no summary")->group(g);
    cli::add_switch(app, "--table", o.table_only, "only the comparison table (no per-run summaries)")->group(g);
    add_log_level(app, o.log_level)->group(g);
}

// The option table. -h ends the parse where it appears; -V comes next: the callbacks run in the
// order of the table, so --version answers before any other value is parsed.
void build_table(CLI::App& app, LoadOptions& o) {
    app.name("coiommu-load");
    app.description(std::string(kDescription));
    app.footer(fmt::format("{}{}", kFooter, workers::engine_options_help(default_engine_config())));
    app.get_formatter()->column_width(34);
    cli::add_help(app);
    cli::add_version(app, "coiommu-load");
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // the last one wins
    add_workload_options(app, o);
    add_compare_options(app, o);
    add_backend_options(app, o);
    add_output_options(app, o);
}

// ---- the combinations the table cannot say -------------------------------------------------------

bool given(const CLI::App& app, const std::string& name) { return app.count(name) > 0; }

Status apply_compare(const CLI::App& app, LoadOptions& o) {
    if (given(app, "--think-us") && given(app, "--rate")) return bad("--think-us and --rate exclude each other");
    if (!given(app, "--compare")) return ok();
    if (given(app, "--engine") || given(app, "--strategy")) {
        return bad("--compare sets --engine and --strategy; give one or the other");
    }
    o.engines.assign(std::begin(kAllVariants), std::end(kAllVariants));
    o.strategies.assign(std::begin(kAllStrategies), std::end(kAllStrategies));
    return ok();
}

Status check_backend(const CLI::App& app, const LoadOptions& o) {
    if (o.backend == BackendKind::Vfio && o.vfio_group.empty()) {
        return bad("--backend vfio needs --vfio-group /dev/vfio/N");
    }
    if (o.backend != BackendKind::Vfio && !o.vfio_group.empty()) return bad("--vfio-group is only for --backend vfio");
    if (o.backend == BackendKind::Iommufd && o.vfio_device.empty()) {
        return bad("--backend iommufd needs --vfio-device /dev/vfio/devices/vfioN");
    }
    if (o.backend != BackendKind::Iommufd && !o.vfio_device.empty()) {
        return bad("--vfio-device is only for --backend iommufd");
    }
    if (o.backend != BackendKind::Fake && given(app, "--latency")) return bad("--latency is only for --backend fake");
    return ok();
}

Status check_connect(const CLI::App& app, const LoadOptions& o) {
    if (o.connect_path.empty()) return ok();
    if (given(app, "--compare") || given(app, "--engine")) {
        return bad("--connect: the daemon's engine serves; --engine and --compare do not apply");
    }
    if (!o.engine_opts.empty()) return bad("--connect: the daemon's engine serves; --engine-opts does not apply");
    for (StrategyKind s : o.strategies) {
        if (s != StrategyKind::Coiommu) return bad("--connect runs the coiommu strategy only");
    }
    return ok();
}

Status check_reconnect(const CLI::App& app, const LoadOptions& o) {
    if (o.connect_path.empty() && (o.reconnect || given(app, "--reconnect-timeout"))) {
        return bad("--reconnect and --reconnect-timeout are only for --connect");
    }
    if (!o.reconnect && given(app, "--reconnect-timeout")) return bad("--reconnect-timeout needs --reconnect");
    return ok();
}

// --engine-opts over the load defaults. The engine of each run is --engine's (run_once sets the
// variant per cell), so a variant= there is redundant when it names the one engine --engine runs
// and refused otherwise, rather than silently overridden. Whether the string sets variant= is
// read off the parser, not the text: parsed over a fast and over a seed base, the variants agree
// only when the string chose one.
Status apply_engine_opts(LoadOptions& o) {
    if (o.engine_opts.empty()) return ok();
    workers::EngineConfig base = default_engine_config();
    base.variant = workers::Variant::Fast;
    auto over_fast = workers::parse_engine_options(o.engine_opts, base);
    base.variant = workers::Variant::Seed;
    auto over_seed = workers::parse_engine_options(o.engine_opts, base);
    if (!over_fast) return bad("--engine-opts: {}", over_fast.error().context);
    if (!over_seed) return bad("--engine-opts: {}", over_seed.error().context);
    const workers::Variant chosen = over_fast->variant;
    if (chosen == over_seed->variant && o.engines != std::vector<workers::Variant>{chosen}) {
        std::string engines;
        for (workers::Variant e : o.engines) engines += fmt::format("{}{}", engines.empty() ? "" : ",", to_string(e));
        return bad("--engine-opts: variant={} contradicts the engines run ({}); choose them with --engine",
                   to_string(chosen), engines);
    }
    o.engine = *over_fast;
    return ok();
}

Status check_output(const LoadOptions& o) {
    if (o.progress && o.quiet) return bad("--progress and --quiet exclude each other");
    if (o.table_only && o.quiet) return bad("--table and --quiet exclude each other");
    return ok();
}

}  // namespace

std::string_view to_string(BackendKind k) {
    switch (k) {
        case BackendKind::Fake: return "fake";
        case BackendKind::Null: return "null";
        case BackendKind::Vfio: return "vfio";
        case BackendKind::Iommufd: return "iommufd";
    }
    return "?";
}

std::string_view to_string(FakeLatency l) { return l == FakeLatency::Typical ? "typical" : "none"; }

workers::EngineConfig default_engine_config() {
    workers::EngineConfig c;
    c.unpin_policy = workers::UnpinPolicy::Lru;
    c.unpin_interval = std::chrono::seconds(1);
    return c;
}

uint32_t LoadOptions::max_outstanding() const {
    if (lifetime.timed()) return kMaxTimedOutstanding;
    return static_cast<uint32_t>(lifetime.ops + 1);
}

std::string RunSpec::label() const {
    if (strategy == StrategyKind::Coiommu) {
        return fmt::format("{}/{}/{}", to_string(strategy), workers::to_string(engine), to_string(workload));
    }
    return fmt::format("{}/{}", to_string(strategy), to_string(workload));
}

std::vector<RunSpec> expand_matrix(const LoadOptions& o) {
    std::vector<RunSpec> out;
    for (WorkloadKind w : o.workloads) {
        for (StrategyKind s : o.strategies) {
            if (s == StrategyKind::Coiommu) {
                for (workers::Variant e : o.engines) out.push_back(RunSpec{w, s, e});
            } else {
                out.push_back(RunSpec{w, s, workers::Variant::Fast});
            }
        }
    }
    return out;
}

Result<ParsedCli> parse_cli(const std::vector<std::string_view>& args) {
    ParsedCli out;
    CLI::App app;
    build_table(app, out.options);
    std::vector<std::string> words{"coiommu-load"};
    words.insert(words.end(), args.begin(), args.end());
    std::vector<const char*> argv;
    for (const std::string& w : words) argv.push_back(w.c_str());
    COIOMMU_ASSIGN_OR_RETURN(const cli::Request request,
                             cli::parse_quietly(app, static_cast<int>(argv.size()), argv.data()));
    switch (request) {
        case cli::Request::Help: out.action = CliAction::Help; return out;
        case cli::Request::Version: out.action = CliAction::Version; return out;
        case cli::Request::Run: break;
    }
    LoadOptions& o = out.options;
    COIOMMU_TRY(apply_compare(app, o));
    COIOMMU_TRY(check_backend(app, o));
    COIOMMU_TRY(check_connect(app, o));
    COIOMMU_TRY(check_reconnect(app, o));
    COIOMMU_TRY(apply_engine_opts(o));
    COIOMMU_TRY(check_output(o));
    return out;
}

std::string usage() {
    LoadOptions defaults;
    CLI::App app;
    build_table(app, defaults);
    return app.help();
}

}  // namespace coiommu::loadgen
