// The guest-side DTT emulator (engine/emulator): the guest frontend's table protocol.
#include "engine/emulator/guest_dtt.h"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <thread>
#include <vector>

#include "engine/core/spec.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu::emulator {
namespace {

using core::kDtteAccessed;
using core::kDttePinned;
using testing::DttBuilder;
using testing::DttBuilderOptions;

constexpr uint64_t kMiB = uint64_t{1} << 20;

GuestMemory make_memory() {
    const std::array<RegionSpec, 1> regions{{{Gpa{0}, 4 * kMiB}}};
    return std::move(GuestMemory::create(regions).value());
}

TEST(GuestDtt, LevelZeroIsRejected) {
    auto mem = make_memory();
    EXPECT_ERR(GuestDtt::create(mem, {.levels = 0, .pool_base = Gpa{0}, .pool_pages = 8, .ncpus = 1}), EINVAL);
}

TEST(GuestDtt, LevelEightIsRejected) {
    auto mem = make_memory();
    EXPECT_ERR(GuestDtt::create(mem, {.levels = 8, .pool_base = Gpa{0}, .pool_pages = 8, .ncpus = 1}), EINVAL);
}

TEST(GuestDtt, UnalignedPoolIsRejected) {
    auto mem = make_memory();
    EXPECT_ERR(GuestDtt::create(mem, {.levels = 4, .pool_base = Gpa{0x10}, .pool_pages = 8, .ncpus = 1}), EINVAL);
}

TEST(GuestDtt, PoolCrossingTheEndOfRamIsRejected) {
    auto mem = make_memory();
    EXPECT_ERR(GuestDtt::create(mem, {.levels = 4, .pool_base = Gpa{4 * kMiB - 0x1000}, .pool_pages = 2, .ncpus = 1}),
               EFAULT);
}

TEST(GuestDtt, RootIsAZeroedPoolPage) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_EQ(raw(g.root()) >> kPageShift, raw(g.pool_first_gfn()));
    EXPECT_EQ(g.mem().read_obj<uint64_t>(g.root()).value(), 0u);
    EXPECT_EQ(g.dtt().pages_in_use(), 1u);
}

TEST(GuestDtt, FirstMarkBuildsOneTablePerLevel) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    EXPECT_EQ(g.dtt().pages_in_use(), 4u);
}

TEST(GuestDtt, UpperEntriesArePresentPhysicalAddresses) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK_AND_ASSIGN(auto level3, g.dtt().table_gpa(Gfn{0x55}, 3));
    // gfn 0x55 has index 0 at every upper level.
    EXPECT_EQ(g.mem().read_obj<uint64_t>(g.root()).value(), raw(level3) | core::kDttEntryPresent);
}

TEST(GuestDtt, MarkCountsTheMappingAndSetsAccessed) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK(g.mark(Gfn{0x55}));
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), 2u | kDtteAccessed);
}

TEST(GuestDtt, MarkOfAnUnpinnedPageAsksForAPin) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK_AND_ASSIGN(bool pinned, g.mark(Gfn{0x55}));
    EXPECT_FALSE(pinned);
}

TEST(GuestDtt, MarkOfAPinnedPageNeedsNoPin) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.set_entry(Gfn{0x55}, kDttePinned));
    ASSERT_OK_AND_ASSIGN(bool pinned, g.mark(Gfn{0x55}));
    EXPECT_TRUE(pinned);
}

TEST(GuestDtt, MapCountCapsAtMaxMinusCpus) {
    DttBuilderOptions opts;
    opts.ncpus = 4;
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create(opts));
    EXPECT_EQ(g.dtt().max_map_count(), 0xFFFFu - 4u);
    ASSERT_OK(g.set_entry(Gfn{0x55}, 0xFFFFu - 4u));
    EXPECT_ERR(g.mark(Gfn{0x55}), EINVAL);
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), 0xFFFFu - 4u);
}

TEST(GuestDtt, UnmarkDecrementsAndKeepsAccessed) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK(g.unmark(Gfn{0x55}));
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), kDtteAccessed);
}

TEST(GuestDtt, UnmarkAfterFailureClearsAccessedAtZero) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK(g.dtt().unmark_after_failure(Gfn{0x55}));
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), 0u);
}

TEST(GuestDtt, UnmarkAfterFailureKeepsAccessedWhileCounted) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK(g.mark(Gfn{0x55}));
    ASSERT_OK(g.dtt().unmark_after_failure(Gfn{0x55}));
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), 1u | kDtteAccessed);
}

TEST(GuestDtt, UnmarkOfAZeroCountIsAnError) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.set_entry(Gfn{0x55}, kDttePinned));
    EXPECT_ERR(g.unmark(Gfn{0x55}), EINVAL);
    EXPECT_EQ(g.entry(Gfn{0x55}).value(), kDttePinned);
}

TEST(GuestDtt, UnmarkWithoutATableIsEnoent) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(g.unmark(Gfn{0x55}), ENOENT);
}

TEST(GuestDtt, MarkBeyondReachIsErange) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(g.mark(Gfn{uint64_t{1} << 37}), ERANGE);
}

TEST(GuestDtt, ExhaustedPoolIsEnomem) {
    DttBuilderOptions opts;
    opts.pool_pages = 4;  // root + one path of three tables
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create(opts));
    ASSERT_OK(g.mark(Gfn{0x55}));
    EXPECT_ERR(g.mark(Gfn{0x555}), ENOMEM);  // needs a second leaf page
}

TEST(GuestDtt, DropTableClearsTheParentEntryAndFreesThePage) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x55}));

    ASSERT_OK(g.dtt().drop_table(Gfn{0x55}, 1));

    EXPECT_ERR(g.entry(Gfn{0x55}), ENOENT);
    EXPECT_EQ(g.dtt().pages_in_use(), 3u);
}

TEST(GuestDtt, DroppedPageIsReusedZeroed) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.set_entry(Gfn{0x55}, 0x1234));
    ASSERT_OK(g.dtt().drop_table(Gfn{0x55}, 1));

    ASSERT_OK(g.mark(Gfn{0x56}));

    EXPECT_EQ(g.entry(Gfn{0x55}).value(), 0u);
    EXPECT_EQ(g.dtt().pages_in_use(), 4u);
}

TEST(GuestDtt, RootCannotBeDropped) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(g.dtt().drop_table(Gfn{0x55}, 4), EINVAL);
}

TEST(GuestDtt, ConcurrentMarksBuildOnePath) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    constexpr int kThreads = 4;
    constexpr int kMarksPerThread = 200;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&g, t] {
            for (int i = 0; i < kMarksPerThread; ++i) {
                // Each thread marks its own gfns; all share one table path.
                auto r = g.mark(Gfn{static_cast<uint64_t>(t * kMarksPerThread + i) % 1000});
                ASSERT_TRUE(r.has_value());
            }
        });
    }
    for (auto& th : threads) th.join();

    EXPECT_EQ(g.dtt().pages_in_use(), 4u);
    EXPECT_EQ(g.dtt().map_count(Gfn{0}), 1u);
    EXPECT_EQ(g.dtt().map_count(Gfn{799}), 1u);
}

}  // namespace
}  // namespace coiommu::emulator
