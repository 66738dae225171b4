// coiommu-load --connect against the real coiommud binary on a temporary socket: the load
// generator is the VMM (guest RAM memfds, its own trigger eventfds, BAR0 writes and balloon
// requests over the protocol); pins happen in the daemon, the safety invariant holds (checked with
// the daemon's QueryMapped after every map and before every unmap), the guest's request count
// matches the daemon engine's, Close leaves no DMA mapping, and SIGTERM then exits 0.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"
#include "tests/unit/loadgen/json_parse.h"

namespace coiommu::loadgen {
namespace {

using test::JsonValue;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::TempDir;

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// coiommud with the fake and null backends on a socket in a fresh temporary directory.
Result<DaemonProcess> start_daemon() {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommu-load-connect"));
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.socket = dir.path("coiommud.sock");
    o.args = {"--socket",    o.socket,    "--metrics-address", "none",
              "--backends",  "fake,null", "--tracing",         "off",
              "--log-level", "warn",      "--engine",          "unpin_policy=lru,unpin_interval=200ms"};
    return DaemonProcess::start(std::move(dir), std::move(o));
}

struct Exit {
    int code = -1;
    std::string out, err;
};

// coiommu-load with `args`, its output in files of `dir`.
Exit run_load(const TempDir& dir, const std::string& args) {
    const std::string cmd =
        std::string(COIOMMU_LOAD_BIN) + " " + args + " >" + dir.path("out") + " 2>" + dir.path("err");
    const int status = std::system(cmd.c_str());
    return Exit{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir.path("out")), slurp(dir.path("err"))};
}

const JsonValue* find_check(const JsonValue& run, std::string_view name) {
    for (const JsonValue& c : run["checks"].array()) {
        if (c["name"].string() == name) return &c;
    }
    return nullptr;
}

TEST(LoadConnect, MixRunThroughDaemonPinsKeepsInvariantAndLeavesNothingMapped) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    const std::string json = d.path("out.json");
    const Exit e = run_load(d.dir(), "--connect " + d.socket() +
                                         " --duration 1.5 --vcpus 2 --ram 256M --workload mix "
                                         "--latency none --quiet --json " +
                                         json);
    ASSERT_EQ(e.code, 0) << "stdout:\n" << e.out << "\nstderr:\n" << e.err;
    auto doc = test::JsonParser::parse(slurp(json));
    ASSERT_TRUE(doc.has_value()) << "the JSON report does not parse";
    EXPECT_TRUE((*doc)["ok"].boolean());
    EXPECT_EQ((*doc)["options"]["connect"].string(), d.socket());
    ASSERT_EQ((*doc)["runs"].array().size(), 1u);
    const JsonValue& run = (*doc)["runs"].array()[0];
    EXPECT_EQ(run["backend"].string(), "coiommud:fake");
    EXPECT_NE(run["served_by"].string().find("coiommud"), std::string::npos) << run["served_by"].string();

    // Pins happened, in the daemon.
    const double sent = run["requests"]["sent"].number();
    EXPECT_GT(sent, 0);
    EXPECT_GT(run["operations"]["maps"].number(), 0);
    ASSERT_FALSE(run["engine_stats"].is_null());
    EXPECT_GT(run["engine_stats"]["pages_pinned"].number(), 0);
    EXPECT_GT(run["dma"]["map_calls"].number(), 0);

    // The safety invariant, checked through QueryMapped, held.
    EXPECT_TRUE(run["invariant"]["checked"].boolean()) << run["invariant"]["note"].string();
    EXPECT_GT(run["invariant"]["checks"].number(), 0);
    EXPECT_EQ(run["invariant"]["violations"].number(), 0);

    // Both sides agree: every request the guest sent, the daemon's engine counted.
    const double engine_requests =
        run["engine_stats"]["requests_single"].number() + run["engine_stats"]["requests_batch"].number();
    EXPECT_EQ(engine_requests, sent);
    const JsonValue* saw = find_check(run, "engine_saw_every_request");
    ASSERT_NE(saw, nullptr);
    EXPECT_TRUE((*saw)["passed"].boolean()) << (*saw)["detail"].string();

