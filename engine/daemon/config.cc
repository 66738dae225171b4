#include "engine/daemon/config.h"

#include <fcntl.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include "engine/base/cli.h"
#include "engine/base/quantity.h"
#include "engine/base/unique_fd.h"

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;

// Timeouts and the demo's run time are kept in milliseconds; 2^31 s (68 years) is "forever".
constexpr milliseconds kMaxDuration{int64_t{INT32_MAX} * 1000};

std::string_view trim(std::string_view s) {
    const auto b = s.find_first_not_of(" \t\r");
    if (b == std::string_view::npos) return {};
    const auto e = s.find_last_not_of(" \t\r");
    return s.substr(b, e - b + 1);
}

std::vector<std::string_view> split_list(std::string_view v) {
    std::vector<std::string_view> out;
    while (!v.empty()) {
        const auto comma = v.find(',');
        const auto item = trim(v.substr(0, comma));
        if (!item.empty()) out.push_back(item);
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
    }
    return out;
}

template <class Range>
std::string join(const Range& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) out += ',';
        out += fmt::format("{}", item);
    }
    return out;
}

template <class E>
struct Word {
    std::string_view text;
    E value;
};
constexpr Word<TracingMode> kTracingModes[] = {{"auto", TracingMode::Auto}, {"off", TracingMode::Off}};
constexpr Word<PriorityPrefix> kPriorityPrefixes[] = {
    {"auto", PriorityPrefix::Auto}, {"on", PriorityPrefix::On}, {"off", PriorityPrefix::Off}};

template <class E, size_t N>
Status set_word(std::string_view what, std::string_view v, const Word<E> (&words)[N], E& out) {
    for (const Word<E>& w : words) {
        if (w.text == v) {
            out = w.value;
            return ok();
        }
    }
    std::string texts;
    for (const Word<E>& w : words) texts += fmt::format("{}{}", texts.empty() ? "" : ", ", w.text);
    return make_error(EINVAL, fmt::format("{}: '{}' is not one of {}", what, v, texts));
}

template <class E, size_t N>
std::string word_of(const Word<E> (&words)[N], E v) {
    for (const Word<E>& w : words) {
        if (w.value == v) return std::string(w.text);
    }
    return "?";
}

// A duration of the shared grammar (a bare number is seconds), to the millisecond.
Result<milliseconds> parse_ms(std::string_view what, std::string_view v) {
    COIOMMU_ASSIGN_OR_RETURN(const auto d, parse_duration(what, v, BareUnit::Seconds));
    const auto ms = std::chrono::duration_cast<milliseconds>(d);
    if (ms != d) return make_error(EINVAL, fmt::format("{}: '{}' is finer than 1ms", what, v));
    if (ms > kMaxDuration) return make_error(EINVAL, fmt::format("{}: '{}' is too long", what, v));
    return ms;
}

Status set_timeout(std::string_view what, std::string_view v, milliseconds& out) {
    COIOMMU_ASSIGN_OR_RETURN(const auto d, parse_ms(what, v));
    if (d.count() == 0) return make_error(EINVAL, fmt::format("{}: must be above 0", what));
    out = d;
    return ok();
}

Status set_socket(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    if (value.empty()) return make_error(EINVAL, fmt::format("{}: empty path", what));
    if (value.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return make_error(EINVAL, fmt::format("{}: '{}' is longer than {} bytes (sun_path)", what, value,
                                              sizeof(sockaddr_un{}.sun_path) - 1));
    }
    cfg.socket_path = std::string(value);
    return ok();
}

Status set_allowed_uids(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    std::vector<uid_t> uids;
    for (auto item : split_list(value)) {
        auto uid = item == "root" ? Result<uint64_t>(0) : parse_u64_in(what, item, 0, UINT32_MAX - 1);
        if (!uid) return make_error(EINVAL, fmt::format("{}: '{}' is not a uid", what, item));
        uids.push_back(static_cast<uid_t>(*uid));
    }
    if (uids.empty()) return make_error(EINVAL, fmt::format("{}: empty list", what));
    cfg.allowed_uids = std::move(uids);
    return ok();
}

