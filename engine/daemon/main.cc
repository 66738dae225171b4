// coiommud: serves VMMs over its Unix socket (one engine per VM), embeds the Prometheus exporter
// and the BPF tracer, or runs the --demo. See config.h for the options and PROTOCOL.md for the
// protocol.
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/base/log.h"
#include "engine/base/unique_fd.h"
#include "engine/base/version.h"
#include "engine/daemon/config.h"
#include "engine/daemon/systemd_service.h"
#include "engine/daemon/demo.h"
#include "engine/daemon/server.h"

#ifdef COIOMMU_HAVE_EXPORTER
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#endif
#ifdef COIOMMU_HAVE_BPF
#include "bpf/loader/privileges.h"
#include "bpf/loader/tracing.h"
#endif
#if defined(COIOMMU_HAVE_BPF) && defined(COIOMMU_HAVE_EXPORTER)
#include "bpf/metrics/bpf_collector.h"
#include "bpf/metrics/bpf_tracing_source.h"
#endif

namespace {

using namespace coiommu;
using namespace coiommu::daemon;

constexpr std::string_view kLog = "coiommud";

// SIGINT/SIGTERM as a readable fd; blocked in every thread (threads inherit the mask).
Result<UniqueFd> block_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (const int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr); rc != 0) return make_error(rc, "pthread_sigmask");
    UniqueFd fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd) return make_error(errno, "signalfd");
    // A VMM that disappears mid-reply must not kill the daemon (send uses MSG_NOSIGNAL too).
    ::signal(SIGPIPE, SIG_IGN);
    return fd;
}

// The path of another coiommu program beside this one: installed, they share a directory; in a
// build tree, build/<preset>/engine/daemon/coiommud has build/<preset>/{bpf,engine/loadgen}/<name>.
std::string sibling_program(const char* name, const char* build_dir) {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return {};
    const auto build_root = self.parent_path().parent_path().parent_path();
    for (const auto& cand : {self.parent_path() / name, build_root / build_dir / name}) {
        if (std::filesystem::exists(cand, ec)) return cand.lexically_normal().string();
    }
    return {};
}

// Where the dashboards and rules are: /usr/share/coiommu when installed, else the source tree.
std::string dashboards_dir() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const auto installed = self.parent_path().parent_path() / "share" / "coiommu" / "dashboards";
        if (std::filesystem::exists(installed, ec)) return installed.lexically_normal().string();
    }
    return COIOMMU_SOURCE_DIR "/dashboards";
}

std::string self_program() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string("coiommud") : self.string();
}

// A private directory for the demo's socket (nobody else can reach it; removed at exit).
Result<std::string> demo_socket_dir() {
    const char* tmp = ::getenv("TMPDIR");
    std::string templ = fmt::format("{}/coiommud-demo.XXXXXX", tmp != nullptr && *tmp != '\0' ? tmp : "/tmp");
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) return make_error(errno, fmt::format("mkdtemp {}", templ));
    return std::string(buf.data());
}

// SIGHUP: reads the configuration again (the same command line over the file as it is now).
// The log keys take effect at once; every other key that changed is named as needing a restart,
// and the sessions carry on untouched either way.
void reload(const std::vector<std::string_view>& args, DaemonConfig& live) {
    notify_reloading();
    auto parsed = parse_args(args);
    if (!parsed) {
        CLOG_ERROR(kLog, "SIGHUP: configuration not reloaded, keeping the running one: {}", parsed.error().message());
        notify_ready("serving (reload failed: configuration kept)");
        return;
    }
    const DaemonConfig& next = parsed->config;
    live.log_level = next.log_level;
    log::set_level(next.log_level);
    if (next.priority_prefix != live.priority_prefix) {
        live.priority_prefix = next.priority_prefix;
        log::set_priority_prefix(
            next.priority_prefix == PriorityPrefix::On ||
            (next.priority_prefix == PriorityPrefix::Auto && ::getenv("JOURNAL_STREAM") != nullptr));
    }
    std::vector<std::string_view> restart;
    auto differs = [&](std::string_view key, bool changed) {
        if (changed) restart.push_back(key);
    };
    differs("socket", next.socket_path != live.socket_path && !live.socket_activated);
    differs("allowed_uids", next.allowed_uids != live.allowed_uids);
    differs("max_sessions", next.max_sessions != live.max_sessions);
    differs("setup_timeout", next.setup_timeout != live.setup_timeout);
    differs("io_timeout", next.io_timeout != live.io_timeout);
    differs("engine", next.engine_opts != live.engine_opts);
    differs("backends", next.backends != live.backends);
    differs("max_guest_memory", next.max_guest_memory != live.max_guest_memory);
    differs("metrics_address", next.metrics_address != live.metrics_address);
    differs("tracing", next.tracing != live.tracing);
    if (restart.empty()) {
        CLOG_INFO(kLog, "SIGHUP: configuration reloaded (log_level {}); nothing else changed",
                  log::level_name(live.log_level));
    } else {
        CLOG_WARN(kLog, "SIGHUP: configuration reloaded; changed keys that take effect only after a restart: {}",
                  fmt::join(restart, ", "));
    }
    notify_ready("serving (configuration reloaded)");
}

