#include "engine/daemon/config.h"

#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace coiommu::daemon {
namespace {

std::string_view trim(std::string_view s) {
    const auto b = s.find_first_not_of(" \t\r");
    if (b == std::string_view::npos) return {};
    const auto e = s.find_last_not_of(" \t\r");
    return s.substr(b, e - b + 1);
}

Result<uint64_t> parse_u64(std::string_view key, std::string_view v) {
    uint64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (v.empty() || ec != std::errc{} || end != v.data() + v.size()) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not an unsigned integer", key, v));
    }
    return out;
}

// "20", "20s", "500ms", "2m" (a bare number is seconds).
Result<std::chrono::milliseconds> parse_duration(std::string_view key, std::string_view v) {
    uint64_t unit_ms = 1000;
    std::string_view num = v;
    if (v.ends_with("ms")) {
        unit_ms = 1;
        num = v.substr(0, v.size() - 2);
    } else if (v.ends_with("s")) {
        num = v.substr(0, v.size() - 1);
    } else if (v.ends_with("m")) {
        unit_ms = 60'000;
        num = v.substr(0, v.size() - 1);
    } else if (v.ends_with("h")) {
        unit_ms = 3'600'000;
        num = v.substr(0, v.size() - 1);
    }
    auto n = parse_u64(key, num);
    if (!n) return make_error(EINVAL, fmt::format("{}: '{}' is not a duration (e.g. 20s, 500ms, 2m)", key, v));
    uint64_t ms = 0;
    if (__builtin_mul_overflow(*n, unit_ms, &ms) || ms > uint64_t{INT32_MAX} * 1000) {
        return make_error(EINVAL, fmt::format("{}: '{}' is too long", key, v));
    }
    return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

// "512M", "1G", "4096" (bytes; binary units K M G T).
Result<uint64_t> parse_size(std::string_view key, std::string_view v) {
    uint64_t shift = 0;
    std::string_view num = v;
    if (!v.empty()) {
        switch (v.back()) {
            case 'K':
            case 'k': shift = 10; break;
            case 'M':
            case 'm': shift = 20; break;
            case 'G':
            case 'g': shift = 30; break;
            case 'T':
            case 't': shift = 40; break;
            default: break;
        }
        if (shift != 0) num = v.substr(0, v.size() - 1);
    }
    auto n = parse_u64(key, num);
    if (!n) return make_error(EINVAL, fmt::format("{}: '{}' is not a size (e.g. 512M, 1G)", key, v));
    if (shift != 0 && *n > (UINT64_MAX >> shift)) return make_error(EINVAL, fmt::format("{}: '{}' overflows", key, v));
    return *n << shift;
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

}  // namespace

workers::EngineConfig demo_engine_defaults() {
    workers::EngineConfig c;
    c.unpin_policy = workers::UnpinPolicy::Lru;
    c.unpin_interval = std::chrono::seconds(1);
    c.unpin_gen_threshold = 4;
    return c;
}

uint64_t features_for(const std::vector<std::string>& backends) {
    uint64_t f = 0;
    for (const auto& b : backends) {
        if (b == "vfio") f |= proto::kFeatureVfioBackend;
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
    o.limits.setup_timeout = setup_timeout;
    o.limits.io_timeout = io_timeout;
    o.policy.engine = engine;
    o.policy.features = features_for(backends);
    o.policy.max_guest_end = max_guest_memory;
    return o;
}

namespace {

Status set_socket(DaemonConfig& cfg, std::string_view, std::string_view value) {
    if (value.empty()) return make_error(EINVAL, "socket: empty path");
    if (value.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return make_error(EINVAL, fmt::format("socket: '{}' is longer than {} bytes (sun_path)", value,
                                              sizeof(sockaddr_un{}.sun_path) - 1));
    }
    cfg.socket_path = std::string(value);
    return ok();
}

Status set_allowed_uids(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    cfg.allowed_uids.clear();
    for (auto item : split_list(value)) {
        auto uid = item == "root" ? Result<uint64_t>(0) : parse_u64(key, item);
        if (!uid || *uid > UINT32_MAX - 1)
            return make_error(EINVAL, fmt::format("allowed_uids: '{}' is not a uid", item));
        cfg.allowed_uids.push_back(static_cast<uid_t>(*uid));
    }
    if (cfg.allowed_uids.empty()) return make_error(EINVAL, "allowed_uids: empty list");
    return ok();
}

Status set_max_sessions(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64(key, value));
    if (n == 0 || n > kMaxSessionsLimit) {
        return make_error(EINVAL, fmt::format("max_sessions: {} is outside 1..{}", n, kMaxSessionsLimit));
    }
    cfg.max_sessions = static_cast<uint32_t>(n);
    return ok();
}

Status set_timeout(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const auto d, parse_duration(key, value));
    if (d.count() == 0) return make_error(EINVAL, fmt::format("{}: must be above 0", key));
    (key == "setup_timeout" ? cfg.setup_timeout : cfg.io_timeout) = d;
    return ok();
}

Status set_engine(DaemonConfig& cfg, std::string_view, std::string_view value) {
    cfg.engine_opts = std::string(value);
    return ok();
}

Status set_backends(DaemonConfig& cfg, std::string_view, std::string_view value) {
    cfg.backends.clear();
    for (auto item : split_list(value)) {
        if (item != "vfio" && item != "fake" && item != "null") {
            return make_error(EINVAL, fmt::format("backends: unknown backend '{}' (vfio, fake, null)", item));
        }
        cfg.backends.emplace_back(item);
    }
    if (cfg.backends.empty()) return make_error(EINVAL, "backends: empty list");
    return ok();
}

Status set_max_guest_memory(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_size(key, value));
    if (n < (uint64_t{1} << 20) || n > (uint64_t{1} << 48)) {
        return make_error(EINVAL, fmt::format("max_guest_memory: {} is outside 1M..256T", value));
    }
    cfg.max_guest_memory = n;
    return ok();
}