Status set_max_sessions(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64_in(what, value, 1, kMaxSessionsLimit));
    cfg.max_sessions = static_cast<uint32_t>(n);
    return ok();
}

// Above max_sessions it caps nothing; that is allowed (the two may be set in either order).
Status set_max_sessions_per_uid(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64_in(what, value, 0, kMaxSessionsLimit));
    cfg.max_sessions_per_uid = static_cast<uint32_t>(n);
    return ok();
}

Status set_max_pending(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64_in(what, value, 1, kMaxPendingLimit));
    cfg.max_pending = static_cast<uint32_t>(n);
    return ok();
}

// `auto` (0: derived from RLIMIT_NOFILE when the server starts) or a number of fds; below a
// session's own base charge every Hello would be refused.
Status set_fd_budget(std::string_view what, std::string_view value, uint64_t& out) {
    if (value == "auto") {
        out = 0;
        return ok();
    }
    auto n = parse_u64_in(what, value, kSessionBaseFds, kMaxFdsLimit);
    if (!n) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not auto or a number of fds {}..{}", what, value,
                                              kSessionBaseFds, kMaxFdsLimit));
    }
    out = *n;
    return ok();
}

std::string show_fd_budget(uint64_t v) { return v == 0 ? std::string("auto") : std::to_string(v); }

// Checked here, over the engine defaults, so that an error names the file's line or the flag;
// finalize() parses the options again over the mode's defaults.
Status set_engine(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    if (auto e = workers::parse_engine_options(value); !e) return coiommu::unexpected(with_context(e.error(), what));
    cfg.engine_opts = std::string(value);
    return ok();
}

Status set_backends(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    std::vector<std::string> backends;
    for (auto item : split_list(value)) {
        if (item != "vfio" && item != "iommufd" && item != "fake" && item != "null") {
            return make_error(EINVAL, fmt::format("{}: unknown backend '{}' (vfio, iommufd, fake, null)", what, item));
        }
        backends.emplace_back(item);
    }
    if (backends.empty()) return make_error(EINVAL, fmt::format("{}: empty list", what));
    cfg.backends = std::move(backends);
    return ok();
}

Status set_max_guest_memory(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_size(what, value));
    if (n < (uint64_t{1} << 20) || n > (uint64_t{1} << 48)) {
        return make_error(EINVAL, fmt::format("{}: {} is outside 1M..256T", what, value));
    }
    cfg.max_guest_memory = n;
    return ok();
}

Status set_metrics_address(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    if (value.empty()) return make_error(EINVAL, fmt::format("{}: empty (use 'none' to disable)", what));
    cfg.metrics_address = std::string(value);
    return ok();
}

Status set_log_level(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    if (!log::parse_level(value, &cfg.log_level)) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not debug, info, warn, error or off", what, value));
    }
    return ok();
}

Status set_demo_vcpus(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64_in(what, value, 1, 64));
    cfg.demo_vcpus = static_cast<uint32_t>(n);
    return ok();
}

Status set_demo_ram(DaemonConfig& cfg, std::string_view what, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_size(what, value));
    if (n < (uint64_t{64} << 20) || n > (uint64_t{64} << 30) || n % 4096 != 0) {
        return make_error(EINVAL, fmt::format("{}: {} is outside 64M..64G or not page aligned", what, value));
    }
    cfg.demo_ram = n;
    return ok();
}

// One key of the file and (as --key-with-dashes) of the command line. `set` parses, validates
// and stores a value; `what` names the key in errors (the file's spelling, or the flag). `show`
// prints the current value the way the key reads it, for --help's defaults ("" shows none).
struct Key {
    std::string_view name;
    std::string_view flags;  // "" = --name with '-' for '_'; else every flag, the first named in errors
    std::string_view type;   // the value's grammar, as --help shows it
    std::string_view group;
    std::string_view help;
    Status (*set)(DaemonConfig&, std::string_view what, std::string_view value);
    std::string (*show)(const DaemonConfig&);
};

constexpr std::string_view kService = "Service";
constexpr std::string_view kObservability = "Observability";
constexpr std::string_view kDemo = "Demo (--demo; accepted and ignored in service mode)";

