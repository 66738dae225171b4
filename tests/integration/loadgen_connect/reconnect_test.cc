// coiommu-load --connect --reconnect against the real coiommud binary killed with SIGKILL at random
// points of a multi-vCPU run, and restarted on the same socket each time, as systemd's
// Restart=always would: the load generator (the VMM) resumes every session, its safety invariant
// (every page a vCPU holds is mapped, checked with QueryMapped after every map and before every
// unmap) holds throughout, at every loss the daemon's host record matches the fake container's
// mapping set (which the VMM holds in a memfd, as a container outlives the daemon), and the final
// Close leaves no mapping.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"
#include "tests/unit/loadgen/json_parse.h"

extern char** environ;

namespace coiommu::loadgen {
namespace {

using test::JsonValue;
using testing::DaemonProcess;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// A coiommud on `socket` (a path that outlives each daemon), with LRU unpinning every 100 ms.
Result<DaemonProcess> start_daemon(const std::string& socket) {
    return testing::start_daemon_at(COIOMMUD_PATH, socket,
                                    {"--metrics-address", "none", "--backends", "fake,null", "--tracing", "off",
                                     "--log-level", "error", "--engine", "unpin_policy=lru,unpin_interval=100ms"},
                                    "coiommud-reconnect");
}

// coiommu-load as a child with its output in `dir`; returns its pid.
Result<pid_t> spawn_load(const TempDir& dir, const std::vector<std::string>& args) {
    std::vector<std::string> argv{COIOMMU_LOAD_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, dir.path("out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, dir.path("err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, cargv[0], &fa, nullptr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return make_error(rc, "posix_spawn coiommu-load");
    return pid;
}

// The exit code once the child has exited (-1 when it was killed by a signal), waiting at most
// `limit`; nullopt while it still runs.
std::optional<int> exit_of(pid_t pid, std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (r < 0 || Clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

const JsonValue* find_check(const JsonValue& run, std::string_view name) {
    for (const JsonValue& c : run["checks"].array()) {
        if (c["name"].string() == name) return &c;
    }
    return nullptr;
}

TEST(Reconnect, AHundredKillNinesUnderLoadLoseNoPinAndLeakNoMapping) {
    constexpr int kKills = 100;
    ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommu-load-reconnect"));
    const std::string socket = dir.path("coiommud.sock");
    std::optional<DaemonProcess> daemon;
    {
        ASSERT_OK_AND_ASSIGN(auto d, start_daemon(socket));
        daemon.emplace(std::move(d));
    }
    // mix: maps, unmaps and balloon inflations on 4 vCPUs, with the typical fake latencies so that
    // DMA calls are in flight when the daemon dies.
    ASSERT_OK_AND_ASSIGN(
        pid_t load, spawn_load(dir, {"--connect", socket, "--reconnect", "--duration", "300", "--vcpus", "4", "--ram",
                                     "256M", "--workload", "mix", "--balloon-interval", "50ms", "--quiet",
                                     "--log-level", "info", "--json", dir.path("r.json")}));
    // Each kill hits a session that runs: the previous resume is done (the client logs it).
    auto resumed = [&] {
        const std::string err = slurp(dir.path("err"));
        int n = 0;
        for (std::size_t at = err.find("resumed session"); at != std::string::npos;
             at = err.find("resumed session", at + 1)) {
            ++n;
        }
        return n;
    };
    std::mt19937 rng(20261202);
    std::uniform_int_distribution<int> pause_ms(20, 200);
    int kills = 0;
    for (; kills < kKills; ++kills) {
        const auto deadline = Clock::now() + std::chrono::seconds(20);
        while (resumed() < kills && Clock::now() < deadline && !exit_of(load, std::chrono::milliseconds(0))) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        ASSERT_EQ(resumed(), kills) << "no resume after kill " << kills << "\n" << slurp(dir.path("err"));
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));  // a random point of the run
        if (exit_of(load, std::chrono::milliseconds(0))) break;                 // the run ended: it says why
        ASSERT_OK(daemon->signal(SIGKILL));
        ASSERT_TRUE(daemon->wait_for_exit(std::chrono::seconds(5)));
        daemon.reset();
        ASSERT_OK_AND_ASSIGN(auto d, start_daemon(socket));
        daemon.emplace(std::move(d));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // served by the last daemon a while
    ::kill(load, SIGINT);                                         // ends the run early, with its report
    const auto code = exit_of(load, std::chrono::seconds(60));
    if (!code) ::kill(load, SIGKILL);
    const std::string err = slurp(dir.path("err"));
    ASSERT_TRUE(code) << "coiommu-load did not end\n" << err;
    EXPECT_EQ(kills, kKills) << "coiommu-load ended after " << kills << " restarts\n" << err;
    EXPECT_EQ(*code, 0) << err;

    auto doc = test::JsonParser::parse(slurp(dir.path("r.json")));
    ASSERT_TRUE(doc.has_value()) << "the JSON report does not parse\n" << err;
    const JsonValue& run = (*doc)["runs"].array().at(0);
    EXPECT_EQ(run["resumes"]["sessions_resumed"].number(), kKills);
    EXPECT_EQ(run["resumes"]["audits"].number(), kKills);
    EXPECT_EQ(run["resumes"]["audits_inconsistent"].number(), 0);
    for (const char* name :
         {"invariant", "every_request_completed", "every_map_unmapped", "record_matched_container_at_every_loss",
          "engine_counts_add_up", "teardown_left_no_mapping"}) {
        const JsonValue* c = find_check(run, name);
        ASSERT_NE(c, nullptr) << name;
        EXPECT_TRUE((*c)["passed"].boolean()) << name << ": " << (*c)["detail"].string();
    }
    EXPECT_GT(run["operations"]["maps"].number(), 0);
    if (const JsonValue* c = find_check(run, "record_matched_container_at_every_loss")) {
        std::printf("coiommu-load: %s\n", (*c)["detail"].string().c_str());
    }
    EXPECT_EQ(daemon->terminate(), 0);
}

// The same restart with SIGTERM (systemd's restart of the service): the daemon detaches the
// session, and the next one resumes it; no kill needed.
TEST(Reconnect, ASystemdRestartIsAResumeNotAVmLoss) {
    ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommu-load-reconnect"));
    const std::string socket = dir.path("coiommud.sock");
    std::optional<DaemonProcess> daemon;
    {
        ASSERT_OK_AND_ASSIGN(auto d, start_daemon(socket));
        daemon.emplace(std::move(d));
    }
    ASSERT_OK_AND_ASSIGN(
        pid_t load, spawn_load(dir, {"--connect", socket, "--reconnect", "--duration", "3", "--vcpus", "2", "--ram",
                                     "256M", "--workload", "mix", "--quiet", "--json", dir.path("r.json")}));
    for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        EXPECT_EQ(daemon->terminate(), 0);
        daemon.reset();
        ASSERT_OK_AND_ASSIGN(auto d, start_daemon(socket));
        daemon.emplace(std::move(d));
    }
    const auto code = exit_of(load, std::chrono::seconds(60));
    if (!code) ::kill(load, SIGKILL);
    const std::string err = slurp(dir.path("err"));
    ASSERT_TRUE(code) << err;
    EXPECT_EQ(*code, 0) << err;
    auto doc = test::JsonParser::parse(slurp(dir.path("r.json")));
    ASSERT_TRUE(doc.has_value()) << err;
    const JsonValue& run = (*doc)["runs"].array().at(0);
    EXPECT_EQ(run["resumes"]["sessions_resumed"].number(), 3);
    const JsonValue* c = find_check(run, "teardown_left_no_mapping");
    ASSERT_NE(c, nullptr);
    EXPECT_TRUE((*c)["passed"].boolean()) << (*c)["detail"].string();
    EXPECT_EQ(daemon->terminate(), 0);
}

}  // namespace
}  // namespace coiommu::loadgen
