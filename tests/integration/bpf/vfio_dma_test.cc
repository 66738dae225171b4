// vfio_dma.bpf.c end to end: real ioctl(VFIO_IOMMU_MAP_DMA/UNMAP_DMA, iommufd IOAS_MAP/UNMAP) on a
// non-VFIO descriptor. The ioctls fail (ENOTTY) but both syscall tracepoints fire, so counts,
// result classes, sizes, the tgid filter and slow events can all be checked exactly. Hence the
// tracepoint mode, asked for explicitly: fentry mode only sees real VFIO handlers (tests/vm).
#include "bpf/loader/vfio_dma_tracer.h"

#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/bpf/bpf_test_util.h"
#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using namespace std::chrono_literals;
using testing::ioas_map;
using testing::ioas_unmap;
using testing::open_dev_null;
using testing::vfio_map;
using testing::vfio_unmap;

constexpr uint64_t kPage = 4096;

VfioDmaOptions only_this_process() {
    VfioDmaOptions o;
    o.target_tgid = static_cast<uint32_t>(::getpid());
    o.mode = VfioDmaMode::Tracepoint;
    return o;
}

VfioDmaOptions every_process() {
    VfioDmaOptions o;
    o.mode = VfioDmaMode::Tracepoint;
    return o;
}

// Whether this kernel could run fentry mode at all: tracing programs allowed and a VFIO handler
// with BTF (its module loaded).
bool fentry_possible() {
    if (libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_TRACING, nullptr) <= 0) return false;
    return ::access("/sys/kernel/btf/vfio_iommu_type1", F_OK) == 0 || ::access("/sys/kernel/btf/iommufd", F_OK) == 0;
}

// Collects slow events until `want` arrived or ~2 s passed.
std::vector<SlowEvent> collect_events(VfioDmaTracer& tracer, size_t want) {
    std::vector<SlowEvent> events;
    const auto deadline = std::chrono::steady_clock::now() + 2s;
    while (events.size() < want && std::chrono::steady_clock::now() < deadline) {
        auto n = tracer.poll_slow_events(50ms, [&](const SlowEvent& ev) { events.push_back(ev); });
        if (!n) break;
    }
    return events;
}

TEST(VfioDmaTracer, CountsEveryMapAndUnmapCallOfThisProcess) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();
    constexpr int kMaps = 7;
    constexpr int kUnmaps = 3;

    for (int i = 0; i < kMaps; ++i) EXPECT_EQ(vfio_map(fd.get(), 0x100000 + i * kPage, kPage), -ENOTTY);
    for (int i = 0; i < kUnmaps; ++i) EXPECT_EQ(vfio_unmap(fd.get(), 0x100000, 2 * kPage), -ENOTTY);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, kMaps);
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).total(), kMaps);
    EXPECT_EQ(snap.latency(VfioOp::VfioUnmap).count, kUnmaps);
    EXPECT_EQ(snap.latency(VfioOp::VfioUnmap).total(), kUnmaps);
    EXPECT_EQ(snap.latency(VfioOp::IoasMap).count, 0u);
}

TEST(VfioDmaTracer, FailedCallsOnNonVfioFdAreClassifiedOther) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    ASSERT_EQ(vfio_map(fd.get(), 0x200000, kPage), -ENOTTY);
    ASSERT_EQ(vfio_map(fd.get(), 0x201000, kPage), -ENOTTY);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    const VfioCalls& calls = snap.calls_of(VfioOp::VfioMap);
    EXPECT_EQ(calls.of(ResultClass::Other), 2u);
    EXPECT_EQ(calls.of(ResultClass::Ok), 0u);
    EXPECT_EQ(calls.of(ResultClass::Einval), 0u);
    EXPECT_EQ(calls.total(), 2u);
}

