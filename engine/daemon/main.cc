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
#include "engine/daemon/observability.h"
#include "engine/daemon/server.h"

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
    differs("max_sessions_per_uid", next.max_sessions_per_uid != live.max_sessions_per_uid);
    differs("max_pending", next.max_pending != live.max_pending);
    differs("max_fds_per_session", next.max_fds_per_session != live.max_fds_per_session);
    differs("max_fds_per_uid", next.max_fds_per_uid != live.max_fds_per_uid);
    differs("hello_timeout", next.hello_timeout != live.hello_timeout);
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

// Attaches the tracer when permitted and says clearly when not; never fails the daemon.
std::string start_tracing(const DaemonConfig& cfg, Observability& obs) {
    std::string status = obs.start_tracing(cfg);
    if (status.starts_with("not available")) {
        CLOG_WARN(kLog, "tracing {}", status);
    } else {
        CLOG_INFO(kLog, "tracing {}", status);
    }
    return status;
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

int demo(Server* server, const DaemonConfig& cfg, int sigfd, const Observability& obs, std::string tracing_status) {
    DemoContext ctx;
    ctx.server = server;
    ctx.config = &cfg;
    ctx.signal_fd = sigfd;
    ctx.metrics_url = obs.metrics_url();
    ctx.tracing_status = std::move(tracing_status);
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
    const std::unique_ptr<Observability> obs = make_observability();
    std::string tracing_status = start_tracing(cfg, *obs);
    if (auto st = obs->start_metrics(cfg, **server); !st) {
        CLOG_ERROR(kLog, "{}", st.error().message());
        return 1;
    }
    int rc = 0;
    if (cfg.mode == Mode::Demo) {
        rc = demo(server->get(), cfg, sigfd->get(), *obs, std::move(tracing_status));
    } else {
        serve_until_stopped(sigfd->get(), args, cfg);
    }
    notify_stopping();
    // Orderly: no new sessions, every session's engine unmaps what it mapped, then the exporter
    // (its collector reads the server) and the tracer go.
    (*server)->stop();
    obs->stop();
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
