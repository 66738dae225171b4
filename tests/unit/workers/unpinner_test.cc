// ExtentUnpinner on one thread: extent unpin as a unit, LRU generations (upstream crosvm's, over
// extents), balloon force-unpin, park, teardown.
#include "engine/workers/unpinner.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <vector>

#include "tests/unit/workers/pin_path_fixture.h"

namespace coiommu::workers::test {
namespace {

constexpr uint64_t kThreshold = 3;  // PinPathOptions' default gen threshold

std::vector<Gfn> range(uint64_t first, uint64_t n) {
    std::vector<Gfn> g;
    for (uint64_t i = 0; i < n; ++i) g.push_back(gfn_at(first + i));
    return g;
}

// Pins [first, first+n) as one extent and leaves it idle: map count back to 0, ACCESSED cleared
// (as after one second-chance scan).
void pin_idle_extent(PinPath& p, uint64_t first, uint64_t n) {
    (void)p.map_range(first, n);
    p.unmark_range(first, n);
    for (Gfn g : range(first, n)) p.clear_accessed(g);
}

uint32_t count_of(PinPath& p, Gfn g) { return p.entry(g) & core::kDtteMapCountMask; }

// ---- extent unpin as a unit -------------------------------------------------------------------

TEST(ExtentUnpin, IdleExtentIsUnmappedWithOneCall) {
    PinPath p;
    pin_idle_extent(p, 0, 16);
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::No), UnpinResult::Unpinned);
    EXPECT_EQ(p.unmap_calls(), 1u);
    EXPECT_TRUE(p.backend().mappings().empty());
    EXPECT_EQ(p.table().mapped_pages(), 0u);
    EXPECT_EQ(p.extents().extents(), 0u);
    for (Gfn g : range(0, 16)) EXPECT_FALSE(p.pinned(g));
}

TEST(ExtentUnpin, OneBusyPageAbortsAndRestoresPinnedOnAll) {
    PinPath p;
    pin_idle_extent(p, 0, 16);
    ASSERT_OK(p.guest().mark(gfn_at(7)));  // the guest maps one page again
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::No), UnpinResult::NotUnpinned);
    EXPECT_EQ(p.unmap_calls(), 0u);
    for (Gfn g : range(0, 16)) EXPECT_TRUE(p.pinned(g)) << raw(g);
    EXPECT_TRUE(p.backend().is_mapped(iova_of(gfn_at(0)), 16 * kPageSize));
}

TEST(ExtentUnpin, BusyAbortClearsAccessedOnTheBusyPage) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    ASSERT_OK(p.guest().mark(gfn_at(2)));  // count 1 + ACCESSED
    (void)p.unpinner().unpin_extent(gfn_at(0), core::Force::No);
    EXPECT_EQ(p.entry(gfn_at(2)) & core::kDtteAccessed, 0u);
    EXPECT_EQ(count_of(p, gfn_at(2)), 1u);
}

TEST(ExtentUnpin, GuestClearedPinnedOnAnIdlePageDoesNotBlockTheUnpin) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    ASSERT_OK(p.guest().dtt().clear_pinned(gfn_at(1)));
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::No), UnpinResult::Unpinned);
    EXPECT_TRUE(p.backend().mappings().empty());
}

TEST(ExtentUnpin, MissingDttTableCountsAsIdle) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    ASSERT_OK(p.guest().dtt().drop_table(gfn_at(0), 1));  // the shrinker (or a hostile guest)
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::No), UnpinResult::Unpinned);
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(ExtentUnpin, FailedUnmapRestoresPinnedAndKeepsTheRecord) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    p.backend().fail_nth(dma::Op::Unmap, 1, EIO);
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::No), UnpinResult::Failed);
    for (Gfn g : range(0, 4)) EXPECT_TRUE(p.pinned(g));
    EXPECT_EQ(p.table().mapped_pages(), 4u);
    EXPECT_EQ(p.extents().length(gfn_at(0)), 4u);
}

TEST(ExtentUnpin, AMemberIsNotAHead) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(2), core::Force::No), UnpinResult::NotPinned);
    EXPECT_EQ(p.unmap_calls(), 0u);
}

TEST(ExtentUnpin, ForceClearsAccessedFirst) {
    PinPath p;
    (void)p.map_range(0, 4);
    p.unmark_range(0, 4);  // count 0, ACCESSED still set
    EXPECT_EQ(p.unpinner().unpin_extent(gfn_at(0), core::Force::Yes), UnpinResult::Unpinned);
}

// ---- LRU generations --------------------------------------------------------------------------