constexpr Key kKeys[] = {
    {"socket", "", "PATH", kService, "the VMM socket (Unix SOCK_SEQPACKET), created mode 0600", set_socket,
     [](const DaemonConfig& c) { return c.socket_path; }},
    {"allowed_uids", "", "LIST", kService,
     "uids (or root) whose VMMs may connect (SO_PEERCRED);\ndefault: this process's uid, and root", set_allowed_uids,
     [](const DaemonConfig& c) { return join(c.allowed_uids); }},
    {"max_sessions", "", "N", kService, "concurrent VMs, 1..4096; more are refused with EBUSY", set_max_sessions,
     [](const DaemonConfig& c) { return std::to_string(c.max_sessions); }},
    {"max_sessions_per_uid", "", "N", kService,
     "sessions of one uid (SO_PEERCRED), 0..4096; more are refused\nwith EBUSY; 0: no cap but max_sessions",
     set_max_sessions_per_uid, [](const DaemonConfig& c) { return std::to_string(c.max_sessions_per_uid); }},
    {"max_pending", "", "N", kService,
     "connections waiting for their Hello, 1..4096 (they take no\nsession); one more closes the oldest (EBUSY)",
     set_max_pending, [](const DaemonConfig& c) { return std::to_string(c.max_pending); }},
    {"max_fds_per_session", "", "N|auto", kService,
     "fds one session may make the daemon hold (memfds, 2 per vCPU,\nbackend, ...); more: EMFILE. auto: every VM "
     "the protocol\nallows, within RLIMIT_NOFILE - max_pending - 128",
     [](DaemonConfig& c, std::string_view what, std::string_view v) {
         return set_fd_budget(what, v, c.max_fds_per_session);
     },
     [](const DaemonConfig& c) { return show_fd_budget(c.max_fds_per_session); }},
    {"max_fds_per_uid", "", "N|auto", kService,
     "fds the sessions of one uid (SO_PEERCRED) may hold together;\nmore: EMFILE. auto: RLIMIT_NOFILE - "
     "max_pending - 128",
     [](DaemonConfig& c, std::string_view what, std::string_view v) {
         return set_fd_budget(what, v, c.max_fds_per_uid);
     },
     [](const DaemonConfig& c) { return show_fd_budget(c.max_fds_per_uid); }},
    {"hello_timeout", "", "DURATION", kService, "a connection must send its Hello within this; above 0",
     [](DaemonConfig& c, std::string_view what, std::string_view v) { return set_timeout(what, v, c.hello_timeout); },
     [](const DaemonConfig& c) { return format_duration(c.hello_timeout); }},
    {"setup_timeout", "", "DURATION", kService, "a VMM must finish setting up its session within this; above 0",
     [](DaemonConfig& c, std::string_view what, std::string_view v) { return set_timeout(what, v, c.setup_timeout); },
     [](const DaemonConfig& c) { return format_duration(c.setup_timeout); }},
    {"io_timeout", "", "DURATION", kService, "a reply the VMM does not read within this closes it; above 0",
     [](DaemonConfig& c, std::string_view what, std::string_view v) { return set_timeout(what, v, c.io_timeout); },
     [](const DaemonConfig& c) { return format_duration(c.io_timeout); }},
    {"engine", "--engine,--engine-opts", "OPTS", kService,
     "the pin engine's options, name=value,... (ENGINE OPTIONS\nbelow); default: the engine defaults", set_engine,
     [](const DaemonConfig& c) { return c.engine_opts; }},
    {"backends", "", "LIST", kService, "the DMA backends VMMs may choose: vfio, iommufd, fake, null", set_backends,
     [](const DaemonConfig& c) { return join(c.backends); }},
    {"max_guest_memory", "", "SIZE", kService, "the highest guest-physical address a VM may register, 1M..256T",
     set_max_guest_memory, [](const DaemonConfig& c) { return format_size(c.max_guest_memory); }},
    {"metrics_address", "", "ADDR", kObservability, "Prometheus endpoint ipv4:port or [ipv6]:port, or none",
     set_metrics_address, [](const DaemonConfig& c) { return c.metrics_address; }},
    {"tracing", "", "auto|off", kObservability,
     "attach the BPF VFIO DMA tracer and the engine's USDT probes\nwhen permitted (root or CAP_BPF+CAP_PERFMON)",
     [](DaemonConfig& c, std::string_view what, std::string_view v) {
         return set_word(what, v, kTracingModes, c.tracing);
     },
     [](const DaemonConfig& c) { return word_of(kTracingModes, c.tracing); }},
    {"log_level", "", "LEVEL", kObservability, "the least severe messages logged: debug, info, warn, error or off",
     set_log_level, [](const DaemonConfig& c) { return std::string(log::level_name(c.log_level)); }},
    {"log_priority_prefix", "", "auto|on|off", kObservability,
     "<N> syslog priority prefixes on stderr for journald;\nauto: when JOURNAL_STREAM is set",
     [](DaemonConfig& c, std::string_view what, std::string_view v) {
         return set_word(what, v, kPriorityPrefixes, c.priority_prefix);
     },
     [](const DaemonConfig& c) { return word_of(kPriorityPrefixes, c.priority_prefix); }},
    {"duration", "", "DURATION", kDemo, "run time of the demo; 0: until SIGINT/SIGTERM",
     [](DaemonConfig& c, std::string_view what, std::string_view v) -> Status {
         COIOMMU_ASSIGN_OR_RETURN(c.duration, parse_ms(what, v));
         return ok();
     },
     [](const DaemonConfig& c) { return format_duration(c.duration); }},
    {"demo_vcpus", "--vcpus,--demo-vcpus", "N", kDemo, "vCPUs of the emulated VM, 1..64", set_demo_vcpus,
     [](const DaemonConfig& c) { return std::to_string(c.demo_vcpus); }},
    {"demo_ram", "--ram,--demo-ram", "SIZE", kDemo, "guest RAM of the emulated VM, 64M..64G, a multiple of 4096",
     set_demo_ram, [](const DaemonConfig& c) { return format_size(c.demo_ram); }},
};

