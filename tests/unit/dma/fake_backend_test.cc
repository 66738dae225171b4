#include "engine/dma/fake_backend.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <thread>

#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kMiB = uint64_t{1} << 20;
// The fake never touches host memory, so any page-aligned host address will do.
constexpr Hva kHva{0x7f0000000000};
constexpr Iova kIova{0x100000};

Hva hva_at(uint64_t delta) { return offset(kHva, delta); }
Iova iova_at(uint64_t delta) { return offset(kIova, delta); }

FakeConfig with_limit(uint64_t limit) {
    FakeConfig cfg;
    cfg.entry_limit = limit;
    return cfg;
}

// ---- map --------------------------------------------------------------------------------------

TEST(FakeBackend, MapReturnsMappedAndRecordsTheMapping) {
    FakeBackend fake;
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(kIova, kHva, 2 * kPage, Prot::Read));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
    const auto m = fake.find(iova_at(kPage));
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->iova, kIova);
    EXPECT_EQ(m->hva, kHva);
    EXPECT_EQ(m->size, 2 * kPage);
    EXPECT_EQ(m->prot, Prot::Read);
}

TEST(FakeBackend, DuplicateMapReturnsAlreadyMapped) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(kIova, hva_at(kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST(FakeBackend, MapInsideAnExistingMappingReturnsAlreadyMapped) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kMiB, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST(FakeBackend, MapAcrossTheStartOfAMappingReturnsAlreadyMapped) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kMiB, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(Iova{raw(kIova) - kPage}, kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST(FakeBackend, MapCoveringASmallerMappingReturnsAlreadyMapped) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(kIova, kHva, kMiB, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST(FakeBackend, AdjacentMappingsDoNotOverlap) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(iova_at(kPage), hva_at(kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
}

TEST(FakeBackend, AlreadyMappedLeavesTheFirstMappingUnchanged) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::Read));
    ASSERT_OK(fake.map(kIova, hva_at(kMiB), kPage, Prot::ReadWrite));
    EXPECT_EQ(fake.find(kIova)->hva, kHva);
    EXPECT_EQ(fake.live_entries(), 1u);
}

TEST(FakeBackend, MapWithZeroSizeFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(kIova, kHva, 0, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWithUnalignedIovaFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(iova_at(512), kHva, kPage, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWithUnalignedHvaFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(kIova, hva_at(1), kPage, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWithUnalignedSizeFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(kIova, kHva, kPage + 8, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWhoseIovaRangeWrapsFailsWithEinval) {
    FakeConfig cfg;
    cfg.iova_ranges.clear();  // every iova valid: only the wrap check can refuse it
    FakeBackend fake(cfg);
    EXPECT_ERR(fake.map(Iova{~uint64_t{0} - kPage + 1}, kHva, 2 * kPage, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWhoseHvaRangeWrapsFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(kIova, Hva{~uint64_t{0} - kPage + 1}, 2 * kPage, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWithoutReadOrWriteFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.map(kIova, kHva, kPage, static_cast<Prot>(0)), EINVAL);
}

TEST(FakeBackend, MapOutsideTheIovaRangesFailsWithEinval) {
    FakeBackend fake;  // default range: [0, 2^39)
    EXPECT_ERR(fake.map(Iova{uint64_t{1} << 39}, kHva, kPage, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapStraddlingTwoIovaRangesFailsWithEinval) {
    FakeConfig cfg;
    // VT-d's two ranges around the MSI window 0xfee00000.
    cfg.iova_ranges = {{0, 0xfedfffff}, {0xfef00000, (uint64_t{1} << 39) - 1}};
    FakeBackend fake(cfg);
    EXPECT_ERR(fake.map(Iova{0xfed00000}, kHva, 2 * kMiB, Prot::ReadWrite), EINVAL);
}

TEST(FakeBackend, MapWithHugePageOnlyGeometryRequires2MiBAlignment) {
    FakeConfig cfg;
    cfg.iova_pgsizes = 0x200000;  // smallest IOMMU page is 2 MiB
    FakeBackend fake(cfg);
    EXPECT_ERR(fake.map(Iova{0x200000}, kHva, kPage, Prot::ReadWrite), EINVAL);
}

// ---- entry limit ------------------------------------------------------------------------------

TEST(FakeBackend, DefaultEntryLimitIs65535) {
    FakeBackend fake;
    EXPECT_EQ(fake.entry_limit(), 65535u);
}

TEST(FakeBackend, MapPastTheEntryLimitReturnsNoSpace) {
    FakeBackend fake(with_limit(2));
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(iova_at(2 * kPage), kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::NoSpace);
    EXPECT_EQ(fake.live_entries(), 2u);
}

TEST(FakeBackend, OneMapCallIsOneEntryWhateverItsSize) {
    FakeBackend fake(with_limit(1));
    ASSERT_OK(fake.map(kIova, kHva, 64 * kMiB, Prot::ReadWrite));
    EXPECT_EQ(fake.live_entries(), 1u);
}

TEST(FakeBackend, OverlapIsReportedBeforeNoSpace) {
    // The kernel checks for an overlap before the entry count.
    FakeBackend fake(with_limit(1));
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST(FakeBackend, MapSucceedsAgainAfterAnUnmapFreesAnEntry) {
    FakeBackend fake(with_limit(1));
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.unmap(kIova, kPage));
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
}

TEST(FakeBackend, InfoReportsGeometryAndEntriesAvailable) {
    FakeBackend fake(with_limit(10));
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto info, fake.info());
    EXPECT_EQ(info.iova_pgsizes, 0x40201000u);
    ASSERT_EQ(info.iova_ranges.size(), 1u);
    EXPECT_EQ(info.iova_ranges[0].end, (uint64_t{1} << 39) - 1);
    EXPECT_EQ(info.entry_limit, 10u);
    EXPECT_EQ(info.entries_available, 9u);
}

// ---- unmap ------------------------------------------------------------------------------------

TEST(FakeBackend, UnmapReturnsTheBytesRemoved) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 3 * kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto bytes, fake.unmap(kIova, 3 * kPage));
    EXPECT_EQ(bytes, 3 * kPage);
    EXPECT_FALSE(fake.find(kIova).has_value());
    EXPECT_EQ(fake.live_entries(), 0u);
}

TEST(FakeBackend, UnmapOfNothingReturnsZeroBytes) {
    FakeBackend fake;
    ASSERT_OK_AND_ASSIGN(auto bytes, fake.unmap(kIova, kPage));
    EXPECT_EQ(bytes, 0u);
}

TEST(FakeBackend, UnmapBisectingTheStartOfAMappingFailsWithEinval) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.unmap(iova_at(kPage), 4 * kPage), EINVAL);
    EXPECT_TRUE(fake.is_mapped(kIova, 2 * kPage));
}

TEST(FakeBackend, UnmapBisectingTheEndOfAMappingFailsWithEinval) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.unmap(Iova{raw(kIova) - kPage}, 2 * kPage), EINVAL);
    EXPECT_TRUE(fake.is_mapped(kIova, 2 * kPage));
}

TEST(FakeBackend, UnmapOfTheFirstPageOfALargerMappingFailsWithEinval) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.unmap(kIova, kPage), EINVAL);
}

TEST(FakeBackend, UnmapSpanningSeveralMappingsRemovesAllOfThem) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(2 * kPage), kHva, 2 * kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(8 * kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto bytes, fake.unmap(kIova, kMiB));
    EXPECT_EQ(bytes, 4 * kPage);
    EXPECT_TRUE(fake.mappings().empty());
}