Status set_metrics_address(DaemonConfig& cfg, std::string_view, std::string_view value) {
    if (value.empty()) return make_error(EINVAL, "metrics_address: empty (use 'none' to disable)");
    cfg.metrics_address = std::string(value);
    return ok();
}

Status set_tracing(DaemonConfig& cfg, std::string_view, std::string_view value) {
    if (value == "auto") {
        cfg.tracing = TracingMode::Auto;
    } else if (value == "off") {
        cfg.tracing = TracingMode::Off;
    } else {
        return make_error(EINVAL, fmt::format("tracing: '{}' is not auto or off", value));
    }
    return ok();
}

Status set_log_level(DaemonConfig& cfg, std::string_view, std::string_view value) {
    if (!log::parse_level(value, &cfg.log_level)) {
        return make_error(EINVAL, fmt::format("log_level: '{}' is not debug, info, warn or error", value));
    }
    return ok();
}

Status set_log_priority_prefix(DaemonConfig& cfg, std::string_view, std::string_view value) {
    if (value == "auto") {
        cfg.priority_prefix = PriorityPrefix::Auto;
    } else if (value == "on") {
        cfg.priority_prefix = PriorityPrefix::On;
    } else if (value == "off") {
        cfg.priority_prefix = PriorityPrefix::Off;
    } else {
        return make_error(EINVAL, fmt::format("log_priority_prefix: '{}' is not auto, on or off", value));
    }
    return ok();
}

Status set_duration(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(cfg.duration, parse_duration(key, value));
    return ok();
}

Status set_demo_vcpus(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64(key, value));
    if (n == 0 || n > 64) return make_error(EINVAL, fmt::format("demo_vcpus: {} is outside 1..64", n));
    cfg.demo_vcpus = static_cast<uint32_t>(n);
    return ok();
}

