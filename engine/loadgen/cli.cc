#include "engine/loadgen/cli.h"

#include <csignal>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>

#include "engine/base/log.h"
#include "engine/base/version.h"
#include "engine/loadgen/options.h"
#include "engine/loadgen/report.h"
#include "engine/loadgen/run.h"

namespace coiommu::loadgen {
namespace {

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

extern "C" void on_sigint(int /*sig*/) { g_interrupted.store(true, std::memory_order_relaxed); }

// Installs on_sigint for the lifetime of the object (a first Ctrl-C ends the runs early with a
// report; the old handler comes back afterwards).
class SigintScope {
public:
    SigintScope() {
        struct sigaction sa {};
        sa.sa_handler = on_sigint;
        sigemptyset(&sa.sa_mask);
        installed_ = ::sigaction(SIGINT, &sa, &old_) == 0;
    }
    ~SigintScope() {
        if (installed_) ::sigaction(SIGINT, &old_, nullptr);
    }
    SigintScope(const SigintScope&) = delete;
    SigintScope& operator=(const SigintScope&) = delete;

private:
    struct sigaction old_ {};
    bool installed_ = false;
};

// Sets the log level for the lifetime of the object.
class LogLevelScope {
public:
    explicit LogLevelScope(log::Level l) : old_(log::level()) { log::set_level(l); }
    ~LogLevelScope() { log::set_level(old_); }
    LogLevelScope(const LogLevelScope&) = delete;
    LogLevelScope& operator=(const LogLevelScope&) = delete;

private:
    log::Level old_;
};

// --json and --plot after the runs; the exit code they add (0 or 1).
int write_reports(const LoadOptions& o, const std::vector<RunResult>& runs, const Environment& env, std::FILE* err) {
    int rc = 0;
    if (!o.json_path.empty()) {
        if (auto st = write_json(o.json_path, o, runs, env); !st) {
            std::fprintf(err, "coiommu-load: --json: %s\n", st.error().message().c_str());
            rc = 1;
        }
    }
    if (o.plot_path.empty() || runs.empty()) return rc;
    auto script = write_plot_files(o.plot_path, runs);
    if (!script) {
        std::fprintf(err, "coiommu-load: --plot: %s\n", script.error().message().c_str());
        return 1;
    }
    if (auto st = run_gnuplot(*script); !st) {
        if (st.error().code == ENOENT) {
            std::fprintf(err,
                         "coiommu-load: --plot skipped: gnuplot is not installed (apt-get install gnuplot-nox); "
                         "the script is %s\n",
                         script->c_str());
        } else {
            std::fprintf(err, "coiommu-load: --plot: %s\n", st.error().message().c_str());
            rc = 1;
        }
    }
    return rc;
}

}  // namespace

int run_cli(const std::vector<std::string_view>& args, std::FILE* out, std::FILE* err) {
    auto parsed = parse_cli(args);
    if (!parsed) {
        std::fprintf(err, "coiommu-load: %s\nTry 'coiommu-load --help'.\n", parsed.error().context.c_str());
        return 2;
    }
    if (parsed->action == CliAction::Help) {
        std::fputs(usage().c_str(), out);
        return 0;
    }
    if (parsed->action == CliAction::Version) {
        std::fprintf(out, "%s\n", version_line("coiommu-load").c_str());
        return 0;
    }
    const LoadOptions& o = parsed->options;
    const Environment env = capture_environment(std::chrono::system_clock::now());
    if (!o.json_path.empty()) {  // fail now rather than after the runs
        if (auto st = check_writable(o.json_path); !st) {
            std::fprintf(err, "coiommu-load: --json: %s\n", st.error().message().c_str());
            return 1;
        }
    }
    LogLevelScope log_level(o.log_level);
    RunControl control;
    const bool tty = ::isatty(::fileno(out)) == 1;
    if (!o.quiet && (tty || o.progress)) {
        control.progress = out;
        control.tty = tty;
    }
    g_interrupted.store(false);
    control.cancel = &g_interrupted;
    SigintScope sigint;

    int rc = 0;
    std::vector<RunResult> runs;
    for (const RunSpec& spec : expand_matrix(o)) {
        if (g_interrupted.load()) break;
        auto r = run_once(o, spec, control);
        if (!r) {
            std::fprintf(err, "coiommu-load: %s: %s\n", spec.label().c_str(), r.error().message().c_str());
            rc = 1;
            continue;
        }
        if (!o.quiet && !o.table_only) {
            print_summary(out, *r);
            std::fflush(out);
        }
        if (!r->passed()) rc = 1;
        runs.push_back(std::move(*r));
    }
    if (!o.quiet && (runs.size() > 1 || o.table_only)) {
        if (!o.table_only) std::fputs("\n", out);
        print_table(out, runs);
    }
    if (write_reports(o, runs, env, err) != 0) rc = 1;
    if (g_interrupted.load()) std::fputs("coiommu-load: interrupted\n", err);
    return rc;
}

}  // namespace coiommu::loadgen
