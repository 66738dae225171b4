// coiommu-trace --vfio-mode: the real binary names the mode it runs in (on stderr at startup, in
// each JSON interval and in its programs' attach type), and --vfio-mode fentry on a kernel that
// cannot run fentry mode fails with the reason instead of falling back to the tracepoints.
// Needs root or CAP_BPF+CAP_PERFMON; skips with the reason otherwise.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/integration/bpf/bpf_test_util.h"

namespace coiommu::bpf {
namespace {

struct Ran {
    int code = -1;
    std::string out;
    std::string err;
};

// Runs coiommu-trace with `args` (shell words) to its end: exit status, stdout, stderr.
Ran run_trace(const std::string& args) {
    Ran r;
    char err_path[] = "/tmp/coiommu-trace-mode-XXXXXX";
    const int err_fd = ::mkstemp(err_path);
    if (err_fd < 0) return r;
    ::close(err_fd);
    const std::string cmd = std::string(COIOMMU_TRACE_BIN) + " " + args + " 2>" + err_path;
    if (std::FILE* p = ::popen(cmd.c_str(), "r")) {
        char buf[4096];
        while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
        const int status = ::pclose(p);
        r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (std::FILE* f = std::fopen(err_path, "r")) {
        char buf[4096];
        while (std::size_t n = std::fread(buf, 1, sizeof buf, f)) r.err.append(buf, n);
        std::fclose(f);
    }
    ::unlink(err_path);
    return r;
}

std::string this_process() { return " -p " + std::to_string(::getpid()); }

// Why fentry mode could work here (a VFIO handler's module is loaded), or "" when it cannot.
std::string vfio_module_loaded() {
    for (const char* m : {"/sys/module/vfio_iommu_type1", "/sys/module/iommufd"}) {
        if (::access(m, F_OK) == 0) return std::string(m) + " exists: fentry mode may attach on this host";
    }
    return "";
}

TEST(TraceMode, TracepointModeIsNamedAtStartupInEachIntervalAndInThePrograms) {
    COIOMMU_REQUIRE_BPF();
    const Ran r = run_trace("--vfio-mode tracepoint --json --stats" + this_process() + " 0.1 1");

    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("vfio_dma: tracepoint mode, tracepoints syscalls/sys_{enter,exit}_ioctl (tracepoint mode "
                         "requested)\n"),
              std::string::npos)
        << r.err;
    const auto line = nlohmann::json::parse(r.out.substr(0, r.out.find('\n')));
    EXPECT_EQ(line["vfio_dma"]["mode"], "tracepoint") << r.out;
    int vfio_programs = 0;
    for (const auto& p : line["programs"]) {
        const std::string name = p["program"];
        if (name.rfind("vfio_", 0) != 0) continue;
        ++vfio_programs;
        EXPECT_EQ(p["attach"], "tracepoint") << name;
        EXPECT_TRUE(p["attached"].get<bool>()) << name;
    }
    EXPECT_EQ(vfio_programs, 2) << line["programs"].dump();  // vfio_dma_enter, vfio_dma_exit
}

TEST(TraceMode, TheTextReportNamesTheMode) {
    COIOMMU_REQUIRE_BPF();
    const Ran r = run_trace("--vfio-mode tracepoint" + this_process() + " 0.1 1");

    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out.rfind("\nvfio_dma mode = tracepoint\n", 0), 0u) << r.out;
}

TEST(TraceMode, FentryModeWithoutVfioFailsWithTheReasonAndDoesNotFallBack) {
    COIOMMU_REQUIRE_BPF();
    if (const std::string why = vfio_module_loaded(); !why.empty()) GTEST_SKIP() << why;
    const Ran r = run_trace("--vfio-mode fentry --json" + this_process() + " 0.1 1");

    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_EQ(r.err.rfind("coiommu-trace: --vfio-mode fentry: vfio_dma: fentry not available: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find("Tracing"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
}

TEST(TraceMode, AutoModeWithoutVfioRunsOnTheTracepointsAndSaysWhy) {
    COIOMMU_REQUIRE_BPF();
    if (const std::string why = vfio_module_loaded(); !why.empty()) GTEST_SKIP() << why;
    const Ran r = run_trace("--json" + this_process() + " 0.1 1");

    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("vfio_dma: tracepoint mode, tracepoints syscalls/sys_{enter,exit}_ioctl (fentry not "
                         "available: "),
              std::string::npos)
        << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out.substr(0, r.out.find('\n')))["vfio_dma"]["mode"], "tracepoint") << r.out;
}

}  // namespace
}  // namespace coiommu::bpf
