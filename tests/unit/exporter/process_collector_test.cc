#include "exporter/process_collector.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <ctime>

#include "engine/base/unique_fd.h"
#include "tests/testing/expect.h"

namespace coiommu::exporter {
namespace {

// A /proc/<pid>/stat line whose comm holds spaces and a ") (" to trip a naive parser.
constexpr std::string_view kStatLine =
    "4242 (evil) (name x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 3 0 987654 "
    "123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

TEST(ProcessCollector, ParsesStatFieldsAfterTheLastParenthesis) {
    ASSERT_OK_AND_ASSIGN(const ProcStat s, parse_proc_pid_stat(kStatLine));
    EXPECT_EQ(s.utime_ticks, 250u);
    EXPECT_EQ(s.stime_ticks, 150u);
    EXPECT_EQ(s.starttime_ticks, 987654u);
    EXPECT_EQ(s.vsize_bytes, 123456789u);
    EXPECT_EQ(s.rss_pages, 2048u);
}

TEST(ProcessCollector, TruncatedStatIsInvalid) {
    EXPECT_ERR(parse_proc_pid_stat("4242 (x) S 1 2 3"), EINVAL);
    EXPECT_ERR(parse_proc_pid_stat("no parenthesis here"), EINVAL);
}

TEST(ProcessCollector, ParsesBootTime) {
    ASSERT_OK_AND_ASSIGN(const uint64_t btime, parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"));
    EXPECT_EQ(btime, 1700000000u);
    EXPECT_ERR(parse_boot_time("cpu 1 2 3\n"), EINVAL);
}

TEST(ProcessCollector, ParsesStatusKilobytesIntoBytes) {
    constexpr std::string_view kStatus = "Name:\tcoiommud\nVmLck:\t     128 kB\nVmLckX:\t1 kB\n";
    ASSERT_OK_AND_ASSIGN(const uint64_t locked, parse_status_kb(kStatus, "VmLck"));
    EXPECT_EQ(locked, 128u * 1024u);
    EXPECT_ERR(parse_status_kb(kStatus, "VmPin"), ENOENT);
}

TEST(ProcessCollector, ReadsPlausibleValuesForThisProcess) {
    ASSERT_OK_AND_ASSIGN(const ProcessStats s, read_process_stats());
    const double now = static_cast<double>(std::time(nullptr));
    EXPECT_GT(s.resident_memory_bytes, 0u);
    EXPECT_GE(s.virtual_memory_bytes, s.resident_memory_bytes);
    EXPECT_GE(s.open_fds, 3u);  // stdin, stdout, stderr at least
    EXPECT_GE(s.max_fds, static_cast<double>(s.open_fds));
    EXPECT_LE(s.start_time_seconds, now + 1);
    EXPECT_GT(s.start_time_seconds, now - 24 * 3600);  // a test binary started today
    EXPECT_GE(s.cpu_seconds, 0.0);
}

TEST(ProcessCollector, OpenFdsCountsANewDescriptor) {
    ASSERT_OK_AND_ASSIGN(const ProcessStats before, read_process_stats());
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_OK_AND_ASSIGN(const ProcessStats after, read_process_stats());
    EXPECT_EQ(after.open_fds, before.open_fds + 1);
}

TEST(ProcessCollector, MissingProcRootIsAnErrorAndEmitsNothing) {
    const ProcessCollector c("/nonexistent-proc");
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), ENOENT);
    EXPECT_TRUE(out.empty());
}

TEST(ProcessCollector, EmitsTheStandardProcessFamilies) {
    const ProcessCollector c;
    std::vector<prometheus::MetricFamily> out;
    ASSERT_OK(c.collect_into(out));
    std::vector<std::string> names;
    for (const auto& f : out) names.push_back(f.name);
    EXPECT_EQ(names, (std::vector<std::string>{"process_cpu_seconds_total", "process_resident_memory_bytes",
                                               "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                                               "process_start_time_seconds", "coiommu_process_locked_memory_bytes",
                                               "coiommu_process_locked_memory_limit_bytes"}));
}

}  // namespace
}  // namespace coiommu::exporter