const Key* find_key(std::string_view name) {
    for (const Key& k : kKeys) {
        if (k.name == name) return &k;
    }
    return nullptr;
}

// The flags of a key for CLI11 ("--max-sessions", "--vcpus,--demo-vcpus").
std::string flags_of(const Key& k) {
    if (!k.flags.empty()) return std::string(k.flags);
    std::string flag = "--" + std::string(k.name);
    std::replace(flag.begin(), flag.end(), '_', '-');
    return flag;
}

Result<std::string> read_file(const std::string& path) {
    const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return make_error(errno, fmt::format("config file {}", path));
    std::string text;
    char buf[4096];
    while (true) {
        const ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errno, fmt::format("config file {}", path));
        if (n == 0) return text;
        text.append(buf, static_cast<size_t>(n));
    }
}

}  // namespace

workers::EngineConfig demo_engine_defaults() {
    workers::EngineConfig c;
    c.unpin_policy = workers::UnpinPolicy::Lru;
    c.unpin_interval = std::chrono::seconds(1);
    c.unpin_gen_threshold = 4;
    return c;
}

uint64_t features_for(const std::vector<std::string>& backends) {
    // Resumable sessions are always offered: a VMM opts in by asking for them in Hello.
    uint64_t f = proto::kFeatureResume;
    for (const auto& b : backends) {
        if (b == "vfio") f |= proto::kFeatureVfioBackend;
        if (b == "iommufd") f |= proto::kFeatureIommufdBackend;
        if (b == "fake") f |= proto::kFeatureFakeBackend | proto::kFeatureQueryMapped;
        if (b == "null") f |= proto::kFeatureNullBackend;
    }
    return f;
}

