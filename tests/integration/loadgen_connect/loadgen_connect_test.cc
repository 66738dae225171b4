// coiommu-load --connect against the real coiommud binary on a temporary socket: the load
// generator is the VMM (guest RAM memfds, its own trigger eventfds, BAR0 writes and balloon
// requests over the protocol); pins happen in the daemon, the safety invariant holds (checked with
// the daemon's QueryMapped after every map and before every unmap), the guest's request count
// matches the daemon engine's, Close leaves no DMA mapping, and SIGTERM then exits 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/loadgen/json_parse.h"

extern char** environ;

namespace coiommu::loadgen {
namespace {

using std::chrono::milliseconds;
using test::JsonValue;

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// The daemon on a socket in a fresh temporary directory; killed (SIGKILL) if still running at the end.
class Daemon {
public:
    Daemon() {
        char tmpl[] = "/tmp/coiommu-load-connect.XXXXXX";
        EXPECT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        socket_ = dir_ + "/coiommud.sock";
        std::vector<std::string> args{COIOMMUD_PATH,
                                      "--socket",
                                      socket_,
                                      "--metrics-address",
                                      "none",
                                      "--backends",
                                      "fake,null",
                                      "--tracing",
                                      "off",
                                      "--log-level",
                                      "warn",
                                      "--engine",
                                      "unpin_policy=lru,unpin_interval=200ms"};
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        EXPECT_EQ(::posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!std::filesystem::exists(socket_) && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(milliseconds(10));
        }
        EXPECT_TRUE(std::filesystem::exists(socket_)) << "coiommud did not create its socket";
    }
    ~Daemon() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        std::filesystem::remove_all(dir_);
    }
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // SIGTERM and the exit status (-1 if it did not exit within 15 s).
    int terminate() {
        ::kill(pid_, SIGTERM);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
        while (std::chrono::steady_clock::now() < until) {
            int st = 0;
            if (::waitpid(pid_, &st, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            std::this_thread::sleep_for(milliseconds(10));
        }
        return -1;
    }
    [[nodiscard]] const std::string& socket() const { return socket_; }
    [[nodiscard]] std::string file(const std::string& name) const { return dir_ + "/" + name; }

private:
    std::string dir_, socket_;
    pid_t pid_ = -1;
};

struct Exit {
    int code = -1;
    std::string out, err;
};

Exit run_load(const Daemon& d, const std::string& args) {
    const std::string cmd = std::string(COIOMMU_LOAD_BIN) + " " + args + " >" + d.file("out") + " 2>" + d.file("err");
    const int status = std::system(cmd.c_str());
    return Exit{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(d.file("out")), slurp(d.file("err"))};
}

const JsonValue* find_check(const JsonValue& run, std::string_view name) {
    for (const JsonValue& c : run["checks"].array()) {
        if (c["name"].string() == name) return &c;
    }
    return nullptr;
}

TEST(LoadConnect, MixRunThroughDaemonPinsKeepsInvariantAndLeavesNothingMapped) {
    Daemon d;
    const std::string json = d.file("out.json");
    const Exit e = run_load(d, "--connect " + d.socket() +
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
    Daemon d;
    const std::string json = d.file("out.json");
    const Exit e = run_load(d, "--connect " + d.socket() +
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

TEST(LoadConnect, ConnectWithVfioOrAnotherStrategyIsABadCommandLine) {
    Daemon d;
    EXPECT_EQ(run_load(d, "--connect " + d.socket() + " --backend vfio --vfio-group /dev/vfio/1").code, 2);
    const Exit strict = run_load(d, "--connect " + d.socket() + " --strategy strict");
    EXPECT_EQ(strict.code, 2);
    EXPECT_NE(strict.err.find("coiommu strategy only"), std::string::npos) << strict.err;
    EXPECT_EQ(run_load(d, "--connect " + d.socket() + " --compare").code, 2);
    EXPECT_EQ(run_load(d, "--connect").code, 2);
}

TEST(LoadConnect, NoDaemonOnTheSocketFailsTheRunWithExit1) {
    Daemon d;
    const Exit e = run_load(d, "--connect " + d.file("nobody.sock") + " --duration 0.2 --quiet");
    EXPECT_EQ(e.code, 1);
    EXPECT_NE(e.err.find("nobody.sock"), std::string::npos) << e.err;
}

}  // namespace
}  // namespace coiommu::loadgen