TEST(VfioDmaTracer, EinvalReturnIsItsOwnResultClass) {
    COIOMMU_REQUIRE_BPF();
    // userfaultfd answers every ioctl with EINVAL before its UFFDIO_API handshake.
    UniqueFd uffd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC)));
    if (!uffd) GTEST_SKIP() << "userfaultfd unavailable (errno " << errno << "): no fd that returns EINVAL";
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));

    ASSERT_EQ(vfio_map(uffd.get(), 0x300000, kPage), -EINVAL);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).of(ResultClass::Einval), 1u);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).of(ResultClass::Other), 0u);
}

TEST(VfioDmaTracer, BytesAreTheSizeFieldsOfTheUserStructs) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    (void)vfio_map(fd.get(), 0x400000, 1 * kPage);
    (void)vfio_map(fd.get(), 0x500000, 16 * kPage);
    (void)vfio_unmap(fd.get(), 0x400000, 3 * kPage);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).bytes, 17 * kPage);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).bytes, 3 * kPage);
}

TEST(VfioDmaTracer, IommufdIoasMapAndUnmapAreSeparateOps) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    EXPECT_EQ(ioas_map(fd.get(), 0x600000, 8 * kPage), -ENOTTY);
    EXPECT_EQ(ioas_map(fd.get(), 0x700000, 2 * kPage), -ENOTTY);
    EXPECT_EQ(ioas_unmap(fd.get(), 0x600000, 8 * kPage), -ENOTTY);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::IoasMap).count, 2u);
    EXPECT_EQ(snap.calls_of(VfioOp::IoasMap).bytes, 10 * kPage);
    EXPECT_EQ(snap.latency(VfioOp::IoasUnmap).count, 1u);
    EXPECT_EQ(snap.calls_of(VfioOp::IoasUnmap).bytes, 8 * kPage);
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 0u);
}

TEST(VfioDmaTracer, UnreadableStructIsCountedWithZeroSize) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    // /dev/null never reads the argument, so a NULL struct still gets ENOTTY.
    ASSERT_NE(::ioctl(fd.get(), VFIO_IOMMU_MAP_DMA, nullptr), 0);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.drops.read_fault, 1u);
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 1u);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).bytes, 0u);
}

TEST(VfioDmaTracer, OtherIoctlsAreIgnored) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();
    int avail = 0;

    (void)::ioctl(fd.get(), FIONREAD, &avail);
    (void)::ioctl(fd.get(), VFIO_IOMMU_GET_INFO, &avail);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    for (size_t op = 0; op < kVfioOpCount; ++op) EXPECT_EQ(snap.calls[op].total(), 0u) << op;
}

TEST(VfioDmaTracer, TgidFilterExcludesAnotherProcess) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        for (int i = 0; i < 5; ++i) (void)vfio_map(fd.get(), 0x800000, kPage);
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    (void)vfio_map(fd.get(), 0x900000, kPage);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 1u);
}

TEST(VfioDmaTracer, WithoutFilterAnotherProcessIsCounted) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(every_process()));
    auto fd = open_dev_null();
    constexpr int kChildCalls = 5;

    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        for (int i = 0; i < kChildCalls; ++i) (void)vfio_map(fd.get(), 0xa00000, kPage);
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    // Other processes on the host may issue DMA ioctls too: at least the child's.
    EXPECT_GE(snap.latency(VfioOp::VfioMap).count, static_cast<uint64_t>(kChildCalls));
}