// The demo's private socket directory, or the service's socket: inherited from systemd, or
// bound by the server in a directory that must exist. Fills `server_opts`.
Status prepare_socket(DaemonConfig& cfg, std::string& demo_dir, ServerOptions& server_opts) {
    if (cfg.mode == Mode::Demo) {
        if (cfg.socket_path == kDefaultSocket) {
            COIOMMU_ASSIGN_OR_RETURN(demo_dir, demo_socket_dir());
            cfg.socket_path = demo_dir + "/coiommud.sock";
        }
        if (std::find(cfg.backends.begin(), cfg.backends.end(), "fake") == cfg.backends.end()) {
            cfg.backends.emplace_back("fake");
        }
        server_opts = cfg.server_options();
        return ok();
    }
    server_opts = cfg.server_options();
    COIOMMU_ASSIGN_OR_RETURN(auto activated, take_activated_listener(), "socket activation");
    if (activated.fd) {
        if (activated.path != cfg.socket_path) {
            CLOG_INFO(kLog, "socket-activated on {} (the configured socket {} is not used)", activated.path,
                      cfg.socket_path);
        }
        cfg.socket_path = activated.path;
        cfg.socket_activated = true;
        server_opts.socket_path = activated.path;
        server_opts.inherited_listener = std::move(activated.fd);
        return ok();
    }
    if (const auto parent = std::filesystem::path(cfg.socket_path).parent_path(); !parent.empty()) {
        std::error_code ec;
        if (!std::filesystem::exists(parent, ec)) {
            return make_error(ENOENT, fmt::format("socket directory {} does not exist (systemd: coiommud.socket; by "
                                                  "hand: mkdir -p {} or --socket PATH)",
                                                  parent.string(), parent.string()));
        }
    }
    return ok();
}

// The tracer and the metrics endpoint. Members are destroyed in reverse: the exposer (whose BPF
// collector reads the tracer) before the tracer.
struct Observability {
#ifdef COIOMMU_HAVE_BPF
    std::optional<bpf::Tracing> tracing;
#endif
#ifdef COIOMMU_HAVE_EXPORTER
    std::optional<exporter::Exposer> exposer;
#endif
    std::string tracing_status = "off (--tracing off)";
    std::string metrics_url;
};