TEST(FakeBackend, UnmapLeavesMappingsOutsideTheRange) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto bytes, fake.unmap(iova_at(kPage), kPage));
    EXPECT_EQ(bytes, kPage);
    EXPECT_TRUE(fake.find(kIova).has_value());
}

TEST(FakeBackend, UnmapWithZeroSizeFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.unmap(kIova, 0), EINVAL);
}

TEST(FakeBackend, UnmapWithUnalignedIovaFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.unmap(iova_at(8), kPage), EINVAL);
}

TEST(FakeBackend, UnmapWhoseRangeWrapsFailsWithEinval) {
    FakeBackend fake;
    EXPECT_ERR(fake.unmap(Iova{~uint64_t{0} - kPage + 1}, 2 * kPage), EINVAL);
}

TEST(FakeBackend, UnmapToTheTopOfTheAddressSpaceIsNotAWrap) {
    FakeBackend fake;
    ASSERT_OK_AND_ASSIGN(auto bytes, fake.unmap(Iova{~uint64_t{0} - kPage + 1}, kPage));
    EXPECT_EQ(bytes, 0u);
}

TEST(FakeBackend, UnmapExactSucceedsWhenEveryByteWasMapped) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_OK(fake.unmap_exact(kIova, 2 * kPage));
}

TEST(FakeBackend, UnmapExactOfAPartlyMappedRangeFailsWithEio) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    const auto st = fake.unmap_exact(kIova, 2 * kPage);
    EXPECT_ERR(st, EIO);
    EXPECT_NE(st.error().context.find("short unmap: asked 0x2000, unmapped 0x1000"), std::string::npos)
        << st.error().context;
}

