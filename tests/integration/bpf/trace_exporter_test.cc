// coiommu-trace --exporter ADDR end to end: the standalone BPF exporter for crosvm/QEMU hosts. The
// test starts the real CLI on an ephemeral loopback port tracing this process, issues VFIO and
// iommufd map/unmap ioctls on /dev/null (they fail with ENOTTY, but the syscall tracepoints fire:
// hence --vfio-mode tracepoint, as fentry mode on a VFIO host never sees an ioctl on /dev/null),
// scrapes /metrics and checks the counts, the histograms and `promtool check metrics`.
// Needs root or CAP_BPF+CAP_PERFMON; skips with the reason otherwise.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/vfio.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "bpf/loader/privileges.h"
#include "engine/base/unique_fd.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kPage = 4096;

// The CLI as a child process: stdout to /dev/null (slow events are printed there), stderr read
// until the "exporter listening on ADDR" line.
class TraceProcess {
public:
    TraceProcess() = default;
    TraceProcess(const TraceProcess&) = delete;
    TraceProcess& operator=(const TraceProcess&) = delete;
    ~TraceProcess() { (void)stop(); }

    [[nodiscard]] Status start(const std::vector<std::string>& args) {
        int err_pipe[2];
        if (::pipe2(err_pipe, O_CLOEXEC) != 0) return make_error(errno, "pipe");
        const pid_t pid = ::fork();
        if (pid < 0) return make_error(errno, "fork");
        if (pid == 0) {
            const int devnull = ::open("/dev/null", O_WRONLY);
            ::dup2(devnull, 1);
            ::dup2(err_pipe[1], 2);
            std::vector<char*> argv;
            std::string bin = COIOMMU_TRACE_BIN;
            argv.push_back(bin.data());
            std::vector<std::string> copy = args;
            for (auto& a : copy) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(bin.c_str(), argv.data());
            ::_exit(127);
        }
        ::close(err_pipe[1]);
        pid_ = pid;
        err_ = UniqueFd(err_pipe[0]);
        return ok();
    }

    // Reads stderr until a line matches `re` (group 1 returned) or the timeout passes.
    [[nodiscard]] Result<std::string> wait_for(const std::regex& re, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            size_t nl = 0;
            while ((nl = buffer_.find('\n')) != std::string::npos) {
                const std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                log_ += line + "\n";
                std::smatch m;
                if (std::regex_search(line, m, re)) return m[1].str();
            }
            pollfd p{err_.get(), POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            char buf[512];
            const ssize_t n = ::read(err_.get(), buf, sizeof(buf));
            if (n <= 0) return make_error(EPIPE, "coiommu-trace exited; stderr:\n" + log_ + buffer_);
            buffer_.append(buf, static_cast<size_t>(n));
        }
        return make_error(ETIMEDOUT, "no matching line; stderr:\n" + log_ + buffer_);
    }

    // SIGINT, then the exit status (-1 when not started).
    int stop() {
        if (pid_ <= 0) return -1;
        ::kill(pid_, SIGINT);
        return wait_exit();
    }

    // Waits for the process to exit by itself; its exit status (128 + signal when killed).
    int wait_exit() {
        if (pid_ <= 0) return -1;
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

private:
    pid_t pid_ = -1;
    UniqueFd err_;
    std::string buffer_;
    std::string log_;
};

int vfio_map(int fd, uint64_t iova, uint64_t size) {
    vfio_iommu_type1_dma_map map{};
    map.argsz = sizeof(map);
    map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    map.vaddr = 0x7f0000000000ull;
    map.iova = iova;
    map.size = size;
    return ::ioctl(fd, VFIO_IOMMU_MAP_DMA, &map) == 0 ? 0 : -errno;
}

int vfio_unmap(int fd, uint64_t iova, uint64_t size) {
    vfio_iommu_type1_dma_unmap unmap{};
    unmap.argsz = sizeof(unmap);
    unmap.iova = iova;
    unmap.size = size;
    return ::ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 ? 0 : -errno;
}

int ioas_map(int fd, uint64_t iova, uint64_t length) {
    struct {
        uint32_t size, flags, ioas_id, reserved;
        uint64_t user_va, length, iova;
    } map{sizeof(map), 7, 1, 0, 0x7f0000000000ull, length, iova};
    return ::ioctl(fd, 0x3b85, &map) == 0 ? 0 : -errno;  // IOMMU_IOAS_MAP
}

class TraceExporter : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto st = bpf::check_bpf_privileges(); !st) GTEST_SKIP() << st.error().message();
        ASSERT_OK(trace_.start({"--vfio-mode", "tracepoint", "-p", std::to_string(::getpid()), "--stats", "--slow-us",
                                "0", "--exporter", "127.0.0.1:0"}));
        ASSERT_OK_AND_ASSIGN(address_, trace_.wait_for(std::regex(R"(^exporter listening on (\S+))"), 20s));
        ASSERT_OK(trace_.wait_for(std::regex(R"(^(Tracing) VFIO DMA)"), 5s));
        port_ = static_cast<uint16_t>(std::stoi(address_.substr(address_.rfind(':') + 1)));
    }

    testing::Exposition scrape(std::string* body = nullptr) {
        auto resp = testing::http_get("127.0.0.1", port_, "/metrics");
        EXPECT_TRUE(resp.has_value()) << resp.error().message();
        if (!resp) return {};
        EXPECT_EQ(resp->status, 200);
        if (body != nullptr) *body = resp->body;
        auto e = testing::parse_exposition(resp->body);
        EXPECT_TRUE(e.has_value()) << e.error().message();
        return e ? *e : testing::Exposition{};
    }

    TraceProcess trace_;
    std::string address_;
    uint16_t port_ = 0;
};