// Attaches when permitted and says clearly when not; never fails the daemon.
void start_tracing(const DaemonConfig& cfg, Observability& obs) {
#ifdef COIOMMU_HAVE_BPF
    if (cfg.tracing == TracingMode::Auto) {
        if (auto priv = bpf::check_bpf_privileges(); !priv) {
            obs.tracing_status = fmt::format("not available: {}", priv.error().context);
        } else {
            bpf::TracingOptions topts;
            bpf::EngineTarget target;
            target.binary = self_program();
            target.pid = static_cast<int>(::getpid());
            topts.engine = target;
            auto t = bpf::Tracing::start(topts);
            if (t) {
                obs.tracing.emplace(std::move(*t));
                obs.tracing_status = "attached: vfio_dma syscall tracepoints + engine USDT probes";
            } else {
                // The engine USDT probes need the uprobe support of this kernel; retry with vfio_dma only.
                topts.engine.reset();
                auto t2 = bpf::Tracing::start(topts);
                if (t2) {
                    obs.tracing.emplace(std::move(*t2));
                    obs.tracing_status =
                        fmt::format("vfio_dma attached (engine USDT not available: {})", t.error().message());
                } else {
                    obs.tracing_status = fmt::format("not available: {}", t2.error().message());
                }
            }
        }
    }
#else
    if (cfg.tracing == TracingMode::Auto) obs.tracing_status = "not available: built without BPF (COIOMMU_BPF=OFF)";
#endif
    if (obs.tracing_status.starts_with("not available")) {
        CLOG_WARN(kLog, "tracing {}", obs.tracing_status);
    } else {
        CLOG_INFO(kLog, "tracing {}", obs.tracing_status);
    }
}

#ifdef COIOMMU_HAVE_EXPORTER
std::shared_ptr<exporter::CollectorSet> collectors(const DaemonConfig& cfg, Server* srv, Observability& obs) {
    exporter::EngineInfo info;
    info.build = exporter::this_build();
    info.config.unpin_policy = std::string(workers::to_string(cfg.engine.unpin_policy));
    info.config.coalesce = cfg.engine.coalesce == workers::Coalesce::On ? "on" : "off";
    info.config.backend = cfg.mode == Mode::Demo ? "fake" : cfg.backends.front();
    info.config.unpin_interval_seconds = std::chrono::duration<double>(cfg.engine.unpin_interval).count();
    info.config.unpin_gen_threshold = cfg.engine.unpin_gen_threshold;
    auto set = std::make_shared<exporter::CollectorSet>();
    (void)set->add("engine", std::make_shared<exporter::EngineCollector>([srv] { return srv->aggregate(); }, info));
    (void)set->add("process", std::make_shared<exporter::ProcessCollector>());
#ifdef COIOMMU_HAVE_BPF
    if (obs.tracing) {
        (void)set->add("bpf", std::make_shared<exporter::BpfCollector>(
                                  exporter::tracing_source(*obs.tracing, nullptr, std::nullopt)));
    }
#else
    (void)obs;
#endif
    return set;
}
#endif

// The Prometheus endpoint (unless metrics_address is none). Errors: the exposer's, e.g. EADDRINUSE
// (the demo then takes a free port instead).
Status start_metrics(const DaemonConfig& cfg, Server* srv, Observability& obs) {
#ifdef COIOMMU_HAVE_EXPORTER
    if (cfg.metrics_address == "none") return ok();
    exporter::ExposerOptions eo;
    eo.address = cfg.metrics_address;
    auto ex = exporter::Exposer::start(eo);
    if (!ex && ex.error().code == EADDRINUSE && cfg.mode == Mode::Demo) {
        // A newcomer's second demo (or another exporter) holds the port: take any free one.
        CLOG_WARN(kLog, "metrics address {} is in use; the demo takes a free port instead", cfg.metrics_address);
        if (auto la = exporter::parse_listen_address(cfg.metrics_address)) {
            la->port = 0;
            eo.address = la->to_string();
            ex = exporter::Exposer::start(eo);
        }
    }
    if (!ex) {
        return coiommu::unexpected(with_context(
            ex.error(), fmt::format("metrics endpoint {} (--metrics-address ADDR or none)", cfg.metrics_address)));
    }
    obs.exposer.emplace(std::move(*ex));
    COIOMMU_TRY(obs.exposer->register_collectable(collectors(cfg, srv, obs)), "metrics");
    obs.metrics_url = obs.exposer->url();
    CLOG_INFO(kLog, "metrics at {}", obs.metrics_url);
#else
    (void)srv;
    (void)obs;
    if (cfg.metrics_address != "none") CLOG_WARN(kLog, "metrics not available: built without prometheus-cpp");
#endif
    return ok();
}

