#include "engine/core/pinner.h"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>

#include "tests/testing/log_capture.h"
#include "tests/unit/core/pin_fixture.h"

namespace coiommu::core::test {
namespace {

// ---- pin_page ------------------------------------------------------------------------------

TEST(PinPage, NewPageIsMappedIdentityReadWrite) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Pinned);
    auto m = f.backend().find(iova_of(kGfnA));
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->iova, iova_of(kGfnA));
    EXPECT_EQ(m->hva, f.mem().translate(gpa_of(kGfnA), kPageSize).value());
    EXPECT_EQ(m->size, kPageSize);
    EXPECT_EQ(m->prot, dma::Prot::ReadWrite);
}

TEST(PinPage, NewPageGetsPinnedAndRecorded) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));

    ASSERT_OK(f.pin(kGfnA));

    EXPECT_EQ(f.entry(kGfnA), kDttePinned | kDtteAccessed | 1u);
    EXPECT_TRUE(f.table().mapped(kGfnA));
    EXPECT_EQ(f.table().mapped_pages(), 1u);
}

TEST(PinPage, AlreadyPinnedPageIsSkipped) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.pin(kGfnA));

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::AlreadyPinned);
    EXPECT_EQ(f.map_calls(), 1u);
}

TEST(PinPage, GuestClearedPinnedIsRepinnedWithoutASecondMap) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.pin(kGfnA));
    ASSERT_OK(f.dtt().clear_pinned(kGfnA));

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Repinned);
    EXPECT_TRUE(f.guest().pinned(kGfnA));
    EXPECT_EQ(f.map_calls(), 1u);
    EXPECT_EQ(f.backend().live_entries(), 1u);
}

TEST(PinPage, GuestForgedPinnedIsStillMapped) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.dtt().forge_pinned(kGfnA));

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Pinned);
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
    EXPECT_TRUE(f.table().mapped(kGfnA));
}

TEST(PinPage, MappingOwnedBySomeoneElseCountsAsPinned) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    // Another user of the container maps the page first.
    ASSERT_OK(f.backend().map(iova_of(kGfnA), f.mem().translate(gpa_of(kGfnA), kPageSize).value(), kPageSize,
                              dma::Prot::ReadWrite));
    testing::LogCapture logs;

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::AlreadyPinned);
    EXPECT_TRUE(f.guest().pinned(kGfnA));
    EXPECT_TRUE(logs.contains("already mapped"));
}

TEST(PinPage, MappingOwnedBySomeoneElseIsNotRecordedAsOurs) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.backend().map(iova_of(kGfnA), f.mem().translate(gpa_of(kGfnA), kPageSize).value(), kPageSize,
                              dma::Prot::ReadWrite));
    testing::LogCapture logs;

    ASSERT_OK(f.pin(kGfnA));

    EXPECT_FALSE(f.table().mapped(kGfnA));
    EXPECT_EQ(f.table().mapped_pages(), 0u);
}

TEST(PinPage, NoSpaceLeavesPinnedClear) {
    PinFixture f(limited_container(0));
    ASSERT_OK(f.guest().mark(kGfnA));
    testing::LogCapture logs;

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::NoSpace);
    EXPECT_FALSE(f.guest().pinned(kGfnA));
    EXPECT_FALSE(f.table().mapped(kGfnA));
}

TEST(PinPage, NoSpaceClearsAForgedPinned) {
    PinFixture f(limited_container(0));
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.dtt().forge_pinned(kGfnA));
    testing::LogCapture logs;

    ASSERT_OK(f.pin(kGfnA));

    EXPECT_FALSE(f.guest().pinned(kGfnA));
}

TEST(PinPage, MapFailureIsAnOutcomeWithTheErrno) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    f.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    testing::LogCapture logs;

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::MapFailed);
    EXPECT_EQ(r.error, ENOMEM);
}

TEST(PinPage, MapFailureLeavesPinnedClearAndNothingRecorded) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    f.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    testing::LogCapture logs;

    ASSERT_OK(f.pin(kGfnA));

    EXPECT_FALSE(f.guest().pinned(kGfnA));
    EXPECT_FALSE(f.table().mapped(kGfnA));
    EXPECT_TRUE(logs.contains("failed to map"));
}

TEST(PinPage, MapFailureClearsAForgedPinned) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.dtt().forge_pinned(kGfnA));
    f.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    testing::LogCapture logs;

    ASSERT_OK(f.pin(kGfnA));

    EXPECT_FALSE(f.guest().pinned(kGfnA));
}

TEST(PinPage, RetryAfterMapFailureMaps) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    f.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    testing::LogCapture logs;
    ASSERT_OK(f.pin(kGfnA));

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Pinned);
    EXPECT_TRUE(f.guest().pinned(kGfnA));
}

TEST(PinPage, GfnOutsideRamIsEfaultWithoutAMap) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnBeyondRam));  // the DTT can describe it

    EXPECT_ERR(f.pin(kGfnBeyondRam), EFAULT);
    EXPECT_EQ(f.map_calls(), 0u);
}