TEST_F(TraceExporter, CountsThisProcessesMapAndUnmapIoctlsByOpAndResult) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    for (int i = 0; i < 7; ++i) EXPECT_EQ(vfio_map(fd.get(), 0x100000 + i * kPage, 2 * kPage), -ENOTTY);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(vfio_unmap(fd.get(), 0x100000, kPage), -ENOTTY);
    for (int i = 0; i < 2; ++i) EXPECT_EQ(ioas_map(fd.get(), 0x200000, 4 * kPage), -ENOTTY);

    const auto e = scrape();
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "other"}}), 7.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "ok"}}), 0.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "unmap"}, {"result", "other"}}), 3.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "ioas_map"}, {"result", "other"}}), 2.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "ioas_unmap"}, {"result", "other"}}), 0.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_bytes_total", {{"op", "map"}}), 7.0 * 2 * kPage);
    EXPECT_EQ(e.value("coiommu_bpf_dma_bytes_total", {{"op", "ioas_map"}}), 2.0 * 4 * kPage);
    EXPECT_EQ(e.value("coiommu_bpf_dma_duration_seconds_count", {{"op", "map"}}), 7.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_duration_seconds_bucket", {{"op", "map"}, {"le", "+Inf"}}), 7.0);
    EXPECT_GT(e.value("coiommu_bpf_dma_duration_seconds_sum", {{"op", "map"}}), 0.0);
    const auto problems = testing::check_histograms(e);
    EXPECT_TRUE(problems.empty()) << problems.front();
}

TEST_F(TraceExporter, CountersOnlyGrowBetweenScrapes) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    EXPECT_EQ(vfio_map(fd.get(), 0x100000, kPage), -ENOTTY);
    const double first = scrape().value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "other"}});
    EXPECT_EQ(vfio_map(fd.get(), 0x100000, kPage), -ENOTTY);
    const double second = scrape().value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "other"}});
    EXPECT_EQ(first, 1.0);
    EXPECT_EQ(second, 2.0);  // the scrape did not reset the map
}

TEST_F(TraceExporter, SlowEventsAreCountedAsThePollerReceivesThem) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    for (int i = 0; i < 5; ++i) EXPECT_EQ(vfio_unmap(fd.get(), 0x100000, kPage), -ENOTTY);
    // --slow-us 0: every call is a slow event; the CLI polls the ring buffer at least every 200 ms.
    double slow = 0;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
        slow = scrape().value("coiommu_bpf_slow_events_total");
        if (slow >= 5.0) break;
        std::this_thread::sleep_for(50ms);
    }
    EXPECT_EQ(slow, 5.0);
    const auto e = scrape();
    EXPECT_EQ(e.value("coiommu_bpf_slow_threshold_seconds"), 0.0);
    EXPECT_EQ(e.value("coiommu_bpf_events_lost_total", {{"map", "vfio_dma_events"}}), 0.0);
}

TEST_F(TraceExporter, ProgramsAreAttachedAndRunTimeIsCountedWithStats) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    EXPECT_EQ(vfio_map(fd.get(), 0x100000, kPage), -ENOTTY);
    const auto e = scrape();
    for (const char* program : {"vfio_dma_enter", "vfio_dma_exit"}) {
        EXPECT_EQ(e.value("coiommu_bpf_program_attached", {{"program", program}}), 1.0) << program;
        EXPECT_GT(e.value("coiommu_bpf_program_runs_total", {{"program", program}}), 0.0) << program;
        EXPECT_GT(e.value("coiommu_bpf_program_run_seconds_total", {{"program", program}}), 0.0) << program;
        const auto info = e.find("coiommu_bpf_program_info", {{"program", program}, {"attach", "tracepoint"}});
        ASSERT_EQ(info.size(), 1u) << program;
        EXPECT_EQ(info[0].labels.at("tag").size(), 16u);
    }
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "bpf"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "process"}}), 1.0);
    EXPECT_GT(e.value("process_resident_memory_bytes"), 0.0);
    // No engine tracer attached: no engine families.
    EXPECT_TRUE(e.find("coiommu_bpf_engine_requests_total").empty());
}

TEST_F(TraceExporter, ScrapePassesPromtoolCheckMetricsWithNoFindings) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    EXPECT_EQ(vfio_map(fd.get(), 0x100000, kPage), -ENOTTY);
    EXPECT_EQ(vfio_unmap(fd.get(), 0x100000, kPage), -ENOTTY);
    std::string body;
    (void)scrape(&body);
    auto lint = testing::promtool_check_metrics(body);
    if (!lint && lint.error().code == ENOENT) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
    ASSERT_OK(lint);
    EXPECT_EQ(lint->exit_status, 0) << lint->output;
    EXPECT_EQ(lint->output, "") << "promtool findings:\n" << lint->output;
}

TEST_F(TraceExporter, ExitsCleanlyOnSigint) { EXPECT_EQ(trace_.stop(), 0); }

TEST(TraceExporterArgs, ABadAddressIsAUsageError) {
    TraceProcess t;
    ASSERT_OK(t.start({"--exporter", "localhost:http"}));
    ASSERT_OK_AND_ASSIGN(auto msg, t.wait_for(std::regex(R"((--exporter: .*))"), 10s));
    EXPECT_NE(msg.find("--exporter"), std::string::npos);
    EXPECT_EQ(t.wait_exit(), 2);
}

}  // namespace
}  // namespace coiommu::exporter