ServerOptions DaemonConfig::server_options() const {
    ServerOptions o;
    o.socket_path = socket_path;
    o.allowed_uids = allowed_uids;
    if (o.allowed_uids.empty()) {
        o.allowed_uids.push_back(::geteuid());
        if (::geteuid() != 0) o.allowed_uids.push_back(0);
    }
    o.max_sessions = max_sessions;
    o.max_sessions_per_uid = max_sessions_per_uid;
    o.max_pending = max_pending;
    o.max_fds_per_session = max_fds_per_session;
    o.max_fds_per_uid = max_fds_per_uid;
    o.hello_timeout = hello_timeout;
    o.limits.setup_timeout = setup_timeout;
    o.limits.io_timeout = io_timeout;
    o.policy.engine = engine;
    o.policy.features = features_for(backends);
    o.policy.max_guest_end = max_guest_memory;
    return o;
}

std::string_view closest_key(std::string_view key) {
    std::vector<std::string_view> names;
    for (const Key& k : kKeys) names.push_back(k.name);
    return closest_word(key, names);
}

Status apply_option(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    if (const Key* k = find_key(key)) return k->set(cfg, k->name, trim(value));
    if (const auto near = closest_key(key); !near.empty()) {
        return make_error(EINVAL, fmt::format("unknown key '{}' (did you mean '{}'?)", key, near));
    }
    return make_error(EINVAL, fmt::format("unknown key '{}'", key));
}

Status apply_config_text(DaemonConfig& cfg, std::string_view text, std::string_view origin) {
    uint32_t line_no = 0;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        ++line_no;
        if (const auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
        line = trim(line);
        if (line.empty()) continue;
        const auto eq = line.find('=');
        if (eq == std::string_view::npos) {
            return make_error(EINVAL, fmt::format("{}:{}: expected 'key = value', got '{}'", origin, line_no, line));
        }
        const auto key = trim(line.substr(0, eq));
        if (auto st = apply_option(cfg, key, line.substr(eq + 1)); !st) {
            return coiommu::unexpected(with_context(st.error(), fmt::format("{}:{}", origin, line_no)));
        }
    }
    return ok();
}

Status load_config_file(DaemonConfig& cfg, const std::string& path) {
    COIOMMU_ASSIGN_OR_RETURN(const std::string text, read_file(path));
    cfg.config_path = path;
    return apply_config_text(cfg, text, path);
}

Status finalize(DaemonConfig& cfg) {
    const workers::EngineConfig base = cfg.mode == Mode::Demo ? demo_engine_defaults() : workers::EngineConfig{};
    auto e = workers::parse_engine_options(cfg.engine_opts, base);
    if (!e) return coiommu::unexpected(with_context(e.error(), "engine"));
    cfg.engine = *e;
    return ok();
}

