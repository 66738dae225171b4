// The fast pin path, one request at a time (no threads): coalescing, skips, fallbacks, ENOSPC and
// every bad-guest-input case, each checked for "slot completed, error counted, host consistent".
#include "engine/workers/fast_pinner.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <vector>

#include "tests/unit/workers/pin_path_fixture.h"

namespace coiommu::workers::test {
namespace {

using telemetry::PinFailureReason;

std::vector<Gfn> range(uint64_t first, uint64_t n) {
    std::vector<Gfn> g;
    for (uint64_t i = 0; i < n; ++i) g.push_back(gfn_at(first + i));
    return g;
}

// Every page recorded as ours is mapped in the backend, and the backend maps nothing else of ours.
void expect_consistent(PinPath& p) {
    uint64_t pages = 0;
    for (const auto& m : p.backend().mappings()) pages += m.size / kPageSize;
    EXPECT_EQ(p.table().mapped_pages(), pages);
}

// ---- the good path ----------------------------------------------------------------------------

TEST(FastPinner, SinglePageIsMappedAndPinned) {
    PinPath p;
    const ServeReport r = p.map(range(0, 1));
    EXPECT_EQ(r.result, 0);
    EXPECT_TRUE(p.pinned(gfn_at(0)));
    EXPECT_TRUE(p.mapped(gfn_at(0)));
    EXPECT_EQ(p.slot(), 0u);
    EXPECT_EQ(p.totals().pages_pinned, 1u);
}

TEST(FastPinner, ContiguousBatchIsOneMapCall) {
    PinPath p;
    const ServeReport r = p.map_range(0, 64);
    EXPECT_EQ(r.result, 0);
    EXPECT_EQ(p.map_calls(), 1u);
    ASSERT_EQ(p.backend().mappings().size(), 1u);
    EXPECT_EQ(p.backend().mappings()[0].size, 64 * kPageSize);
    for (Gfn g : range(0, 64)) EXPECT_TRUE(p.pinned(g));
}

TEST(FastPinner, ContiguousBatchIsRecordedAsOneExtent) {
    PinPath p;
    (void)p.map_range(0, 64);
    EXPECT_EQ(p.extents().extents(), 1u);
    EXPECT_EQ(p.extents().length(gfn_at(0)), 64u);
    EXPECT_EQ(p.extents().head_of(gfn_at(63)), gfn_at(0));
}

TEST(FastPinner, BatchWithAGapIsTwoMapCalls) {
    PinPath p;
    std::vector<Gfn> g = range(0, 8);
    for (Gfn x : range(20, 8)) g.push_back(x);
    (void)p.map(g);
    EXPECT_EQ(p.map_calls(), 2u);
    EXPECT_EQ(p.extents().extents(), 2u);
}

TEST(FastPinner, CoalesceOffMapsPageByPage) {
    PinPath p(with_coalesce(Coalesce::Off));
    (void)p.map_range(0, 8);
    EXPECT_EQ(p.map_calls(), 8u);
    EXPECT_EQ(p.backend().mappings().size(), 8u);
    for (Gfn g : range(0, 8)) EXPECT_TRUE(p.pinned(g));
}

TEST(FastPinner, DescendingBatchIsSortedAndCoalesced) {
    PinPath p;
    std::vector<Gfn> g = range(0, 16);
    std::reverse(g.begin(), g.end());
    (void)p.map(g);
    EXPECT_EQ(p.map_calls(), 1u);
}

TEST(FastPinner, RepeatedGfnIsMappedOnce) {
    PinPath p;
    const std::vector<Gfn> g{gfn_at(0), gfn_at(1), gfn_at(0), gfn_at(1)};
    (void)p.map(g);
    EXPECT_EQ(p.map_calls(), 1u);
    EXPECT_EQ(p.table().mapped_pages(), 2u);
}

TEST(FastPinner, RunLongerThanAnExtentIsSplit) {
    PinPath p;
    (void)p.map_range(0, kMaxExtentPages + 88);
    EXPECT_EQ(p.map_calls(), 2u);
    EXPECT_EQ(p.extents().length(gfn_at(0)), kMaxExtentPages);
    EXPECT_EQ(p.extents().length(gfn_at(kMaxExtentPages)), 88u);
}

TEST(FastPinner, AlreadyPinnedPagesCostNoDmaCall) {
    PinPath p;
    (void)p.map_range(0, 8);
    const ServeReport r = p.map_range(0, 8);
    EXPECT_EQ(r.result, 0);
    EXPECT_EQ(p.map_calls(), 1u);
    EXPECT_EQ(p.totals().pages_already_pinned, 8u);
}

TEST(FastPinner, GuestClearedPinnedIsSetAgainWithoutASecondMap) {
    PinPath p;
    (void)p.map_range(0, 1);
    ASSERT_OK(p.guest().dtt().clear_pinned(gfn_at(0)));
    (void)p.map_range(0, 1);
    EXPECT_TRUE(p.pinned(gfn_at(0)));
    EXPECT_EQ(p.map_calls(), 1u);
}

TEST(FastPinner, GuestForgedPinnedIsStillMapped) {
    PinPath p;
    ASSERT_OK(p.guest().dtt().forge_pinned(gfn_at(0)));
    (void)p.map_range(0, 1);
    EXPECT_TRUE(p.mapped(gfn_at(0)));
    EXPECT_EQ(p.map_calls(), 1u);
}

TEST(FastPinner, PartlyPinnedRunMapsOnlyTheMissingPages) {
    PinPath p;
    (void)p.map_range(4, 4);  // pages 4..7 pinned
    (void)p.map_range(0, 12);
    EXPECT_EQ(p.map_calls(), 3u);  // 4..7, then 0..3 and 8..11
    for (Gfn g : range(0, 12)) EXPECT_TRUE(p.pinned(g));
    expect_consistent(p);
}

// ---- DMA outcomes -----------------------------------------------------------------------------

TEST(FastPinner, ForeignMappingMakesTheRunFallBackPageByPage) {
    PinPath p;
    // Someone else maps gfn 3 in the same container (EEXIST for our run).
    ASSERT_OK(p.backend().map(iova_of(gfn_at(3)), Hva{0x10000}, kPageSize, dma::Prot::ReadWrite));
    (void)p.map_range(0, 8);
    EXPECT_EQ(p.map_calls(), 1u + 1u + 8u);  // the foreign map, the run, then page by page
    for (Gfn g : range(0, 8)) EXPECT_TRUE(p.pinned(g));
    EXPECT_EQ(p.table().mapped_pages(), 7u);  // gfn 3 is not ours
    EXPECT_FALSE(p.table().mapped(gfn_at(3)));
}

TEST(FastPinner, NoSpaceCompletesWithPinnedClear) {
    PinPath p(with_entry_limit(0));
    const ServeReport r = p.map_range(0, 4);
    EXPECT_EQ(r.result, -ENOSPC);
    EXPECT_EQ(p.slot(), 0u);
    for (Gfn g : range(0, 4)) EXPECT_FALSE(p.pinned(g));
    EXPECT_EQ(p.totals().pin_failures[PinFailureReason::NoSpace], 4u);
    EXPECT_EQ(p.totals().requests_failed, 1u);
}

TEST(FastPinner, NoSpaceStopsFurtherMapCallsOfTheRequest) {
    PinPath p(with_entry_limit(1));
    std::vector<Gfn> g = range(0, 2);
    for (Gfn x : range(10, 2)) g.push_back(x);
    for (Gfn x : range(20, 2)) g.push_back(x);
    (void)p.map(g);
    EXPECT_EQ(p.map_calls(), 2u);  // the first run fits, the second hits the limit, the third is not tried
    EXPECT_TRUE(p.pinned(gfn_at(0)));
    EXPECT_FALSE(p.pinned(gfn_at(20)));
    EXPECT_EQ(p.totals().pin_failures[PinFailureReason::NoSpace], 4u);
}

TEST(FastPinner, MapErrorLeavesThatRunUnpinnedAndGoesOn) {
    PinPath p;
    p.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    std::vector<Gfn> g = range(0, 2);
    for (Gfn x : range(10, 2)) g.push_back(x);
    const ServeReport r = p.map(g);
    EXPECT_EQ(r.result, -ENOMEM);
    EXPECT_FALSE(p.pinned(gfn_at(0)));
    EXPECT_TRUE(p.pinned(gfn_at(10)));
    EXPECT_EQ(p.totals().pin_failures[PinFailureReason::VfioMap], 2u);
    expect_consistent(p);
}

TEST(FastPinner, MapFailureClearsAForgedPinned) {
    PinPath p;
    ASSERT_OK(p.guest().dtt().forge_pinned(gfn_at(0)));
    p.backend().fail_nth(dma::Op::Map, 1, EFAULT);
    (void)p.map_range(0, 1);
    EXPECT_FALSE(p.pinned(gfn_at(0)));
}

// ---- bad guest input --------------------------------------------------------------------------

class BadInput : public ::testing::Test {
protected:
    void expect_rejected(const ServeReport& r, int err) {
        EXPECT_EQ(r.result, -err);
        EXPECT_EQ(p.slot(), 0u) << "the request must complete";
        EXPECT_EQ(p.totals().requests_failed, 1u);
        EXPECT_GE(p.totals().pin_failures[PinFailureReason::InvalidRequest], 1u);
        expect_consistent(p);
    }
    PinPath p;
};

TEST_F(BadInput, UnknownBdfOnASinglePage) {
    ASSERT_OK(p.guest().mark(gfn_at(0)));
    const ServeReport r = p.serve((raw(gfn_at(0)) << 16) | kOtherBdf);
    expect_rejected(r, EPERM);
    EXPECT_EQ(p.map_calls(), 0u);
}

TEST_F(BadInput, UnknownBdfOnABatch) {
    const auto g = range(0, 4);
    const ServeReport r = p.serve(p.request_value(g, kOtherBdf));
    expect_rejected(r, EPERM);
    EXPECT_EQ(p.map_calls(), 0u);
}

TEST_F(BadInput, GfnBeyondGuestRam) {
    const Gfn beyond{p.mem().gfn_span() + 5};
    ASSERT_OK(p.guest().mark(beyond));  // the DTT can describe it; the host must never map it
    const ServeReport r = p.serve((raw(beyond) << 16) | kBdf);
    expect_rejected(r, EFAULT);
    EXPECT_EQ(p.map_calls(), 0u);
}

TEST_F(BadInput, BatchHeaderOutsideRam) {
    const ServeReport r = p.serve(kRamBytes | core::kPinPagesInBatch);
    expect_rejected(r, EFAULT);
}

TEST_F(BadInput, GfnListCrossingTheEndOfRam) {
    const Gpa near_end{kRamBytes - 32};  // header fits, two gfns fit, the third does not
    p.write_batch(kBdf, 3, {}, near_end);
    const ServeReport r = p.serve(raw(near_end) | core::kPinPagesInBatch);
    expect_rejected(r, EFAULT);
}

TEST_F(BadInput, HugeNrPagesIsRejectedWithoutWork) {
    p.write_batch(kBdf, uint64_t{1} << 62, {});
    const ServeReport r = p.serve(raw(kBatchGpa) | core::kPinPagesInBatch);
    EXPECT_NE(r.result, 0);
    EXPECT_EQ(p.slot(), 0u);
    EXPECT_EQ(p.map_calls(), 0u);
}

TEST_F(BadInput, NrPagesAboveTheLimitIsE2big) {
    const auto g = range(0, kMaxBatch + 1);
    p.write_batch(kBdf, g.size(), g);
    const ServeReport r = p.serve(raw(kBatchGpa) | core::kPinPagesInBatch);
    expect_rejected(r, E2BIG);
}

TEST_F(BadInput, AbsentDttTableStopsTheRequest) {
    // gfn 0x900 was never marked: its leaf table does not exist.
    const ServeReport r = p.serve((uint64_t{0x900} << 16) | kBdf);
    expect_rejected(r, ENOENT);
}

TEST_F(BadInput, SlotValueZero) {
    const ServeReport r = p.serve(0);
    expect_rejected(r, EINVAL);
}

TEST_F(BadInput, BatchStopsAtTheFirstBadGfn) {
    std::vector<Gfn> g = range(0, 3);
    for (Gfn x : g) ASSERT_OK(p.guest().mark(x));
    g.push_back(Gfn{0xA00});  // never marked: no table
    for (Gfn x : range(8, 2)) {
        ASSERT_OK(p.guest().mark(x));
        g.push_back(x);
    }
    p.write_batch(kBdf, g.size(), g);
    const ServeReport r = p.serve(raw(kBatchGpa) | core::kPinPagesInBatch);
    EXPECT_EQ(r.result, -ENOENT);
    EXPECT_TRUE(p.pinned(gfn_at(2)));   // before the bad gfn: pinned
    EXPECT_FALSE(p.pinned(gfn_at(8)));  // after it: not
    EXPECT_EQ(p.totals().pin_failures[PinFailureReason::InvalidRequest], 3u);
    expect_consistent(p);
}

TEST_F(BadInput, UpperEntryPointingOutsideRam) {
    ASSERT_OK(p.guest().mark(gfn_at(0)));
    // Point gfn 0x800's level-2 entry far outside RAM (its leaf table would be there).
    ASSERT_OK(p.guest().dtt().set_upper_entry(Gfn{0x800}, 2, (uint64_t{1} << 40) | core::kDttEntryPresent));
    const ServeReport r = p.serve((uint64_t{0x800} << 16) | kBdf);
    expect_rejected(r, EFAULT);
}

TEST(FastPinnerInvalidDtt, EveryRequestFailsAndCompletes) {
    PinPath p(with_invalid_dtt());
    const ServeReport r = p.map_range(0, 4);
    EXPECT_EQ(r.result, -EINVAL);
    EXPECT_EQ(p.slot(), 0u);
    EXPECT_EQ(p.map_calls(), 0u);
    EXPECT_EQ(p.totals().pin_failures[PinFailureReason::InvalidRequest], 4u);
}

TEST(FastPinnerStats, OneRequestCountsOnceWithItsPages) {
    PinPath p;
    (void)p.map_range(0, 16);
    const auto t = p.totals();
    EXPECT_EQ(t.requests[telemetry::RequestKind::Batch], 1u);
    EXPECT_EQ(t.pages_requested, 16u);
    EXPECT_EQ(t.dma_calls[telemetry::DmaOp::Map], 1u);
    EXPECT_EQ(t.dma_bytes[telemetry::DmaOp::Map], 16 * kPageSize);
    EXPECT_EQ(t.request_latency_ns[telemetry::RequestKind::Batch].count(), 1u);
    EXPECT_EQ(p.stats().gauges().pinned_pages.load(), 16u);
}

TEST(FastPinnerStore, TbbStoreRecordsTheSameExtents) {
    PinPath p(with_store(ExtentStoreKind::Tbb));
    (void)p.map_range(0, 40);
    EXPECT_EQ(p.extents().length(gfn_at(0)), 40u);
    EXPECT_EQ(p.extents().head_of(gfn_at(39)), gfn_at(0));
    EXPECT_EQ(p.extents().length(gfn_at(1)), 0u);
}

}  // namespace
}  // namespace coiommu::workers::test
