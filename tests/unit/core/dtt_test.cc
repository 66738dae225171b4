#include "engine/core/dtt.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <array>
#include <cstdint>
#include <memory>

#include "engine/core/spec.h"
#include "engine/emulator/guest_dtt.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu::core {
namespace {

using testing::DttBuilder;
using testing::DttBuilderOptions;

// ---- level_to_offset -----------------------------------------------------------------------

// 0x1AB is a 9-bit pattern with both end bits set, so an off-by-one shift changes the result.
constexpr uint64_t kPattern = 0x1AB;

TEST(LevelToOffset, LeafUsesLowTenBits) { EXPECT_EQ(level_to_offset(Gfn{0xFFFF'F7FFull}, 1).value(), 0x3FFu); }

TEST(LevelToOffset, LevelTwoUsesBitsTenToEighteen) {
    EXPECT_EQ(level_to_offset(Gfn{(kPattern << 10) | 0x3FF}, 2).value(), kPattern);
}

TEST(LevelToOffset, LevelThreeUsesBitsNineteenToTwentySeven) {
    EXPECT_EQ(level_to_offset(Gfn{(kPattern << 19) | 0x7FFFF}, 3).value(), kPattern);
}

TEST(LevelToOffset, LevelFourUsesBitsTwentyEightToThirtySix) {
    EXPECT_EQ(level_to_offset(Gfn{(kPattern << 28) | (uint64_t{1} << 37)}, 4).value(), kPattern);
}

TEST(LevelToOffset, LevelFiveUsesBitsThirtySevenToFortyFive) {
    EXPECT_EQ(level_to_offset(Gfn{kPattern << 37}, 5).value(), kPattern);
}

TEST(LevelToOffset, LevelSevenUsesTheTopBits) { EXPECT_EQ(level_to_offset(Gfn{~uint64_t{0}}, 7).value(), 0x1FFu); }

TEST(LevelToOffset, LevelZeroIsInvalid) { EXPECT_ERR(level_to_offset(Gfn{1}, 0), EINVAL); }

TEST(LevelToOffset, LevelEightIsInvalidRatherThanAShiftBy64) { EXPECT_ERR(level_to_offset(Gfn{1}, 8), EINVAL); }

TEST(LevelToOffset, HugeLevelIsInvalid) { EXPECT_ERR(level_to_offset(Gfn{1}, ~uint64_t{0}), EINVAL); }

// ---- DttWalker: creation -------------------------------------------------------------------

TEST(DttWalker, LevelZeroIsRejected) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(DttWalker::create(g.mem(), g.root(), 0), EINVAL);
}

TEST(DttWalker, LevelEightIsRejected) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(DttWalker::create(g.mem(), g.root(), 8), EINVAL);
}

TEST(DttWalker, HugeLevelIsRejected) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(DttWalker::create(g.mem(), g.root(), ~uint64_t{0}), EINVAL);
}

TEST(DttWalker, UnalignedRootIsRejected) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(DttWalker::create(g.mem(), offset(g.root(), 8), 4), EINVAL);
}

TEST(DttWalker, RootOutsideRamIsRejected) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_ERR(DttWalker::create(g.mem(), g.mem().end(), 4), EFAULT);
}

TEST(DttWalker, SevenLevelsAreAccepted) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    EXPECT_OK(DttWalker::create(g.mem(), g.root(), 7));
}

// ---- DttWalker: finding the leaf entry the guest uses -------------------------------------

// The host pointer of the guest's own leaf entry for gfn.
uint32_t* guest_leaf_ptr(const DttBuilder& g, Gfn gfn) {
    auto gpa = g.dtt().leaf_entry_gpa(gfn);
    if (!gpa) return nullptr;
    auto p = g.mem().host_ptr(*gpa, sizeof(uint32_t));
    return p ? reinterpret_cast<uint32_t*>(*p) : nullptr;
}

class WalkerLevels : public ::testing::TestWithParam<uint64_t> {};

TEST_P(WalkerLevels, FindsTheLeafEntryTheGuestMarked) {
    DttBuilderOptions opts;
    opts.levels = GetParam();
    opts.ram_bytes = uint64_t{4} << 20;  // 1024 gfns: within even a 1-level table's reach
    opts.pool_pages = 16;
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create(opts));
    const Gfn gfn{0x2A7};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(gfn));

    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, gfn));
    EXPECT_EQ(leaf.load(std::memory_order_relaxed), 1u | kDtteAccessed);
}

INSTANTIATE_TEST_SUITE_P(OneThreeFourFiveSeven, WalkerLevels, ::testing::Values(1u, 3u, 4u, 5u, 7u));

TEST(DttWalker, WritesThroughTheLeafAreSeenByTheGuest) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x123};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(gfn));

    leaf.fetch_or(kDttePinned, std::memory_order_seq_cst);

    EXPECT_TRUE(g.pinned(gfn));
}