TEST(FakeBackend, UnmapExactPassesUnmapErrorsThrough) {
    FakeBackend fake;
    EXPECT_ERR(fake.unmap_exact(kIova, 0), EINVAL);
}

// ---- inspection -------------------------------------------------------------------------------

TEST(FakeBackend, IsMappedAcrossAdjacentMappings) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(kPage), kHva, 2 * kPage, Prot::ReadWrite));
    EXPECT_TRUE(fake.is_mapped(iova_at(512), 3 * kPage - 512));
}

TEST(FakeBackend, IsMappedIsFalseAcrossAGap) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(2 * kPage), kHva, kPage, Prot::ReadWrite));
    EXPECT_FALSE(fake.is_mapped(kIova, 3 * kPage));
}

TEST(FakeBackend, IsMappedIsFalsePastTheLastMapping) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_FALSE(fake.is_mapped(kIova, kPage + 1));
}

TEST(FakeBackend, FindOutsideEveryMappingIsEmpty) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_FALSE(fake.find(iova_at(kPage)).has_value());
}

TEST(FakeBackend, MappingsAreSortedByIova) {
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_at(4 * kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    const auto all = fake.mappings();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].iova, kIova);
    EXPECT_EQ(all[1].iova, iova_at(4 * kPage));
}

// ---- counters ---------------------------------------------------------------------------------

TEST(FakeBackend, CountersSeparateOutcomesFromFailures) {
    FakeBackend fake(with_limit(1));
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));                  // mapped
    ASSERT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));                      // EEXIST
    ASSERT_OK(fake.map(iova_at(kMiB), kHva, kPage, Prot::ReadWrite));              // ENOSPC
    ASSERT_FALSE(fake.map(iova_at(1), kHva, kPage, Prot::ReadWrite).has_value());  // EINVAL
    const auto& c = fake.counters();
    EXPECT_EQ(c.map_calls.load(), 4u);
    EXPECT_EQ(c.map_eexist.load(), 1u);
    EXPECT_EQ(c.map_enospc.load(), 1u);
    EXPECT_EQ(c.map_failures.load(), 2u);  // ENOSPC and EINVAL; EEXIST is not a failure
    EXPECT_EQ(c.bytes_mapped.load(), 2 * kPage);
}

TEST(FakeBackend, CountersTrackUnmaps) {
    FakeBackend fake;
    ASSERT_OK(fake.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    ASSERT_OK(fake.unmap(kIova, 2 * kPage));
    ASSERT_FALSE(fake.unmap(kIova, 0).has_value());
    const auto& c = fake.counters();
    EXPECT_EQ(c.unmap_calls.load(), 2u);
    EXPECT_EQ(c.unmap_failures.load(), 1u);
    EXPECT_EQ(c.bytes_unmapped.load(), 2 * kPage);
}

TEST(FakeBackend, ErrorContextNamesTheBackendAndTheRange) {
    FakeBackend fake;
    const auto r = fake.map(iova_at(1), kHva, kPage, Prot::ReadWrite);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().context, "fake map iova 0x100001 size 0x1000: size zero or not page aligned");
}

// ---- fault injection --------------------------------------------------------------------------