Status set_demo_ram(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_size(key, value));
    if (n < (uint64_t{64} << 20) || n > (uint64_t{64} << 30) || n % 4096 != 0) {
        return make_error(EINVAL, fmt::format("demo_ram: {} is outside 64M..64G or not page aligned", value));
    }
    cfg.demo_ram = n;
    return ok();
}

using Setter = Status (*)(DaemonConfig&, std::string_view key, std::string_view value);
struct Key {
    std::string_view name;
    Setter set;
};
// Every key of the file and (as --key) of the command line.
constexpr Key kKeys[] = {
    {"socket", set_socket},
    {"allowed_uids", set_allowed_uids},
    {"max_sessions", set_max_sessions},
    {"setup_timeout", set_timeout},
    {"io_timeout", set_timeout},
    {"engine", set_engine},
    {"backends", set_backends},
    {"max_guest_memory", set_max_guest_memory},
    {"metrics_address", set_metrics_address},
    {"tracing", set_tracing},
    {"log_level", set_log_level},
    {"log_priority_prefix", set_log_priority_prefix},
    {"duration", set_duration},
    {"demo_vcpus", set_demo_vcpus},
    {"demo_ram", set_demo_ram},
};

// Levenshtein distance, for "did you mean" (keys are short: a small table is enough).
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

}  // namespace

std::string_view closest_key(std::string_view key) {
    std::string_view best;
    size_t best_d = 3;  // more than two edits away is not a typo
    for (const Key& k : kKeys) {
        if (const size_t d = edit_distance(key, k.name); d < best_d) {
            best = k.name;
            best_d = d;
        }
    }
    return best;
}

Status apply_option(DaemonConfig& cfg, std::string_view key, std::string_view value) {
    value = trim(value);
    for (const Key& k : kKeys) {
        if (k.name == key) return k.set(cfg, key, value);
    }
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
    std::ifstream in(path);
    if (!in) return make_error(errno != 0 ? errno : ENOENT, fmt::format("config file {}", path));
    std::stringstream ss;
    ss << in.rdbuf();
    cfg.config_path = path;
    return apply_config_text(cfg, ss.str(), path);
}

Status finalize(DaemonConfig& cfg) {
    const workers::EngineConfig base = cfg.mode == Mode::Demo ? demo_engine_defaults() : workers::EngineConfig{};
    auto e = workers::parse_engine_options(cfg.engine_opts, base);
    if (!e) return coiommu::unexpected(with_context(e.error(), "engine"));
    cfg.engine = *e;
    return ok();
}

Result<ParsedArgs> parse_args(const std::vector<std::string_view>& args) {
    ParsedArgs out;
    // Pass 1: --help/--version, --config and --demo (the mode picks the engine defaults).
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto a = args[i];
        if (a == "--help" || a == "-h") {
            out.action = CliAction::Help;
            return out;
        }
        if (a == "--version") {
            out.action = CliAction::Version;
            return out;
        }
        if (a == "--demo") out.config.mode = Mode::Demo;
        if (a == "--config" || a.starts_with("--config=")) {
            std::string_view path;
            if (a == "--config") {
                if (i + 1 >= args.size()) return make_error(EINVAL, "--config needs a file");
                path = args[++i];
            } else {
                path = a.substr(std::strlen("--config="));
            }
            COIOMMU_TRY(load_config_file(out.config, std::string(path)));
        }
    }
    // Pass 2: every other flag, in order, over the file.
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto a = args[i];
        if (a == "--demo") continue;
        if (a == "--config") {
            ++i;
            continue;
        }
        if (a.starts_with("--config=")) continue;
        if (!a.starts_with("--") || a.size() == 2) {
            return make_error(EINVAL, fmt::format("unexpected argument '{}' (see --help)", a));
        }
        std::string_view name = a.substr(2);
        std::string_view value;
        if (const auto eq = name.find('='); eq != std::string_view::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
        } else {
            if (i + 1 >= args.size()) return make_error(EINVAL, fmt::format("--{} needs a value", name));
            value = args[++i];
        }
        std::string key(name);
        std::replace(key.begin(), key.end(), '-', '_');
        if (key == "engine_opts") key = "engine";
        if (key == "vcpus") key = "demo_vcpus";
        if (key == "ram") key = "demo_ram";
        if (auto st = apply_option(out.config, key, value); !st) {
            if (st.error().context.starts_with("unknown key")) {
                std::string near(closest_key(key));
                std::replace(near.begin(), near.end(), '_', '-');
                if (!near.empty()) {
                    return make_error(EINVAL, fmt::format("unknown flag '--{}' (did you mean '--{}'?)", name, near));
                }
                return make_error(EINVAL, fmt::format("unknown flag '--{}' (see --help)", name));
            }
            return coiommu::unexpected(with_context(st.error(), fmt::format("--{}", name)));
        }
    }
    COIOMMU_TRY(finalize(out.config));
    return out;
}