TEST(Lru, NewExtentsEnterNewGen) {
    PinPath p;
    (void)p.map_range(0, 4);
    (void)p.map_range(10, 4);
    p.unpinner().drain();
    ASSERT_EQ(p.unpinner().new_gen().size(), 2u);
    EXPECT_EQ(p.unpinner().new_gen()[0].head, raw(gfn_at(0)));
}

TEST(Lru, SecondChanceFirstScanClearsAccessedSecondUnpins) {
    PinPath p;
    (void)p.map_range(0, 4);
    p.unmark_range(0, 4);  // idle but ACCESSED
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 4u);
    EXPECT_EQ(p.entry(gfn_at(0)) & core::kDtteAccessed, 0u);
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 0u);
    EXPECT_TRUE(p.unpinner().new_gen().empty());
}

TEST(Lru, PageAccessedAgainBetweenScansSurvives) {
    PinPath p;
    (void)p.map_range(0, 1);
    p.unmark_range(0, 1);
    p.unpinner().tick();      // clears ACCESSED
    (void)p.map_range(0, 1);  // used again (no request: already pinned)
    p.unmark_range(0, 1);
    p.unpinner().tick();  // ACCESSED again: second chance
    EXPECT_EQ(p.table().mapped_pages(), 1u);
}

TEST(Lru, BusyForThresholdTicksMovesToOldGen) {
    PinPath p;
    (void)p.map_range(0, 1);  // stays mapped by the guest: busy
    for (uint64_t i = 0; i < kThreshold; ++i) p.unpinner().tick();
    EXPECT_TRUE(p.unpinner().new_gen().empty());
    ASSERT_EQ(p.unpinner().old_gen().size(), 1u);
}

TEST(Lru, OldGenIsScannedOnlyEveryThresholdTicks) {
    PinPath p;
    (void)p.map_range(0, 1);
    for (uint64_t i = 0; i < kThreshold; ++i) p.unpinner().tick();  // now in old_gen
    ASSERT_EQ(p.unpinner().old_gen().size(), 1u);
    p.unmark_range(0, 1);
    p.clear_accessed(gfn_at(0));  // idle from now on
    for (uint64_t i = 0; i + 1 < kThreshold; ++i) {
        p.unpinner().tick();
        EXPECT_EQ(p.table().mapped_pages(), 1u) << "old_gen must not be scanned at tick " << i;
    }
    p.unpinner().tick();  // the threshold-th tick scans old_gen
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(Lru, BusyOldGenExtentStaysInOldGen) {
    PinPath p;
    (void)p.map_range(0, 1);
    for (uint64_t i = 0; i < 2 * kThreshold; ++i) p.unpinner().tick();
    EXPECT_EQ(p.unpinner().old_gen().size(), 1u);
    EXPECT_TRUE(p.unpinner().new_gen().empty());
}

TEST(Lru, LimitCapsPagesUnpinnedPerTick) {
    PinPath p(with_lru(UnpinPolicy::Lru, 4, kThreshold));
    for (uint64_t i = 0; i < 4; ++i) pin_idle_extent(p, 10 * i, 2);
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 4u);  // two 2-page extents unpinned, two left
    EXPECT_EQ(p.unpinner().new_gen().size(), 2u);
}

TEST(Lru, LimitMayBeExceededByOneExtent) {
    PinPath p(with_lru(UnpinPolicy::Lru, 3, kThreshold));
    pin_idle_extent(p, 0, 8);
    pin_idle_extent(p, 20, 8);
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 8u);  // the first 8-page extent went whole; then the limit stops
}

TEST(Lru, OldGenScanUsingTheLimitSkipsNewGen) {
    PinPath p(with_lru(UnpinPolicy::Lru, 1, 1));  // threshold 1: old_gen every tick
    (void)p.map_range(0, 1);
    p.unpinner().tick();  // busy once -> old_gen (busy >= 1)
    ASSERT_EQ(p.unpinner().old_gen().size(), 1u);
    p.unmark_range(0, 1);
    p.clear_accessed(gfn_at(0));
    pin_idle_extent(p, 10, 1);
    p.unpinner().drain();
    p.unpinner().tick();  // old_gen unpins gfn 0 = the limit: new_gen not scanned
    EXPECT_FALSE(p.table().mapped(gfn_at(0)));
    EXPECT_TRUE(p.table().mapped(gfn_at(10)));
}