TEST(FakeBackend, FailNthFailsOnlyTheNthMap) {
    FakeBackend fake;
    fake.fail_nth(Op::Map, 2, EFAULT);
    EXPECT_OK(fake.map(iova_at(0), kHva, kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.map(iova_at(kPage), kHva, kPage, Prot::ReadWrite), EFAULT);
    EXPECT_OK(fake.map(iova_at(2 * kPage), kHva, kPage, Prot::ReadWrite));
}

TEST(FakeBackend, FailNthCountsOnlyCallsOfItsOp) {
    FakeBackend fake;
    fake.fail_nth(Op::Unmap, 1, EIO);
    EXPECT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.unmap(kIova, kPage), EIO);
}

TEST(FakeBackend, InjectedFaultChangesNothing) {
    FakeBackend fake;
    fake.fail_nth(Op::Map, 1, ENOMEM);
    ASSERT_FALSE(fake.map(kIova, kHva, kPage, Prot::ReadWrite).has_value());
    EXPECT_EQ(fake.live_entries(), 0u);
    EXPECT_FALSE(fake.find(kIova).has_value());
}

TEST(FakeBackend, InjectedEnospcBecomesTheNoSpaceOutcome) {
    FakeBackend fake;
    fake.fail_nth(Op::Map, 1, ENOSPC);
    ASSERT_OK_AND_ASSIGN(auto outcome, fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::NoSpace);
}

TEST(FakeBackend, FailIfFailsEveryMatchingCall) {
    FakeBackend fake;
    fake.fail_if([](Op op, Iova iova, uint64_t) { return op == Op::Map && raw(iova) >= 0x200000 ? EFAULT : 0; });
    EXPECT_OK(fake.map(Iova{0x100000}, kHva, kPage, Prot::ReadWrite));
    EXPECT_ERR(fake.map(Iova{0x200000}, kHva, kPage, Prot::ReadWrite), EFAULT);
    EXPECT_ERR(fake.map(Iova{0x300000}, kHva, kPage, Prot::ReadWrite), EFAULT);
}

TEST(FakeBackend, ClearFaultsDisarmsEverything) {
    FakeBackend fake;
    fake.fail_nth(Op::Map, 1, EFAULT);
    fake.fail_if([](Op, Iova, uint64_t) { return EIO; });
    fake.clear_faults();
    EXPECT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_OK(fake.unmap(kIova, kPage));
}

TEST(FakeBackend, FailNthWithZeroArmsNothing) {
    FakeBackend fake;
    fake.fail_nth(Op::Map, 0, EFAULT);
    EXPECT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite));
}

// ---- latency model ----------------------------------------------------------------------------

TEST(FakeBackend, TypicalLatencyIsAbout2usPerMapAnd3usPerUnmapOfOnePage) {
    const auto m = LatencyModel::typical();
    EXPECT_EQ(m.map_per_call + m.map_per_page, nanoseconds{2000});
    EXPECT_EQ(m.unmap_per_call + m.unmap_per_page, nanoseconds{3000});
}

TEST(FakeBackend, LatencyModelChargesPerCallPlusPerPage) {
    FakeConfig cfg;
    cfg.latency = LatencyModel{};
    cfg.latency->map_per_call = milliseconds{2};
    cfg.latency->map_per_page = milliseconds{1};
    FakeBackend fake(cfg);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_OK(fake.map(kIova, kHva, 8 * kPage, Prot::ReadWrite));
    EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds{10});
}

TEST(FakeBackend, LatencyIsSpentHoldingTheContainerMutex) {
    // The predicate runs under the container mutex before the mapping is inserted; a reader
    // that starts right after it must wait for the whole map (insert + busy-wait) to finish.
    FakeConfig cfg;
    cfg.latency = LatencyModel{};
    cfg.latency->map_per_call = milliseconds{50};
    FakeBackend fake(cfg);
    std::atomic<bool> entered{false};
    fake.fail_if([&](Op, Iova, uint64_t) {
        entered.store(true, std::memory_order_release);
        return 0;
    });
    std::thread mapper([&] { EXPECT_OK(fake.map(kIova, kHva, kPage, Prot::ReadWrite)); });
    while (!entered.load(std::memory_order_acquire)) std::this_thread::yield();
    const auto snapshot = fake.mappings();
    mapper.join();
    EXPECT_EQ(snapshot.size(), 1u);
}

}  // namespace
}  // namespace coiommu::dma