namespace {

constexpr std::string_view kDescription =
    "coiommud: pins guest memory on demand for VFIO passthrough (CoIOMMU), one engine per VM.\n\n"
    "  coiommud [--config FILE] [--KEY VALUE ...]   serve VMMs on a Unix socket\n"
    "  coiommud --demo [--duration 20s] [...]       an emulated VM, metrics and tracing, in one process\n";

constexpr std::string_view kFooter =
    "Every option but --config, --demo, --help and --version is also a key of the config file: the\n"
    "flag's name with '_' for '-' (--vcpus, --ram and --engine-opts are demo_vcpus, demo_ram and\n"
    "engine), in `key = value` lines; '#' starts a comment, the last occurrence wins. The --config\n"
    "files are read first, in order; flags override them wherever they appear.\n"
    "Durations: 1.5s, 500ms, 2m, 1h (a bare number is seconds). Sizes: 4096, 64K, 1.5G, 512MiB.\n\n"
    "ENGINE OPTIONS (--engine name=value,...; each name at most once; --demo's defaults are\n"
    "unpin_policy=lru, unpin_interval=1s, unpin_gen_threshold=4):\n";

constexpr std::string_view kSignals =
    "\nSignals: SIGTERM/SIGINT stop the daemon in order: no new sessions, every engine unmaps what it\n"
    "mapped, then exit 0. SIGHUP re-reads --config (log keys apply at once; other changed keys are\n"
    "named as needing a restart). Under systemd: socket activation ($LISTEN_FDS, coiommud.socket) and\n"
    "Type=notify readiness ($NOTIFY_SOCKET). The protocol: engine/daemon/PROTOCOL.md.";

// Rejects "--socket --help": CLI11 2.1 takes the next argument as the value even when it is an
// option, and no key's value starts with '-'.
const CLI::Validator kNotAnOption(
    [](std::string& v) { return v.starts_with('-') ? fmt::format("needs a value, got the option '{}'", v) : ""; }, "",
    "not an option");

void add_key(CLI::App& app, DaemonConfig& cfg, const Key& k) {
    const std::string names = flags_of(k);
    const std::string flag = names.substr(0, names.find(','));
    auto set = [&cfg, &k, flag](const std::string& v) {
        if (auto st = k.set(cfg, flag, trim(v)); !st) throw CLI::ValidationError(st.error().context);
    };
    app.add_option_function<std::string>(names, set, std::string(k.help))
        ->type_name(std::string(k.type))
        ->default_str(k.show(cfg))
        ->group(std::string(k.group))
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
        ->check(kNotAnOption);
}

// Callbacks run in the order the options are added: --version, then --config (so the files come
// before every flag), then the keys. CLI11 2.1 runs them all before it looks at --help, so --help
// is a flag of its own that ends the parse where it appears: help even when another flag or the
// file is wrong.
void build_command_line(CLI::App& app, DaemonConfig& cfg, Status& file_status) {
    app.name("coiommud");
    app.description(std::string(kDescription));
    app.footer(fmt::format("{}{}{}", kFooter, workers::engine_options_help(), kSignals));
    app.get_formatter()->column_width(36);
    app.set_help_flag();
    app.add_flag_callback(
           "-h,--help", [] { throw CLI::CallForHelp(); }, "print this help, then exit")
        ->trigger_on_parse();
    cli::add_version(app, "coiommud");
    auto read_files = [&cfg, &file_status](const std::vector<std::string>& paths) {
        for (const std::string& path : paths) {
            file_status = load_config_file(cfg, path);
            if (!file_status) throw CLI::ValidationError("--config", file_status.error().message());
        }
    };
    app.add_option_function<std::vector<std::string>>("--config", read_files,
                                                      "read KEY = VALUE lines from FILE first (repeatable)")
        ->type_name("FILE")
        ->allow_extra_args(false)
        ->check(kNotAnOption);
    app.add_flag_callback(
        "--demo", [&cfg] { cfg.mode = Mode::Demo; }, "run the embedded emulated VM instead");
    for (const Key& k : kKeys) add_key(app, cfg, k);
}

// argv for CLI11: the program name, and '_' in a flag's name read as '-' (--max_sessions).
std::vector<std::string> argv_words(const std::vector<std::string_view>& args) {
    std::vector<std::string> words{"coiommud"};
    for (const std::string_view a : args) {
        std::string w(a);
        if (w.starts_with("--")) {
            const auto name_end = static_cast<std::ptrdiff_t>(std::min(w.find('='), w.size()));
            std::replace(w.begin(), w.begin() + name_end, '_', '-');
        }
        words.push_back(std::move(w));
    }
    return words;
}

}  // namespace

Result<ParsedArgs> parse_args(const std::vector<std::string_view>& args) {
    ParsedArgs out;
    CLI::App app;
    Status file_status = ok();
    build_command_line(app, out.config, file_status);
    const std::vector<std::string> words = argv_words(args);
    std::vector<const char*> argv;
    for (const std::string& w : words) argv.push_back(w.c_str());
    auto request = cli::parse_quietly(app, static_cast<int>(argv.size()), argv.data());
    if (!file_status) return coiommu::unexpected(file_status.error());  // keeps the file's errno
    if (!request) return coiommu::unexpected(request.error());
    switch (*request) {
        case cli::Request::Help: out.action = CliAction::Help; return out;
        case cli::Request::Version: out.action = CliAction::Version; return out;
        case cli::Request::Run: break;
    }
    COIOMMU_TRY(finalize(out.config));
    return out;
}

std::string usage() {
    DaemonConfig defaults;
    CLI::App app;
    Status unused = ok();
    build_command_line(app, defaults, unused);
    return app.help();
}

}  // namespace coiommu::daemon
