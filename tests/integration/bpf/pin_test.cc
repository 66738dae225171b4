// Pinning under a versioned bpffs directory, reading pins back, run-time stats, the optional
// kernel hooks and the Tracing facade the exporter uses.
#include "bpf/loader/pin.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "bpf/loader/iommu_core_tracer.h"
#include "bpf/loader/pinned_maps.h"
#include "bpf/loader/stats.h"
#include "bpf/loader/tracing.h"
#include "bpf/loader/vfio_dma_tracer.h"
#include "bpf/loader/vfio_kern_tracer.h"
#include "tests/integration/bpf/bpf_test_util.h"
#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using testing::open_dev_null;
using testing::vfio_map;
using testing::vfio_unmap;

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// A pin root private to this test process, removed afterwards whatever happens.
class PinRoot : public ::testing::Test {
protected:
    void TearDown() override { (void)remove_pins(root_); }
    const std::string root_ = "/sys/fs/bpf/coiommu-test-" + std::to_string(::getpid()) + "-" +
                              ::testing::UnitTest::GetInstance()->current_test_info()->name();
};

// Tracepoint mode: the calls below go to /dev/null, which only the syscall tracepoints see.
VfioDmaOptions only_this_process() {
    VfioDmaOptions o;
    o.target_tgid = static_cast<uint32_t>(::getpid());
    o.mode = VfioDmaMode::Tracepoint;
    return o;
}

TEST(PinPaths, DirectoryCarriesTheAbiVersion) {
    EXPECT_EQ(versioned_pin_dir("/sys/fs/bpf/coiommu"), "/sys/fs/bpf/coiommu/v2");
}

TEST(PinPaths, RelativeRootIsEinval) { EXPECT_ERR(PinSet::create(PinOptions{"relative/dir", Keep::No}), EINVAL); }

using PinTest = PinRoot;

TEST_F(PinTest, PinsAreRemovedWhenTheTracerGoesAway) {
    COIOMMU_REQUIRE_BPF();
    std::vector<std::string> paths;
    {
        ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
        ASSERT_OK(tracer.pin(PinOptions{root_, Keep::No}));
        paths = tracer.pinned_paths();
        ASSERT_EQ(paths.size(), 4u);
        EXPECT_TRUE(exists(root_ + "/v2/vfio_dma_hist"));
    }
    for (const auto& p : paths) EXPECT_FALSE(exists(p)) << p;
    EXPECT_FALSE(exists(root_ + "/v2"));
}

TEST_F(PinTest, KeptPinsOutliveTheTracerWithItsCounts) {
    COIOMMU_REQUIRE_BPF();
    auto fd = open_dev_null();
    {
        ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
        ASSERT_OK(tracer.pin(PinOptions{root_, Keep::Yes}));
        (void)vfio_map(fd.get(), 0x100000, 4096);
        (void)vfio_map(fd.get(), 0x101000, 4096);
        (void)vfio_unmap(fd.get(), 0x100000, 8192);
    }

    ASSERT_OK_AND_ASSIGN(auto pinned, PinnedMaps::open(root_));
    EXPECT_TRUE(pinned.has_vfio_dma());
    EXPECT_FALSE(pinned.has_engine());
    ASSERT_OK_AND_ASSIGN(auto snap, pinned.vfio_dma());
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 2u);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).bytes, 8192u);
    EXPECT_ERR(pinned.engine(), ENOENT);
}

TEST_F(PinTest, PinnedReaderSeesLiveUpdates) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    ASSERT_OK(tracer.pin(PinOptions{root_, Keep::No}));
    ASSERT_OK_AND_ASSIGN(auto pinned, PinnedMaps::open(root_));
    auto fd = open_dev_null();

    (void)vfio_map(fd.get(), 0x100000, 4096);

    ASSERT_OK_AND_ASSIGN(auto live, tracer.snapshot());
    ASSERT_OK_AND_ASSIGN(auto from_pin, pinned.vfio_dma());
    EXPECT_EQ(from_pin.latency(VfioOp::VfioMap).slots, live.latency(VfioOp::VfioMap).slots);
    EXPECT_EQ(from_pin.calls_of(VfioOp::VfioMap).total(), 1u);
}

TEST_F(PinTest, AStalePinIsReplaced) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto old_tracer, VfioDmaTracer::start(only_this_process()));
    ASSERT_OK(old_tracer.pin(PinOptions{root_, Keep::Yes}));
    auto fd = open_dev_null();
    (void)vfio_map(fd.get(), 0x100000, 4096);  // seen by the old tracer only
    (void)vfio_map(fd.get(), 0x100000, 4096);
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));

    ASSERT_OK(tracer.pin(PinOptions{root_, Keep::No}));

    ASSERT_OK_AND_ASSIGN(auto pinned, PinnedMaps::open(root_));
    ASSERT_OK_AND_ASSIGN(auto from_pin, pinned.vfio_dma());
    EXPECT_EQ(from_pin.latency(VfioOp::VfioMap).count, 0u);  // the new tracer's map
}

TEST_F(PinTest, NothingPinnedIsEnoent) { EXPECT_ERR(PinnedMaps::open(root_), ENOENT); }

