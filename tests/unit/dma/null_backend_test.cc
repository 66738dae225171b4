#include "engine/dma/null_backend.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

constexpr uint64_t kPage = kPageSize;
constexpr Hva kHva{0x7f0000000000};
constexpr Iova kIova{0x100000};

TEST(NullBackend, MapReturnsMapped) {
    NullBackend null;
    ASSERT_OK_AND_ASSIGN(auto outcome, null.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
}

TEST(NullBackend, DuplicateMapIsStillMapped) {
    // The null backend keeps no mapping state: it cannot see an overlap.
    NullBackend null;
    ASSERT_OK(null.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, null.map(kIova, kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
}

TEST(NullBackend, UnmapReturnsTheBytesAsked) {
    NullBackend null;
    ASSERT_OK_AND_ASSIGN(auto bytes, null.unmap(kIova, 3 * kPage));
    EXPECT_EQ(bytes, 3 * kPage);
}

TEST(NullBackend, UnmapExactAlwaysSucceeds) {
    NullBackend null;
    EXPECT_OK(null.unmap_exact(kIova, 16 * kPage));
}

TEST(NullBackend, LiveEntriesCountMapsMinusUnmaps) {
    NullBackend null;
    ASSERT_OK(null.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(null.map(offset(kIova, kPage), kHva, kPage, Prot::ReadWrite));
    ASSERT_OK(null.unmap(kIova, kPage));
    EXPECT_EQ(null.live_entries(), 1u);
}

TEST(NullBackend, LiveEntriesNeverGoBelowZero) {
    NullBackend null;
    ASSERT_OK(null.unmap(kIova, kPage));
    EXPECT_EQ(null.live_entries(), 0u);
}

TEST(NullBackend, EntryLimitIsReportedButNotEnforced) {
    NullBackend null(1);
    ASSERT_OK(null.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, null.map(offset(kIova, kPage), kHva, kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
    EXPECT_EQ(null.entry_limit(), 1u);
}

TEST(NullBackend, InfoReportsLimitAndEntriesAvailable) {
    NullBackend null(10);
    ASSERT_OK(null.map(kIova, kHva, kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto info, null.info());
    EXPECT_EQ(info.entry_limit, 10u);
    EXPECT_EQ(info.entries_available, 9u);
    EXPECT_NE(info.iova_pgsizes & kPageSize, 0u);
}

TEST(NullBackend, CountersTrackCallsAndBytes) {
    NullBackend null;
    ASSERT_OK(null.map(kIova, kHva, 2 * kPage, Prot::ReadWrite));
    ASSERT_OK(null.unmap(kIova, 2 * kPage));
    const auto& c = null.counters();
    EXPECT_EQ(c.map_calls.load(), 1u);
    EXPECT_EQ(c.unmap_calls.load(), 1u);
    EXPECT_EQ(c.bytes_mapped.load(), 2 * kPage);
    EXPECT_EQ(c.bytes_unmapped.load(), 2 * kPage);
    EXPECT_EQ(c.map_failures.load(), 0u);
}

TEST(NullBackend, NameIsNull) {
    NullBackend null;
    EXPECT_EQ(null.name(), "null");
}

}  // namespace
}  // namespace coiommu::dma