TEST(PinPage, GfnWhoseAddressOverflowsIsEfault) {
    testing::DttBuilderOptions opts;
    opts.levels = 7;
    PinFixture f({}, opts);
    const Gfn top{~uint64_t{0}};
    ASSERT_OK(f.guest().mark(top));

    EXPECT_ERR(f.pin(top), EFAULT);
}

TEST(PinPage, AbsentDttEntryIsEnoent) {
    PinFixture f;
    EXPECT_ERR(f.pin(kGfnA), ENOENT);
    EXPECT_EQ(f.map_calls(), 0u);
}

TEST(PinPage, GfnBeyondDttReachIsErange) {
    PinFixture f;
    EXPECT_ERR(f.pin(Gfn{uint64_t{1} << 40}), ERANGE);
}

TEST(PinPage, PinnerIgnoresMapCountAndAccessed) {
    PinFixture f;
    ASSERT_OK(f.guest().set_entry(kGfnA, 0));  // tables exist, the guest never marked the page

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Pinned);
    EXPECT_EQ(f.entry(kGfnA), kDttePinned);
}

// ---- unpin_page ----------------------------------------------------------------------------

// A pinned, idle page: PINNED only (count 0, ACCESSED clear).
void pin_idle(PinFixture& f, Gfn gfn) {
    ASSERT_OK(f.guest().set_entry(gfn, 0));
    ASSERT_OK_AND_ASSIGN(auto r, f.pin(gfn));
    ASSERT_EQ(r.outcome, PinOutcome::Pinned);
    ASSERT_EQ(f.entry(gfn), kDttePinned);
}

TEST(UnpinPage, IdlePinnedPageIsUnpinnedAndUnmapped) {
    PinFixture f;
    pin_idle(f, kGfnA);

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::Unpinned);

    EXPECT_EQ(f.entry(kGfnA), 0u);
    EXPECT_FALSE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
    EXPECT_FALSE(f.table().mapped(kGfnA));
    EXPECT_EQ(f.table().mapped_pages(), 0u);
}

TEST(UnpinPage, UnpinnedPageIsMappedAgainByTheNextPin) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_EQ(f.unpin(kGfnA), UnpinResult::Unpinned);

    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));

    EXPECT_EQ(r.outcome, PinOutcome::Pinned);
    EXPECT_EQ(f.map_calls(), 2u);
}

TEST(UnpinPage, AbsentTableIsNotPinned) {
    PinFixture f;
    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotPinned);
    EXPECT_EQ(f.unmap_calls(), 0u);
}

TEST(UnpinPage, AbsentTableIsNotPinnedEvenWhenForced) {
    PinFixture f;
    EXPECT_EQ(f.unpin(kGfnA, Force::Yes), UnpinResult::NotPinned);
}

TEST(UnpinPage, ZeroEntryIsNotPinned) {
    PinFixture f;
    ASSERT_OK(f.guest().set_entry(kGfnA, 0));
    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotPinned);
    EXPECT_EQ(f.unmap_calls(), 0u);
}

TEST(UnpinPage, MappedCountKeepsThePagePinned) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.guest().mark(kGfnA));

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotUnpinned);

    EXPECT_TRUE(f.guest().pinned(kGfnA));
    EXPECT_EQ(f.dtt().map_count(kGfnA), 1u);
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
}

TEST(UnpinPage, AccessedPageGetsASecondChance) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.guest().set_entry(kGfnA, kDttePinned | kDtteAccessed));

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotUnpinned);

    EXPECT_EQ(f.entry(kGfnA), kDttePinned);
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
}

TEST(UnpinPage, PageNotAccessedSinceTheLastScanIsUnpinned) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.guest().unmark(kGfnA));  // PINNED | ACCESSED, count 0
    ASSERT_EQ(f.unpin(kGfnA), UnpinResult::NotUnpinned);

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::Unpinned);
}

TEST(UnpinPage, ForceClearsAccessedAndUnpins) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.guest().set_entry(kGfnA, kDttePinned | kDtteAccessed));

    EXPECT_EQ(f.unpin(kGfnA, Force::Yes), UnpinResult::Unpinned);

    EXPECT_EQ(f.entry(kGfnA), 0u);
    EXPECT_FALSE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
}

TEST(UnpinPage, ForceOnAMappedPageLogsAndKeepsItPinned) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.guest().mark(kGfnA));
    testing::LogCapture logs;

    EXPECT_EQ(f.unpin(kGfnA, Force::Yes), UnpinResult::NotUnpinned);

    EXPECT_EQ(f.entry(kGfnA), kDttePinned | 1u);  // ACCESSED cleared by force, count kept
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
    EXPECT_TRUE(logs.contains("force case cannot unpin"));
}

