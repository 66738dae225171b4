// coiommu-trace's command line (bpf/cli/trace_options.h): the parser in-process, and the real
// binary's exit status and message for a bad command line (no privileges needed: it exits before
// loading anything).
#include "bpf/cli/trace_options.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using namespace std::chrono_literals;

Status accept_any(std::string_view /*address*/) { return ok(); }

Result<ParsedTrace> parse(std::initializer_list<std::string> words, const AddressCheck& exporter = accept_any) {
    std::vector<std::string> all{"coiommu-trace"};
    all.insert(all.end(), words);
    std::vector<const char*> argv;
    for (const auto& w : all) argv.push_back(w.c_str());
    return parse_trace_args(static_cast<int>(argv.size()), argv.data(), exporter);
}

TraceArgs args(std::initializer_list<std::string> words) {
    auto p = parse(words);
    EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().context);
    return p ? p->args : TraceArgs{};
}

// The message of a refused command line ("" when it was accepted).
std::string message(std::initializer_list<std::string> words, const AddressCheck& exporter = accept_any) {
    auto p = parse(words, exporter);
    if (p) return "";
    EXPECT_EQ(p.error().code, EINVAL);
    return p.error().context;
}

TEST(TraceArgs, DefaultsTraceEveryProcessUntilInterrupted) {
    const TraceArgs a = args({});
    EXPECT_EQ(a.pid, 0u);
    EXPECT_EQ(a.unit.ns_per_unit, 1u);
    EXPECT_FALSE(a.interval.has_value());
    EXPECT_EQ(a.count, 0u);
    EXPECT_FALSE(a.slow.has_value());
    EXPECT_FALSE(a.pin.has_value());
    EXPECT_EQ(a.pin_root, kDefaultPinRoot);
    EXPECT_EQ(a.vfio_mode, VfioDmaMode::Auto);
}

TEST(TraceArgs, IntervalAndCountArePositional) {
    const TraceArgs a = args({"1", "10"});
    EXPECT_EQ(a.interval, 1s);
    EXPECT_EQ(a.count, 10u);
}

TEST(TraceArgs, IntervalIsADurationInTheSharedGrammar) {
    EXPECT_EQ(args({"0.5"}).interval, 500ms);
    EXPECT_EQ(args({"250ms"}).interval, 250ms);
    EXPECT_EQ(args({"1.5s"}).interval, 1500ms);
}

TEST(TraceArgs, OptionsMayFollowThePositionals) {
    const TraceArgs a = args({"2", "-u", "3", "--json"});
    EXPECT_EQ(a.interval, 2s);
    EXPECT_EQ(a.count, 3u);
    EXPECT_EQ(a.unit.name, "us");
    EXPECT_TRUE(a.json);
}

TEST(TraceArgs, ShortSwitchesGroupAndTakeAttachedValues) {
    const TraceArgs a = args({"-uTj", "-p1234"});
    EXPECT_EQ(a.unit.name, "us");
    EXPECT_TRUE(a.timestamp);
    EXPECT_TRUE(a.json);
    EXPECT_EQ(a.pid, 1234u);
}

TEST(TraceArgs, TheLastOfMicroAndMilliWins) {
    EXPECT_EQ(args({"-u", "-m"}).unit.name, "ms");
    EXPECT_EQ(args({"-m", "-u"}).unit.name, "us");
}

TEST(TraceArgs, TheLastOfPinAndPinTempWins) {
    EXPECT_EQ(args({"--pin", "--pin-temp"}).pin, Keep::No);
    EXPECT_EQ(args({"--pin-temp", "--pin", "--pin-root", "/tmp/p"}).pin, Keep::Yes);
    EXPECT_EQ(args({"--pin-root=/tmp/p"}).pin_root, "/tmp/p");
}

TEST(TraceArgs, SlowThresholdIsMicrosecondsOrADuration) {
    EXPECT_EQ(args({"--slow-us", "500"}).slow, 500us);
    EXPECT_EQ(args({"--slow-us", "1.5ms"}).slow, 1500us);
    EXPECT_EQ(args({"--slow-us", "0"}).slow, 0us);
}

// Unbounded, 2^64-1 us wrapped to a negative threshold, which the loader clamps to 0: every call.
TEST(TraceArgs, SlowThresholdIsBounded) {
    EXPECT_NE(message({"--slow-us", "18446744073709551615"}).find("--slow-us"), std::string::npos);
    EXPECT_NE(message({"--slow-us", "2h"}).find("between 0s and 1h"), std::string::npos);
}