TEST(DttWalker, SecondLookupOnTheSameLeafPageDoesNotWalk) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x10}));
    ASSERT_OK(g.mark(Gfn{0x3FF}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x10}));

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(Gfn{0x3FF}));

    EXPECT_EQ(w.slow_walks(), 1u);
    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, Gfn{0x3FF}));
}

TEST(DttWalker, LookupBelowTheCachedGfnOnTheSamePageUsesTheCursor) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x7FF}));
    ASSERT_OK(g.mark(Gfn{0x400}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x7FF}));

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(Gfn{0x400}));

    EXPECT_EQ(w.slow_walks(), 1u);
    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, Gfn{0x400}));
}

TEST(DttWalker, LookupOnAnotherLeafPageWalks) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x3FF}));
    ASSERT_OK(g.mark(Gfn{0x400}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x3FF}));

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(Gfn{0x400}));

    EXPECT_EQ(w.slow_walks(), 2u);
    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, Gfn{0x400}));
}

TEST(DttWalker, FastPathIgnoresUpperLevelsAndSlowPathSeesThem) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn first{0x10};
    const Gfn same_page{0x11};
    const Gfn other_page{0x410};  // shares first's level-3 entry, not its leaf page
    ASSERT_OK(g.mark(first));
    ASSERT_OK(g.mark(same_page));
    ASSERT_OK(g.mark(other_page));
    uint32_t* expected = guest_leaf_ptr(g, same_page);
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(first));
    // The guest tears down the level-3 entry above both leaf pages.
    ASSERT_OK(g.dtt().set_upper_entry(first, 3, 0));

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(same_page));
    EXPECT_EQ(leaf.address(), expected);
    EXPECT_ERR(w.leaf(other_page), ENOENT);
}

TEST(DttWalker, ResetCursorForcesAWalk) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x10}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x10}));
    ASSERT_OK(g.dtt().set_upper_entry(Gfn{0x10}, 2, 0));

    w.reset_cursor();

    EXPECT_ERR(w.leaf(Gfn{0x11}), ENOENT);
}

TEST(DttWalker, FailedLookupKeepsThePreviousCursor) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x10}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x10}));
    EXPECT_ERR(w.leaf(Gfn{0x800}), ENOENT);

    ASSERT_OK(w.leaf(Gfn{0x11}));

    EXPECT_EQ(w.slow_walks(), 2u);  // the failed walk cached nothing and evicted nothing
}

class WalkerAbsentLevel : public ::testing::TestWithParam<uint64_t> {};

TEST_P(WalkerAbsentLevel, AbsentEntryIsEnoentNamingTheLevel) {
    const uint64_t level = GetParam();
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK(g.dtt().drop_table(gfn, level - 1));  // clears the level-`level` entry
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    auto leaf = w.leaf(gfn);

    ASSERT_FALSE(leaf.has_value());
    EXPECT_EQ(leaf.error().code, ENOENT);
    EXPECT_NE(leaf.error().context.find("DTT absent at level " + std::to_string(level)), std::string::npos)
        << leaf.error().context;
}

INSTANTIATE_TEST_SUITE_P(EveryUpperLevelOfFour, WalkerAbsentLevel, ::testing::Values(2u, 3u, 4u));

TEST(DttWalker, NeverMarkedGfnIsAbsentAtTheRoot) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_ERR(w.leaf(Gfn{0x42}), ENOENT);
}

TEST(DttWalker, UpperTablePageOutsideRamIsEfault) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK(g.dtt().set_upper_entry(gfn, 4, raw(g.mem().end()) | kDttEntryPresent));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_ERR(w.leaf(gfn), EFAULT);
}

TEST(DttWalker, LeafTablePageOutsideRamIsEfault) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK(g.dtt().set_upper_entry(gfn, 2, (uint64_t{1} << 40) | kDttEntryPresent));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_ERR(w.leaf(gfn), EFAULT);
}

TEST(DttWalker, TablePointerWrappingAddressSpaceIsEfault) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK(g.dtt().set_upper_entry(gfn, 3, ~uint64_t{0}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_ERR(w.leaf(gfn), EFAULT);
}

TEST(DttWalker, LowFlagBitsOfAnUpperEntryAreIgnored) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK_AND_ASSIGN(auto leaf_table, g.dtt().table_gpa(gfn, 1));
    ASSERT_OK(g.dtt().set_upper_entry(gfn, 2, raw(leaf_table) | 0xFFF));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(gfn));

    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, gfn));
}

TEST(DttWalker, GfnBeyondFourLevelReachIsErange) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    // Bit 37 is the first a 4-level table cannot index; crosvm would alias it onto gfn 0.
    EXPECT_ERR(w.leaf(Gfn{uint64_t{1} << 37}), ERANGE);
}

TEST(DttWalker, GfnBeyondOneLevelReachIsErange) {
    DttBuilderOptions opts;
    opts.levels = 1;
    opts.ram_bytes = uint64_t{4} << 20;
    opts.pool_pages = 4;
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create(opts));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_ERR(w.leaf(Gfn{1024}), ERANGE);
}