std::string usage() {
    return R"(coiommud: pins guest memory on demand for VFIO passthrough (CoIOMMU), one engine per VM.

usage: coiommud [--config FILE] [--KEY VALUE ...]     serve VMMs on a Unix socket
       coiommud --demo [--duration 20s] [...]         an emulated VM, metrics and tracing, in one process

Every KEY may also be set in the config file as `key = value` (# comments); flags override the
file. Flags are the keys with '-' for '_' (--max-sessions 8 or --max-sessions=8).

service
  --socket PATH             VMM socket, created mode 0600          [/run/coiommu/coiommud.sock]
  --allowed-uids LIST       uids whose VMMs may connect (SO_PEERCRED), e.g. 0,107
                                                                   [this process's uid, and root]
  --max-sessions N          concurrent VMs (1..4096); more are refused with EBUSY       [64]
  --setup-timeout DUR       a VMM must finish the handshake within this              [10s]
  --io-timeout DUR          a reply the VMM does not read within this closes it      [5s]
  --engine OPTS             engine options, key=value,... (variant=fast|seed, workers=N,
                            coalesce=on|off, spin_budget=50us, max_batch_pages=N,
                            extent_store=flat|tbb, unpin_policy=off|lru, unpin_interval=60s,
                            unpin_limit=N, unpin_gen_threshold=10)   [engine defaults; --demo: LRU 1s]
  --backends LIST           DMA backends VMMs may pick: vfio,fake,null       [vfio,fake,null]
  --max-guest-memory SIZE   highest guest-physical address a VM may register  [1T]

observability
  --metrics-address ADDR    Prometheus endpoint host:port, or none          [127.0.0.1:9464]
  --tracing auto|off        attach the BPF vfio_dma tracer and the engine USDT probes when
                            permitted (root or CAP_BPF+CAP_PERFMON)         [auto]
  --log-level LEVEL         debug|info|warn|error (stderr)                  [info]
  --log-priority-prefix auto|on|off   <N> syslog prefixes for journald  [auto: on under journald]

demo (--demo)
  --duration DUR            run time; 0 = until Ctrl-C                     [20s]
  --vcpus N                 vCPUs of the emulated VM (1..64)                [4]
  --ram SIZE                its guest RAM (64M..64G)                        [512M]

  --config FILE             read KEY = VALUE lines first
  --help, --version

Durations: 20, 20s, 500ms, 2m. Sizes: 4096, 64K, 512M, 1G, 1T.
Signals: SIGTERM/SIGINT stop the daemon in order: no new sessions, every engine unmaps what it
mapped, then exit 0. SIGHUP re-reads --config (log keys apply at once; other changed keys are
named as needing a restart). Under systemd: socket activation ($LISTEN_FDS, coiommud.socket) and
Type=notify readiness ($NOTIFY_SOCKET). The protocol: engine/daemon/PROTOCOL.md.
)";
}

}  // namespace coiommu::daemon