TEST(Lru, ThresholdZeroKeepsABusyExtentTracked) {
    PinPath p(with_lru(UnpinPolicy::Lru, std::nullopt, 0));
    (void)p.map_range(0, 1);
    p.unpinner().tick();  // busy: crosvm would drop it from tracking for good
    EXPECT_EQ(p.unpinner().new_gen().size(), 1u);
    EXPECT_TRUE(p.unpinner().old_gen().empty());
    p.unmark_range(0, 1);
    p.clear_accessed(gfn_at(0));
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 0u) << "it is still LRU-unpinned once idle";
}

TEST(Lru, PolicyOffNeverUnpins) {
    PinPath p(with_lru(UnpinPolicy::Off, std::nullopt, kThreshold));
    pin_idle_extent(p, 0, 4);
    p.unpinner().tick();
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 4u);
}

TEST(Lru, PolicyOffKeepsNoGenerations) {
    PinPath p(with_lru(UnpinPolicy::Off, std::nullopt, kThreshold));
    (void)p.map_range(0, 4);
    p.unpinner().drain();
    EXPECT_TRUE(p.unpinner().new_gen().empty());
}

TEST(Lru, ParkedTickTouchesNothing) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    p.gate().park();
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 4u);
    p.gate().unpark();
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(Lru, FailedUnmapRequeuesTheExtent) {
    PinPath p;
    pin_idle_extent(p, 0, 2);
    p.backend().fail_nth(dma::Op::Unmap, 1, EIO);
    p.unpinner().tick();
    EXPECT_EQ(p.unpinner().new_gen().size(), 1u);
    p.unpinner().tick();
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(Lru, ScanRecordsStats) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    p.unpinner().tick();
    const auto t = p.totals();
    EXPECT_EQ(t.unpin_scans[telemetry::ScanKind::Lru], 1u);
    EXPECT_EQ(t.pages_unpinned, 4u);
    EXPECT_EQ(t.unpin_attempts[telemetry::UnpinResult::Unpinned], 4u);
    EXPECT_NE(p.stats().gauges().last_unpin_run_unix_ns.load(), 0u);
}

// ---- balloon ----------------------------------------------------------------------------------

TEST(Balloon, UnpinsEveryPageOfTheRanges) {
    PinPath p;
    (void)p.map_range(0, 8);
    p.unmark_range(0, 8);  // ACCESSED stays: force clears it
    const GfnRange r{gfn_at(0), 8};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(Balloon, RangeWithNothingPinnedSucceeds) {
    PinPath p;
    const GfnRange r{gfn_at(100), 32};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
}

TEST(Balloon, AFailingRangeStopsAtItsPageAndTheNextRangeStillRuns) {
    PinPath p;
    (void)p.map_range(0, 1);  // gfn 0 stays DMA-mapped by the guest
    (void)p.map(range(2, 1));
    p.unmark_range(2, 1);
    (void)p.map(range(5, 1));
    p.unmark_range(5, 1);
    const GfnRange ranges[] = {{gfn_at(0), 3}, {gfn_at(5), 1}};
    telemetry::BalloonResult per_range[2]{};
    EXPECT_EQ(p.unpinner().balloon(ranges, per_range), telemetry::BalloonResult::Failed);
    EXPECT_EQ(per_range[0], telemetry::BalloonResult::Failed);
    EXPECT_EQ(per_range[1], telemetry::BalloonResult::Success);
    EXPECT_TRUE(p.table().mapped(gfn_at(2))) << "the failing range stops at its failing page";
    EXPECT_FALSE(p.table().mapped(gfn_at(5))) << "the next range runs";
    EXPECT_TRUE(p.pinned(gfn_at(0)));
}

TEST(Balloon, FreePageReportingRangesAreAnsweredOneByOne) {
    PinPath p;
    std::vector<GfnRange> ranges;
    for (uint64_t i = 0; i < 4; ++i) {
        pin_idle_extent(p, i * 1024, 16);
        ranges.push_back(GfnRange{gfn_at(i * 1024), 512});
    }
    (void)p.map_range(2 * 1024 + 100, 1);  // busy in range 2
    std::vector<telemetry::BalloonResult> per_range(ranges.size(), telemetry::BalloonResult::Failed);
    EXPECT_EQ(p.unpinner().balloon(ranges, per_range), telemetry::BalloonResult::Failed);
    EXPECT_EQ(per_range, (std::vector<telemetry::BalloonResult>{
                             telemetry::BalloonResult::Success, telemetry::BalloonResult::Success,
                             telemetry::BalloonResult::Failed, telemetry::BalloonResult::Success}));
    EXPECT_EQ(p.table().mapped_pages(), 1u) << "range 2: the idle extent before its busy page went too";
}

TEST(Balloon, APageWeDoNotMapIsLeftAloneEvenWhenTheGuestMapsIt) {
    PinPath p;
    ASSERT_OK(p.guest().mark(gfn_at(3)));  // the guest maps it but it is not pinned
    const uint32_t before = p.entry(gfn_at(3));
    const GfnRange r{gfn_at(3), 1};
    // crosvm would answer Failed (a map count on a ballooned page); no mapping of ours backs it,
    // so the balloon may take it (engine/README.md, "LRU and balloon unpinning").
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
    EXPECT_EQ(p.entry(gfn_at(3)), before) << "the DTT of a page we do not map is not touched";
}

TEST(Balloon, RangeAcrossAHoleOrBeyondRamVisitsOnlyGuestRam) {
    PinPath p;
    pin_idle_extent(p, 0, 4);
    const GfnRange r{gfn_at(0), ~uint64_t{0} - raw(gfn_at(0))};
    telemetry::BalloonResult one{};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}, {&one, 1}), telemetry::BalloonResult::Success);
    EXPECT_EQ(one, telemetry::BalloonResult::Success);
    EXPECT_EQ(p.table().mapped_pages(), 0u);
}