TEST(DttWalker, SevenLevelsReachTheLargestGfn) {
    DttBuilderOptions opts;
    opts.levels = 7;
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create(opts));
    const Gfn top{~uint64_t{0}};
    ASSERT_OK(g.mark(top));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(top));

    EXPECT_EQ(leaf.address(), guest_leaf_ptr(g, top));
}

TEST(DttWalker, FindReportsWhereAnAbsentWalkStopped) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    ASSERT_OK(g.dtt().drop_table(gfn, 2));  // clears the level-3 entry
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    const LeafLookup r = w.find(gfn);

    EXPECT_EQ(r.status, LeafStatus::Absent);
    EXPECT_EQ(r.level, 3u);
}

TEST(DttWalker, FindReportsATablePageOutsideRam) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    const Gfn gfn{0x1234};
    ASSERT_OK(g.mark(gfn));
    const Gpa bogus{uint64_t{1} << 40};
    ASSERT_OK(g.dtt().set_upper_entry(gfn, 2, raw(bogus) | kDttEntryPresent));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    const LeafLookup r = w.find(gfn);

    EXPECT_EQ(r.status, LeafStatus::OutsideRam);
    EXPECT_EQ(r.level, 1u);
    EXPECT_EQ(r.table, bogus);
}

TEST(DttWalker, FindReportsAGfnOutOfReach) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    EXPECT_EQ(w.find(Gfn{uint64_t{1} << 37}).status, LeafStatus::OutOfReach);
}

TEST(DttWalker, FindAgreesWithLeaf) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x77}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());

    const LeafLookup r = w.find(Gfn{0x77});

    ASSERT_EQ(r.status, LeafStatus::Found);
    EXPECT_EQ(r.entry.address(), guest_leaf_ptr(g, Gfn{0x77}));
}

// Two RAM regions with a hole, as below and above a PCI hole; the DTT pool lives in the upper one.
constexpr uint64_t kMiB = uint64_t{1} << 20;
struct TwoRegionGuest {
    GuestMemory mem;
    std::unique_ptr<emulator::GuestDtt> dtt;
};
TwoRegionGuest make_two_region_guest() {
    const std::array<RegionSpec, 2> regions{{{Gpa{0}, 2 * kMiB}, {Gpa{4 * kMiB}, 2 * kMiB}}};
    TwoRegionGuest g{std::move(GuestMemory::create(regions).value()), nullptr};
    g.dtt = std::move(
        emulator::GuestDtt::create(g.mem, {.levels = 4, .pool_base = Gpa{4 * kMiB}, .pool_pages = 64, .ncpus = 1})
            .value());
    return g;
}

TEST(DttWalker, FollowsTablesFromOneRegionIntoAnother) {
    auto g = make_two_region_guest();
    const Gfn gfn{0x15};
    ASSERT_OK(g.dtt->set_entry(gfn, 0x42));
    // The guest moves the leaf page into the lower region (a page of its data area).
    const Gpa moved{0x100000};
    ASSERT_OK(g.mem.write_obj<uint32_t>(offset(moved, raw(gfn) * 4), 0x43));
    ASSERT_OK(g.dtt->set_upper_entry(gfn, 2, raw(moved) | kDttEntryPresent));
    ASSERT_OK_AND_ASSIGN(auto w, DttWalker::create(g.mem, g.dtt->dtt_root(), 4));

    ASSERT_OK_AND_ASSIGN(auto leaf, w.leaf(gfn));

    EXPECT_EQ(leaf.load(std::memory_order_relaxed), 0x43u);
}

TEST(DttWalker, TablePageInTheHoleBetweenRegionsIsEfault) {
    auto g = make_two_region_guest();
    const Gfn gfn{0x15};
    ASSERT_OK(g.dtt->set_entry(gfn, 0x42));
    ASSERT_OK(g.dtt->set_upper_entry(gfn, 2, (3 * kMiB) | kDttEntryPresent));
    ASSERT_OK_AND_ASSIGN(auto w, DttWalker::create(g.mem, g.dtt->dtt_root(), 4));

    EXPECT_ERR(w.leaf(gfn), EFAULT);
}

TEST(DttWalker, CopiesHaveIndependentCursors) {
    ASSERT_OK_AND_ASSIGN(auto g, DttBuilder::create());
    ASSERT_OK(g.mark(Gfn{0x10}));
    ASSERT_OK_AND_ASSIGN(auto w, g.walker());
    ASSERT_OK(w.leaf(Gfn{0x10}));
    DttWalker copy = w;
    copy.reset_cursor();
    ASSERT_OK(g.dtt().set_upper_entry(Gfn{0x10}, 2, 0));

    EXPECT_OK(w.leaf(Gfn{0x11}));
    EXPECT_ERR(copy.leaf(Gfn{0x11}), ENOENT);
}

}  // namespace
}  // namespace coiommu::core