TEST(UnpinPage, BusyButUnpinnedPageIsNotUnpinned) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));  // count 1, ACCESSED, PINNED clear

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotUnpinned);

    EXPECT_EQ(f.entry(kGfnA), 1u);  // second chance cleared ACCESSED
    EXPECT_EQ(f.unmap_calls(), 0u);
}

TEST(UnpinPage, FailedUnmapRestoresPinned) {
    PinFixture f;
    pin_idle(f, kGfnA);
    f.backend().fail_nth(dma::Op::Unmap, 1, EIO);
    testing::LogCapture logs;

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::Failed);

    EXPECT_EQ(f.entry(kGfnA), kDttePinned);
    EXPECT_TRUE(f.table().mapped(kGfnA));
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
}

TEST(UnpinPage, FailedUnpinCanBeRetried) {
    PinFixture f;
    pin_idle(f, kGfnA);
    f.backend().fail_nth(dma::Op::Unmap, 1, EIO);
    testing::LogCapture logs;
    ASSERT_EQ(f.unpin(kGfnA), UnpinResult::Failed);

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::Unpinned);
    EXPECT_EQ(f.backend().live_entries(), 0u);
}

// A container whose unmap removes nothing and reports 0 bytes (a "short" unmap).
class ShortUnmapBackend final : public dma::DmaBackend {
public:
    explicit ShortUnmapBackend(dma::FakeBackend& inner) : inner_(inner) {}
    Result<dma::MapOutcome> map(Iova iova, Hva hva, uint64_t size, dma::Prot prot) override {
        return inner_.map(iova, hva, size, prot);
    }
    Result<uint64_t> unmap(Iova /*iova*/, uint64_t /*size*/) override { return uint64_t{0}; }
    Result<dma::ContainerInfo> info() const override { return inner_.info(); }
    uint64_t live_entries() const override { return inner_.live_entries(); }
    uint64_t entry_limit() const override { return inner_.entry_limit(); }
    std::string_view name() const override { return "short-unmap"; }

private:
    dma::FakeBackend& inner_;
};

TEST(UnpinPage, ShortUnmapRestoresPinned) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ShortUnmapBackend shorty(f.backend());
    const PinContext ctx{f.mem(), shorty, f.table()};
    testing::LogCapture logs;

    EXPECT_EQ(unpin_page(ctx, f.walker(), kGfnA, Force::No), UnpinResult::Failed);

    EXPECT_EQ(f.entry(kGfnA), kDttePinned);
    EXPECT_TRUE(f.table().mapped(kGfnA));
    EXPECT_TRUE(logs.contains("short unmap"));
}

TEST(UnpinPage, ForgedPinnedIsClearedWithoutAnUnmap) {
    PinFixture f;
    ASSERT_OK(f.guest().set_entry(kGfnA, kDttePinned));

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotPinned);

    EXPECT_EQ(f.entry(kGfnA), 0u);
    EXPECT_EQ(f.unmap_calls(), 0u);
}

TEST(UnpinPage, SomeoneElsesMappingIsNeverUnmapped) {
    PinFixture f;
    ASSERT_OK(f.guest().set_entry(kGfnA, 0));
    ASSERT_OK(f.backend().map(iova_of(kGfnA), f.mem().translate(gpa_of(kGfnA), kPageSize).value(), kPageSize,
                              dma::Prot::ReadWrite));
    testing::LogCapture logs;
    ASSERT_OK(f.pin(kGfnA));  // EEXIST: PINNED set, not ours

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotPinned);

    EXPECT_EQ(f.unmap_calls(), 0u);
    EXPECT_TRUE(f.backend().is_mapped(iova_of(kGfnA), kPageSize));
}

TEST(UnpinPage, GfnOutsideRamIsNeverUnmapped) {
    PinFixture f;
    ASSERT_OK(f.guest().set_entry(kGfnBeyondRam, kDttePinned));

    EXPECT_EQ(f.unpin(kGfnBeyondRam), UnpinResult::NotPinned);

    EXPECT_EQ(f.unmap_calls(), 0u);
}

TEST(UnpinPage, GuestClearedPinnedLeavesOurMappingForTheNextPin) {
    PinFixture f;
    pin_idle(f, kGfnA);
    ASSERT_OK(f.dtt().clear_pinned(kGfnA));

    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::NotPinned);

    EXPECT_TRUE(f.table().mapped(kGfnA));  // not leaked: the record still owns it
    ASSERT_OK_AND_ASSIGN(auto r, f.pin(kGfnA));
    EXPECT_EQ(r.outcome, PinOutcome::Repinned);
    EXPECT_EQ(f.unpin(kGfnA), UnpinResult::Unpinned);
    EXPECT_EQ(f.backend().live_entries(), 0u);
}

TEST(PinOutcomeNames, AreStableMetricLabels) {
    EXPECT_STREQ(to_string(PinOutcome::AlreadyPinned), "already_pinned");
    EXPECT_STREQ(to_string(UnpinResult::NotUnpinned), "not_unpinned");
}

}  // namespace
}  // namespace coiommu::core::test