TEST(TraceArgs, EngineAndItsDmaProbes) {
    const TraceArgs a = args({"--engine", "4242", "--engine-dma"});
    EXPECT_EQ(a.engine, "4242");
    EXPECT_TRUE(a.engine_dma);
}

TEST(TraceArgs, VfioModeIsOneOfAutoFentryTracepoint) {
    EXPECT_EQ(args({"--vfio-mode", "auto"}).vfio_mode, VfioDmaMode::Auto);
    EXPECT_EQ(args({"--vfio-mode", "fentry"}).vfio_mode, VfioDmaMode::Fentry);
    EXPECT_EQ(args({"--vfio-mode=tracepoint"}).vfio_mode, VfioDmaMode::Tracepoint);
    EXPECT_EQ(args({"--vfio-mode", "fentry", "--vfio-mode", "tracepoint"}).vfio_mode, VfioDmaMode::Tracepoint);
}

TEST(TraceArgs, ExporterAddressGoesThroughTheCheck) {
    EXPECT_EQ(args({"--exporter", "127.0.0.1:0"}).exporter, "127.0.0.1:0");
    const AddressCheck refuse = [](std::string_view a) { return Status(make_error(EINVAL, fmt::format("bad {}", a))); };
    EXPECT_EQ(message({"--exporter", "x:1"}, refuse), "--exporter: bad x:1");
    EXPECT_NE(message({"--exporter", "127.0.0.1:0"}, AddressCheck{}).find("built without"), std::string::npos);
}

TEST(TraceArgsErrors, PidMustBeAProcessId) {
    EXPECT_EQ(message({"-p", "0"}), "--pid: 0 is outside 1..4194304");
    EXPECT_EQ(message({"--pid", "crosvm"}), "--pid: 'crosvm' is not an unsigned integer");
}

TEST(TraceArgsErrors, IntervalAndCountMustBePositive) {
    EXPECT_NE(message({"0"}).find("interval: '0' is not between 1ms and 24h"), std::string::npos);
    EXPECT_NE(message({"1", "0"}).find("count: 0 is outside"), std::string::npos);
    EXPECT_NE(message({"soon"}).find("'soon' is not a duration"), std::string::npos);
}

TEST(TraceArgsErrors, AThirdPositionalIsUnexpected) {
    EXPECT_NE(message({"1", "2", "3"}).find("unexpected argument '3'"), std::string::npos);
}

TEST(TraceArgsErrors, EngineDmaNeedsEngine) {
    const std::string m = message({"--engine-dma"});
    EXPECT_NE(m.find("--engine-dma"), std::string::npos) << m;
    EXPECT_NE(m.find("--engine"), std::string::npos) << m;
}

TEST(TraceArgsErrors, MistypedOptionSuggestsTheClosest) {
    EXPECT_EQ(message({"--slow-sus", "5"}), "unknown option '--slow-sus' (did you mean '--slow-us'?)");
    EXPECT_EQ(message({"--timestmp"}), "unknown option '--timestmp' (did you mean '--timestamp'?)");
}

TEST(TraceArgsErrors, AnUnknownVfioModeListsTheChoices) {
    EXPECT_EQ(message({"--vfio-mode", "kprobe"}), "--vfio-mode: 'kprobe' is not one of auto|fentry|tracepoint");
    EXPECT_EQ(message({"--vfio-mode", "Fentry"}), "--vfio-mode: 'Fentry' is not one of auto|fentry|tracepoint");
    const std::string missing = message({"--vfio-mode"});
    EXPECT_EQ(missing.rfind("--vfio-mode: ", 0), 0u) << missing;
    EXPECT_NE(missing.find("auto|fentry|tracepoint"), std::string::npos) << missing;
}

TEST(TraceArgsErrors, AnOptionIsNotTheEnginesValue) {
    EXPECT_EQ(message({"--engine", "--json"}), "--engine: needs a value, got the option '--json'");
}

TEST(TraceArgsErrors, ASwitchTakesNoValue) { EXPECT_EQ(message({"--json=yes"}), "--json: takes no value"); }