TEST(VfioDmaTracer, SlowEventsCarryTheCallsFields) {
    COIOMMU_REQUIRE_BPF();
    auto opts = only_this_process();
    opts.slow_threshold = 0ns;  // every call is "slow"
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(opts));
    auto fd = open_dev_null();
    std::string comm;
    std::getline(std::ifstream("/proc/thread-self/comm"), comm);

    (void)vfio_map(fd.get(), 0xb00000, 5 * kPage);
    (void)vfio_unmap(fd.get(), 0xc00000, 2 * kPage);

    auto events = collect_events(tracer, 2);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].op, VfioOp::VfioMap);
    EXPECT_EQ(events[0].iova, 0xb00000u);
    EXPECT_EQ(events[0].size, 5 * kPage);
    EXPECT_EQ(events[0].ret, -ENOTTY);
    EXPECT_EQ(events[0].pid, static_cast<uint32_t>(::getpid()));
    EXPECT_EQ(events[0].tid, static_cast<uint32_t>(::gettid()));
    EXPECT_EQ(events[0].comm, comm);
    EXPECT_GT(events[0].latency_ns, 0u);
    EXPECT_EQ(events[1].op, VfioOp::VfioUnmap);
    EXPECT_EQ(events[1].iova, 0xc00000u);
    EXPECT_EQ(events[1].size, 2 * kPage);
}

TEST(VfioDmaTracer, SlowEventLatenciesAddUpToTheHistogramSum) {
    COIOMMU_REQUIRE_BPF();
    auto opts = only_this_process();
    opts.slow_threshold = 0ns;
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(opts));
    auto fd = open_dev_null();

    for (int i = 0; i < 4; ++i) (void)vfio_map(fd.get(), 0xd00000, kPage);

    auto events = collect_events(tracer, 4);
    ASSERT_EQ(events.size(), 4u);
    uint64_t sum = 0;
    for (const auto& ev : events) sum += ev.latency_ns;
    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).sum, sum);
    for (const auto& ev : events) {
        EXPECT_GT(snap.latency(VfioOp::VfioMap).slots[Log2Hist::slot_of(ev.latency_ns)], 0u) << ev.latency_ns;
    }
}

TEST(VfioDmaTracer, CallsFasterThanTheThresholdProduceNoEvent) {
    COIOMMU_REQUIRE_BPF();
    auto opts = only_this_process();
    opts.slow_threshold = 10s;
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(opts));
    auto fd = open_dev_null();

    (void)vfio_map(fd.get(), 0xe00000, kPage);

    ASSERT_OK_AND_ASSIGN(int n, tracer.poll_slow_events(100ms, [](const SlowEvent&) {}));
    EXPECT_EQ(n, 0);
    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 1u);
}

TEST(VfioDmaTracer, PollWithoutThresholdIsEinval) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));

    EXPECT_ERR(tracer.poll_slow_events(0ms, [](const SlowEvent&) {}), EINVAL);
}

TEST(VfioDmaTracer, NothingIsLeftInFlightAfterTheCallsReturn) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    for (int i = 0; i < 3; ++i) (void)vfio_map(fd.get(), 0xf00000, kPage);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.inflight_entries, 0u);
    EXPECT_GT(snap.inflight_max_entries, 0u);
    EXPECT_EQ(snap.drops.inflight_full + snap.drops.read_fault + snap.drops.ringbuf_full, 0u);
}

TEST(VfioDmaTracer, NoCallStaysInFlightAfterConcurrentCallsAndOtherIoctls) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    constexpr int kThreads = 3;
    constexpr int kCallsPerThread = 400;

    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([] {
            auto fd = open_dev_null();
            int avail = 0;
            for (int i = 0; i < kCallsPerThread; ++i) {
                (void)vfio_map(fd.get(), 0x100000, kPage);
                (void)::ioctl(fd.get(), FIONREAD, &avail);  // exits while other threads' calls are in flight
                (void)vfio_unmap(fd.get(), 0x100000, kPage);
            }
        });
    }
    for (auto& t : threads) t.join();

    EXPECT_EQ(tracer.calls_in_flight(), 0u);
    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, uint64_t{kThreads} * kCallsPerThread);
    EXPECT_EQ(snap.latency(VfioOp::VfioUnmap).count, uint64_t{kThreads} * kCallsPerThread);
    EXPECT_EQ(snap.inflight_entries, 0u);
}