    // Close: the daemon unmapped everything of the session.
    const JsonValue* teardown = find_check(run, "teardown_left_no_mapping");
    ASSERT_NE(teardown, nullptr);
    EXPECT_TRUE((*teardown)["passed"].boolean()) << (*teardown)["detail"].string();
    EXPECT_NE((*teardown)["detail"].string().find("reports 0 backend entries"), std::string::npos)
        << (*teardown)["detail"].string();
    for (const JsonValue& c : run["checks"].array()) EXPECT_TRUE(c["passed"].boolean()) << c["name"].string();

    EXPECT_EQ(d.terminate(), 0);
}

TEST(LoadConnect, NullBackendRunSaysTheInvariantIsSkipped) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    const std::string json = d.path("out.json");
    const Exit e = run_load(d.dir(), "--connect " + d.socket() +
                                         " --backend null --duration 0.5 --ram 128M "
                                         "--workload ring --quiet --json " +
                                         json);
    ASSERT_EQ(e.code, 0) << e.err;
    auto doc = test::JsonParser::parse(slurp(json));
    ASSERT_TRUE(doc.has_value());
    const JsonValue& run = (*doc)["runs"].array()[0];
    EXPECT_EQ(run["backend"].string(), "coiommud:null");
    EXPECT_GT(run["requests"]["sent"].number(), 0);
    EXPECT_FALSE(run["invariant"]["checked"].boolean());
    EXPECT_NE(run["invariant"]["note"].string().find("skipped"), std::string::npos);
    EXPECT_EQ(d.terminate(), 0);
}

// --connect --backend vfio: coiommu-load is the VMM and opens the group itself, before it talks
// to the daemon; a group that does not exist fails the run (not the command line), naming it.
TEST(LoadConnect, ConnectWithVfioOpensTheVmmsGroupFirst) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    const Exit e = run_load(d.dir(), "--connect " + d.socket() + " --backend vfio --vfio-group /nonexistent/vfio/1");
    EXPECT_EQ(e.code, 1);
    EXPECT_NE(e.err.find("/nonexistent/vfio/1"), std::string::npos) << e.err;
}

TEST(LoadConnect, ConnectWithAnotherStrategyOrTheInProcessEngineIsABadCommandLine) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    const Exit strict = run_load(d.dir(), "--connect " + d.socket() + " --strategy strict");
    EXPECT_EQ(strict.code, 2);
    EXPECT_NE(strict.err.find("coiommu strategy only"), std::string::npos) << strict.err;
    EXPECT_EQ(run_load(d.dir(), "--connect " + d.socket() + " --compare").code, 2);
    EXPECT_EQ(run_load(d.dir(), "--connect").code, 2);
}

// A daemon killed mid-run (kill -9: no Close, no reply) ends the run at once with one clear error
// and a non-zero exit: the guest does not spin on a slot nobody will complete, and transport
// errors are not counted as safety-invariant violations (before: the run went on to its end and
// counted every failed QueryMapped as a violation).
TEST(LoadConnect, ADaemonKilledMidRunEndsTheRunAtOnceWithOneClearError) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    std::thread killer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        (void)d.signal(SIGKILL);
    });
    const auto t0 = std::chrono::steady_clock::now();
    const Exit e = run_load(d.dir(), "--connect " + d.socket() + " --duration 20 --quiet --json " + d.path("r.json"));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    killer.join();
    EXPECT_EQ(e.code, 1);
    EXPECT_LT(s, 8.0) << "the run should stop when the daemon goes, not at --duration 20";
    EXPECT_NE(e.err.find("went away"), std::string::npos) << e.err;
    EXPECT_EQ(e.err.find("SAFETY INVARIANT VIOLATED"), std::string::npos) << e.err;
    auto doc = test::JsonParser::parse(slurp(d.path("r.json")));
    ASSERT_TRUE(doc.has_value()) << "the JSON report does not parse";
    const JsonValue& run = (*doc)["runs"].array().at(0);
    const JsonValue* up = find_check(run, "daemon_stayed_up");
    ASSERT_NE(up, nullptr);
    EXPECT_FALSE((*up)["passed"].boolean());
}

TEST(LoadConnect, NoDaemonOnTheSocketFailsTheRunWithExit1) {
    ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommu-load-connect"));
    const Exit e = run_load(dir, "--connect " + dir.path("nobody.sock") + " --duration 0.2 --quiet");
    EXPECT_EQ(e.code, 1);
    EXPECT_NE(e.err.find("nobody.sock"), std::string::npos) << e.err;
}

}  // namespace
}  // namespace coiommu::loadgen