TEST(StatsGuard, RunCountsGrowWhileStatsAreEnabled) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto stats, StatsGuard::enable());
    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(only_this_process()));
    auto fd = open_dev_null();

    for (int i = 0; i < 3; ++i) (void)vfio_map(fd.get(), 0x100000, 4096);

    ASSERT_OK_AND_ASSIGN(auto programs, tracer.programs());
    ASSERT_EQ(programs.size(), 2u);
    // Every ioctl on the host runs both programs; at least our three did.
    EXPECT_GE(programs[0].run_cnt, 3u);
    EXPECT_GT(programs[0].run_time_ns, 0u);
}

TEST(VfioKernTracer, EitherAttachesOrSaysWhyNot) {
    COIOMMU_REQUIRE_BPF();
    auto kern = VfioKernTracer::start();
    if (kern) {
        ASSERT_OK_AND_ASSIGN(auto snap, kern->snapshot());
        EXPECT_EQ(snap.latency_ns[0].count, snap.latency_ns[0].total());
        ASSERT_OK_AND_ASSIGN(auto programs, kern->programs());
        // Two programs for each of do_map/do_unmap, one for each of the inner two.
        size_t want = 0;
        for (KernHook h : {KernHook::DoMap, KernHook::DoUnmap}) want += kern->hooked(h) ? 2 : 0;
        for (KernHook h : {KernHook::PinPagesRemote, KernHook::RemoveDma}) want += kern->hooked(h) ? 1 : 0;
        EXPECT_EQ(programs.size(), want) << kern->detail();
        for (const auto& p : programs) EXPECT_TRUE(p.attached) << p.program;
    } else {
        EXPECT_EQ(kern.error().context.rfind("not available: ", 0), 0u) << kern.error().context;
        EXPECT_GT(kern.error().context.size(), std::string("not available: ").size());
    }
}

// Plain tracepoints: wherever the kernel has the iommu events the program loads, fentry or not.
TEST(IommuCoreTracer, AttachesBothTracepointsWhereTheKernelHasTheIommuEvents) {
    COIOMMU_REQUIRE_BPF();
    auto core = IommuCoreTracer::start();
    if (::access("/sys/kernel/tracing/events/iommu/map", F_OK) != 0 &&
        ::access("/sys/kernel/debug/tracing/events/iommu/map", F_OK) != 0) {
        ASSERT_FALSE(core.has_value());
        EXPECT_EQ(core.error().context.rfind("not available: ", 0), 0u) << core.error().context;
        return;
    }
    ASSERT_TRUE(core.has_value()) << core.error().message();
    ASSERT_OK_AND_ASSIGN(auto programs, core->programs());
    ASSERT_EQ(programs.size(), 2u);
    for (const auto& p : programs) {
        EXPECT_EQ(p.attach, "tracepoint") << p.program;
        EXPECT_TRUE(p.attached) << p.program;
    }
    EXPECT_OK(core->snapshot());
}

using TracingTest = PinRoot;

TEST_F(TracingTest, SnapshotCombinesEveryAttachedTracer) {
    COIOMMU_REQUIRE_BPF();
    TracingOptions opts;
    opts.vfio_dma = only_this_process();
    opts.engine = EngineTarget{COIOMMU_USDT_FIXTURE, -1};
    opts.kernel_hooks = TryKernelHooks::Yes;
    opts.pin = PinOptions{root_, Keep::No};
    ASSERT_OK_AND_ASSIGN(auto tracing, Tracing::start(opts));
    auto fd = open_dev_null();

    (void)vfio_map(fd.get(), 0x100000, 4096);

    ASSERT_OK_AND_ASSIGN(auto snap, tracing.snapshot());
    EXPECT_EQ(snap.vfio_dma.latency(VfioOp::VfioMap).count, 1u);
    ASSERT_TRUE(snap.engine.has_value());
    EXPECT_EQ(snap.kern.has_value(), tracing.kernel_hooks() != nullptr);
    EXPECT_GE(snap.programs.size(), 6u);  // 2 tracepoint + 4 usdt (+ the vk fentry hooks where allowed)
    EXPECT_NE(tracing.kernel_hooks_status(), "not requested");
    EXPECT_EQ(tracing.pinned_paths().size(), 4u + 8u);
    ASSERT_OK_AND_ASSIGN(auto pinned, PinnedMaps::open(root_));
    EXPECT_TRUE(pinned.has_engine());
}

TEST_F(TracingTest, EngineCanBeAttachedLater) {
    COIOMMU_REQUIRE_BPF();
    TracingOptions opts;
    opts.vfio_dma = only_this_process();
    ASSERT_OK_AND_ASSIGN(auto tracing, Tracing::start(opts));
    ASSERT_OK_AND_ASSIGN(auto before, tracing.snapshot());
    EXPECT_FALSE(before.engine.has_value());

    ASSERT_OK(tracing.attach_engine(EngineTarget{COIOMMU_USDT_FIXTURE, -1}));

    ASSERT_OK_AND_ASSIGN(auto after, tracing.snapshot());
    EXPECT_TRUE(after.engine.has_value());
    EXPECT_ERR(tracing.attach_engine(EngineTarget{COIOMMU_USDT_FIXTURE, -1}), EALREADY);
}

}  // namespace
}  // namespace coiommu::bpf