TEST(Balloon, ExtentReachingOutsideTheRangeIsReleasedWhenIdle) {
    PinPath p;
    (void)p.map_range(0, 8);
    p.unmark_range(0, 8);
    const GfnRange r{gfn_at(2), 1};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
    EXPECT_EQ(p.table().mapped_pages(), 0u);  // the whole extent: type1 cannot split it
}

TEST(Balloon, ExtentWithABusyMemberOutsideTheRangeFails) {
    PinPath p;
    (void)p.map_range(0, 8);
    p.unmark_range(0, 7);  // gfn 7 stays mapped by the guest
    const GfnRange r{gfn_at(2), 1};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Failed);
    EXPECT_EQ(p.table().mapped_pages(), 8u);
    for (Gfn g : range(0, 8)) EXPECT_TRUE(p.pinned(g));
}

TEST(Balloon, HugeCountIsClampedToGuestRam) {
    PinPath p;
    const GfnRange r{gfn_at(0), ~uint64_t{0}};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
}

TEST(Balloon, ForgedPinnedWithoutMappingSucceedsAndIsNotOursToClear) {
    PinPath p;
    ASSERT_OK(p.guest().dtt().forge_pinned(gfn_at(4)));
    const GfnRange r{gfn_at(4), 1};
    EXPECT_EQ(p.unpinner().balloon({&r, 1}), telemetry::BalloonResult::Success);
    EXPECT_EQ(p.unmap_calls(), 0u);
}

TEST(Balloon, CountsTheRequestResult) {
    PinPath p;
    const GfnRange r{gfn_at(0), 4};
    (void)p.unpinner().balloon({&r, 1});
    EXPECT_EQ(p.totals().balloon_requests[telemetry::BalloonResult::Success], 1u);
}

// ---- teardown ---------------------------------------------------------------------------------

TEST(Teardown, UnmapsEveryExtentEvenBusyOnesAndClearsPinned) {
    PinPath p;
    (void)p.map_range(0, 8);  // busy (the guest still maps it)
    pin_idle_extent(p, 20, 4);
    (void)p.map_range(40, 1);
    EXPECT_EQ(p.unpinner().teardown(), 13u);
    EXPECT_TRUE(p.backend().mappings().empty());
    EXPECT_EQ(p.table().mapped_pages(), 0u);
    EXPECT_FALSE(p.pinned(gfn_at(0)));
    EXPECT_FALSE(p.pinned(gfn_at(40)));
}

TEST(Teardown, WithPolicyOffFindsEveryExtentInThePinTable) {
    PinPath p(with_lru(UnpinPolicy::Off, std::nullopt, kThreshold));
    (void)p.map_range(0, 8);
    (void)p.map_range(30, 2);
    EXPECT_EQ(p.unpinner().teardown(), 10u);
    EXPECT_TRUE(p.backend().mappings().empty());
    EXPECT_FALSE(p.pinned(gfn_at(31)));
}

TEST(Teardown, LeavesForeignMappingsAlone) {
    PinPath p;
    ASSERT_OK(p.backend().map(iova_of(gfn_at(3)), Hva{0x10000}, kPageSize, dma::Prot::ReadWrite));
    (void)p.map_range(0, 8);
    (void)p.unpinner().teardown();
    ASSERT_EQ(p.backend().mappings().size(), 1u);
    EXPECT_EQ(p.backend().mappings()[0].iova, iova_of(gfn_at(3)));
}

}  // namespace
}  // namespace coiommu::workers::test