TEST(TraceArgs, HelpAndVersionPrintAndExit) {
    ::testing::internal::CaptureStdout();
    auto h = parse({"--help"});
    const std::string help = ::testing::internal::GetCapturedStdout();
    ASSERT_OK(h);
    EXPECT_EQ(h->action, cli::Parsed::Exited);
    EXPECT_NE(help.find("--slow-us"), std::string::npos);
    EXPECT_NE(help.find("--vfio-mode auto|fentry|tracepoint"), std::string::npos) << help;
    EXPECT_EQ(help, trace_usage());

    ::testing::internal::CaptureStdout();
    auto bad_then_help = parse({"-p", "0", "--help"});
    (void)::testing::internal::GetCapturedStdout();
    ASSERT_OK(bad_then_help);
    EXPECT_EQ(bad_then_help->action, cli::Parsed::Exited);

    ::testing::internal::CaptureStdout();
    auto v = parse({"-V"});
    const std::string version = ::testing::internal::GetCapturedStdout();
    ASSERT_OK(v);
    EXPECT_EQ(v->action, cli::Parsed::Exited);
    EXPECT_EQ(version.rfind("coiommu-trace ", 0), 0u) << version;
}

// What the READMEs, the man page, the runbook and the tests run (pids filled in).
TEST(TraceArgs, TheDocumentedInvocationsParse) {
    for (const std::vector<std::string>& words : std::vector<std::vector<std::string>>{
             {"1", "5"},
             {"1", "10"},
             {"-p", "4242", "-u", "--slow-us", "500"},
             {"--engine", "4242", "--json", "5"},
             {"--engine", "/usr/local/bin/coiommud", "--engine-dma", "1"},
             {"--pin", "10"},
             {"--exporter", "127.0.0.1:9465", "--stats", "--slow-us", "1000"},
             {"--exporter", "127.0.0.1:9465", "-p", "4242", "--stats"},
             {"-u", "--slow-us", "10000"},
             {"--kernel-hooks", "-v"},
             {"--pin", "--pin-root", "/tmp/r", "--json", "-p", "4242", "0.2"},
             {"--pin-temp", "--pin-root", "/tmp/r", "-p", "4242"},
             {"-p", "4242", "--stats", "--slow-us", "0", "--exporter", "127.0.0.1:0"},
             {"--vfio-mode", "tracepoint", "-p", "4242", "--stats", "--slow-us", "0", "--exporter", "127.0.0.1:0"},
             {"--vfio-mode", "tracepoint", "--pin", "--pin-root", "/tmp/r", "--json", "-p", "4242", "0.2"},
             {"--vfio-mode", "tracepoint", "--pin-temp", "--pin-root", "/tmp/r", "-p", "4242"},
             {"--vfio-mode", "fentry", "--json", "-p", "4242", "0.1", "1"},
             {"--vfio-mode", "tracepoint", "--json", "--stats", "-p", "4242", "0.1", "1"},
             {"--vfio-mode", "tracepoint", "-p", "4242", "0.1", "1"},
             {"--vfio-mode", "tracepoint", "-p", "4242", "1"},
         }) {
        std::vector<const char*> argv{"coiommu-trace"};
        for (const auto& w : words) argv.push_back(w.c_str());
        auto p = parse_trace_args(static_cast<int>(argv.size()), argv.data(), accept_any);
        EXPECT_TRUE(p.has_value()) << words.front() << ": " << (p ? "" : p.error().context);
    }
}

// ---- the binary ------------------------------------------------------------------------------------

struct Exit {
    int code = -1;
    std::string err;
};

Exit run_trace(const std::string& args) {
    const std::string cmd = std::string(COIOMMU_TRACE_BIN) + " " + args + " 2>&1 >/dev/null";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    Exit e;
    if (p == nullptr) return e;
    char buf[512];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) e.err.append(buf, n);
    const int status = ::pclose(p);
    e.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return e;
}

TEST(TraceBinary, ABadCommandLineExitsTwoNamingTheFlag) {
    for (const char* bad : {"--bogus", "--slow-us lots", "-p 0", "--engine-dma", "1 2 3", "--vfio-mode kprobe"}) {
        SCOPED_TRACE(bad);
        const Exit e = run_trace(bad);
        EXPECT_EQ(e.code, 2) << e.err;
        EXPECT_EQ(e.err.rfind("coiommu-trace: ", 0), 0u) << e.err;
        EXPECT_NE(e.err.find("Try 'coiommu-trace --help'"), std::string::npos) << e.err;
    }
    EXPECT_NE(run_trace("--slow-us lots").err.find("--slow-us"), std::string::npos);
    EXPECT_NE(run_trace("--microsecnds").err.find("did you mean '--microseconds'"), std::string::npos);
    EXPECT_NE(run_trace("--vfio-mode kprobe").err.find("not one of auto|fentry|tracepoint"), std::string::npos);
}

TEST(TraceBinary, HelpAndVersionExitZero) {
    EXPECT_EQ(run_trace("--help").code, 0);
    EXPECT_EQ(run_trace("--version").code, 0);
}

}  // namespace
}  // namespace coiommu::bpf