// Service mode: READY, then SIGHUP reloads until SIGTERM/SIGINT.
void serve_until_stopped(int sigfd, const std::vector<std::string_view>& args, DaemonConfig& cfg) {
    CLOG_INFO(kLog, "ready: serving VMMs on {}", cfg.socket_path);
    notify_ready(fmt::format("serving VMMs on {}", cfg.socket_path));
    for (;;) {
        signalfd_siginfo si{};
        pollfd p{sigfd, POLLIN, 0};
        if (::poll(&p, 1, -1) < 0 && errno != EINTR) return;
        if (::read(sigfd, &si, sizeof si) != static_cast<ssize_t>(sizeof si)) continue;
        if (si.ssi_signo == SIGHUP) {
            reload(args, cfg);
            continue;
        }
        CLOG_INFO(kLog, "{}: shutting down", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
}

int demo(Server* server, const DaemonConfig& cfg, int sigfd, const Observability& obs) {
    DemoContext ctx;
    ctx.server = server;
    ctx.config = &cfg;
    ctx.signal_fd = sigfd;
    ctx.metrics_url = obs.metrics_url;
    ctx.tracing_status = obs.tracing_status;
    ctx.trace_tool = sibling_program("coiommu-trace", "bpf");
    ctx.load_tool = sibling_program("coiommu-load", "engine/loadgen");
    ctx.daemon_tool = self_program();
    ctx.dashboards = dashboards_dir();
    return run_demo(ctx);
}

int run(const DaemonConfig& given, const std::vector<std::string_view>& args) {
    DaemonConfig cfg = given;
    log::set_level(cfg.log_level);
    log::set_priority_prefix(cfg.priority_prefix == PriorityPrefix::On ||
                             (cfg.priority_prefix == PriorityPrefix::Auto && ::getenv("JOURNAL_STREAM") != nullptr));
    auto sigfd = block_signals();
    if (!sigfd) {
        CLOG_ERROR(kLog, "{}", sigfd.error().message());
        return 1;
    }
    std::string demo_dir;
    ServerOptions server_opts;
    const Status prepared = prepare_socket(cfg, demo_dir, server_opts);
    struct DirCleanup {
        std::string dir;
        ~DirCleanup() {
            if (!dir.empty()) ::rmdir(dir.c_str());
        }
    } cleanup{demo_dir};
    if (!prepared) {
        CLOG_ERROR(kLog, "{}", prepared.error().message());
        return 1;
    }
    auto server = Server::start(std::move(server_opts));
    if (!server) {
        CLOG_ERROR(kLog, "cannot serve {}: {}", cfg.socket_path, server.error().message());
        return 1;
    }
    Observability obs;
    start_tracing(cfg, obs);
    if (auto st = start_metrics(cfg, server->get(), obs); !st) {
        CLOG_ERROR(kLog, "{}", st.error().message());
        return 1;
    }
    int rc = 0;
    if (cfg.mode == Mode::Demo) {
        rc = demo(server->get(), cfg, sigfd->get(), obs);
    } else {
        serve_until_stopped(sigfd->get(), args, cfg);
    }
    notify_stopping();
    // Orderly: no new sessions, every session's engine unmaps what it mapped, then the exporter
    // (its collector reads the server) and the tracer go.
    (*server)->stop();
#ifdef COIOMMU_HAVE_EXPORTER
    obs.exposer.reset();
#endif
    server->reset();
    CLOG_INFO(kLog, "stopped");
    return rc;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string_view> args(argv + 1, argv + argc);
    auto parsed = coiommu::daemon::parse_args(args);
    if (!parsed) {
        // The errno says why a config file could not be read; a flag error is its own sentence.
        const auto& e = parsed.error();
        std::fprintf(stderr, "coiommud: %s\n", e.code == EINVAL ? e.context.c_str() : e.message().c_str());
        return 2;
    }
    switch (parsed->action) {
        case coiommu::daemon::CliAction::Help: std::fputs(coiommu::daemon::usage().c_str(), stdout); return 0;
        case coiommu::daemon::CliAction::Version:
            std::printf("%s\nVMM protocol version %u\n", coiommu::version_line("coiommud").c_str(),
                        coiommu::daemon::proto::kVersion);
            return 0;
        case coiommu::daemon::CliAction::Run: break;
    }
    return run(parsed->config, args);
}