TEST(VfioDmaTracer, TracepointModeSaysSoInItsDetailAndPrograms) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));

    EXPECT_EQ(tracer.mode(), VfioDmaMode::Tracepoint);
    EXPECT_EQ(tracer.mode_detail(), "tracepoints syscalls/sys_{enter,exit}_ioctl (tracepoint mode requested)");
}

TEST(VfioDmaTracer, AutoModeWithoutFentryFallsBackToTracepointsAndSaysWhy) {
    COIOMMU_REQUIRE_BPF();
    if (fentry_possible()) GTEST_SKIP() << "this kernel can run fentry mode (tests/vm covers it)";
    VfioDmaOptions opts = only_this_process();
    opts.mode = VfioDmaMode::Auto;
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(opts));
    auto fd = open_dev_null();

    (void)vfio_map(fd.get(), 0x100000, kPage);

    EXPECT_EQ(tracer.mode(), VfioDmaMode::Tracepoint);
    EXPECT_EQ(tracer.mode_detail().rfind("tracepoints syscalls/sys_{enter,exit}_ioctl (fentry not available: ", 0), 0u)
        << tracer.mode_detail();
    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 1u);
    ASSERT_OK_AND_ASSIGN(auto programs, tracer.programs());
    ASSERT_EQ(programs.size(), 2u);
    for (const auto& p : programs) EXPECT_EQ(p.attach, "tracepoint") << p.program;
}

TEST(VfioDmaTracer, FentryModeWithoutFentryFailsWithTheReason) {
    COIOMMU_REQUIRE_BPF();
    if (fentry_possible()) GTEST_SKIP() << "this kernel can run fentry mode (tests/vm covers it)";
    VfioDmaOptions opts = only_this_process();
    opts.mode = VfioDmaMode::Fentry;

    auto tracer = VfioDmaTracer::start(opts);

    ASSERT_FALSE(tracer.has_value());
    EXPECT_NE(tracer.error().context.find("fentry not available: "), std::string::npos) << tracer.error().message();
}

TEST(VfioDmaTracer, ModeNamesAreStable) {
    EXPECT_EQ(mode_name(VfioDmaMode::Auto), "auto");
    EXPECT_EQ(mode_name(VfioDmaMode::Fentry), "fentry");
    EXPECT_EQ(mode_name(VfioDmaMode::Tracepoint), "tracepoint");
}

TEST(VfioDmaTracer, ProgramsAreListedAttachedWithIdAndTag) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));

    ASSERT_OK_AND_ASSIGN(auto programs, tracer.programs());
    ASSERT_EQ(programs.size(), 2u);
    EXPECT_EQ(programs[0].program, "vfio_dma_enter");
    EXPECT_EQ(programs[1].program, "vfio_dma_exit");
    for (const auto& p : programs) {
        EXPECT_TRUE(p.attached) << p.program;
        EXPECT_GT(p.id, 0u);
        EXPECT_EQ(p.tag.size(), 16u);
        EXPECT_EQ(p.attach, "tracepoint");
    }
}

TEST(VfioDmaTracer, SnapshotDeltasCountOnlyTheInterval) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();
    (void)vfio_map(fd.get(), 0x100000, kPage);
    ASSERT_OK_AND_ASSIGN(auto before, tracer.snapshot());

    (void)vfio_map(fd.get(), 0x100000, kPage);
    (void)vfio_map(fd.get(), 0x100000, kPage);

    ASSERT_OK_AND_ASSIGN(auto after, tracer.snapshot());
    const auto delta = after.delta_since(before);
    EXPECT_EQ(delta.latency(VfioOp::VfioMap).count, 2u);
    EXPECT_EQ(delta.calls_of(VfioOp::VfioMap).bytes, 2 * kPage);
    EXPECT_EQ(after.latency(VfioOp::VfioMap).count, 3u);  // the maps themselves never reset
}

}  // namespace
}  // namespace coiommu::bpf
