// coiommu-trace -u/-m: ns ceil-log2 slots re-binned into biolatency's integer rows of the unit
// (bpf/cli/unit_hist.h). Pure: no BPF needed.
#include "bpf/cli/unit_hist.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace coiommu::bpf {
namespace {

constexpr uint64_t kUs = 1000;
constexpr uint64_t kMs = 1000000;

std::vector<UnitHistRow> rows_of(std::initializer_list<std::pair<size_t, uint64_t>> slots, uint64_t ns_per_unit) {
    Log2Hist h;
    for (const auto& [k, n] : slots) {
        h.slots[k] = n;
        h.count += n;
    }
    return rebin_to_unit(h, ns_per_unit);
}

TEST(UnitHist, RowOfIsBiolatencysLog2) {
    EXPECT_EQ(unit_row_of(0), 0u);
    EXPECT_EQ(unit_row_of(1), 0u);
    EXPECT_EQ(unit_row_of(2), 1u);
    EXPECT_EQ(unit_row_of(3), 1u);
    EXPECT_EQ(unit_row_of(4), 2u);
    EXPECT_EQ(unit_row_of(7), 2u);
    EXPECT_EQ(unit_row_of(8), 3u);
    EXPECT_EQ(unit_row_of(~uint64_t{0}), 63u);
}

TEST(UnitHist, EmptyHistogramHasNoRows) { EXPECT_TRUE(rebin_to_unit(Log2Hist{}, kUs).empty()); }

TEST(UnitHist, MicrosecondRowsAreIntegerPowersOfTwo) {
    // Upper bounds in us: slot 0 (<= 1 ns) 0, slot 9 (<= 512 ns) 0, slot 10 (<= 1024 ns) 1,
    // slot 11 (<= 2048 ns) 2, slot 12 (<= 4096 ns) 4, slot 13 (<= 8192 ns) 8.
    const std::vector<UnitHistRow> expected = {
        {0, 1, 1 + 2 + 3},
        {2, 3, 4},
        {4, 7, 5},
        {8, 15, 6},
    };
    EXPECT_EQ(rows_of({{0, 1}, {9, 2}, {10, 3}, {11, 4}, {12, 5}, {13, 6}}, kUs), expected);
}

TEST(UnitHist, RowsStartAtZeroAndKeepEmptyRowsInBetween) {
    // Slot 20: (524288, 1048576] ns, upper bound 1048 us, row [1024, 2047]; rows 0..9 are empty.
    const auto rows = rows_of({{20, 7}}, kUs);
    ASSERT_EQ(rows.size(), 11u);
    EXPECT_EQ(rows[0], (UnitHistRow{0, 1, 0}));
    EXPECT_EQ(rows[1], (UnitHistRow{2, 3, 0}));
    EXPECT_EQ(rows[9], (UnitHistRow{512, 1023, 0}));
    EXPECT_EQ(rows[10], (UnitHistRow{1024, 2047, 7}));
}

TEST(UnitHist, MillisecondRows) {
    // Upper bounds in ms: slot 19 (<= 524288 ns) 0, slot 20 1, slot 21 2, slot 23 (<= 8388608 ns) 8,
    // slot 30 (<= 1073741824 ns) 1073.
    const auto rows = rows_of({{19, 1}, {20, 2}, {21, 3}, {23, 4}, {30, 5}}, kMs);
    ASSERT_EQ(rows.size(), 11u);
    EXPECT_EQ(rows[0], (UnitHistRow{0, 1, 1 + 2}));
    EXPECT_EQ(rows[1], (UnitHistRow{2, 3, 3}));
    EXPECT_EQ(rows[2], (UnitHistRow{4, 7, 0}));
    EXPECT_EQ(rows[3], (UnitHistRow{8, 15, 4}));
    EXPECT_EQ(rows[10], (UnitHistRow{1024, 2047, 5}));
}

TEST(UnitHist, OverflowSlotIsALastRowToInf) {
    // Slot 38: upper bound 2^38 ns = 274877906 us, row 28 [2^28, 2^29 - 1]; slot 39: > 2^38 ns.
    const auto rows = rows_of({{38, 1}, {kOverflowSlot, 2}}, kUs);
    ASSERT_EQ(rows.size(), 30u);
    EXPECT_EQ(rows[28], (UnitHistRow{268435456, 536870911, 1}));
    EXPECT_EQ(rows[29], (UnitHistRow{274877906, std::nullopt, 2}));
    // Only the overflow slot: the finite rows are absent.
    EXPECT_EQ(rows_of({{kOverflowSlot, 3}}, kMs), (std::vector<UnitHistRow>{{274877, std::nullopt, 3}}));
}

TEST(UnitHist, EveryCountIsKept) {
    Log2Hist h;
    uint64_t total = 0;
    for (size_t k = 0; k < kHistSlots; ++k) {
        h.slots[k] = k + 1;
        total += k + 1;
    }
    for (const uint64_t unit : {kUs, kMs}) {
        uint64_t seen = 0;
        for (const auto& r : rebin_to_unit(h, unit)) seen += r.count;
        EXPECT_EQ(seen, total) << unit;
    }
}

// The documented assignment: a value is shown in the row of its slot's upper bound, never below
// the row biolatency would give it (floor(v / unit)) and at most one row above.
TEST(UnitHist, AValueIsNeverShownFasterAndAtMostOneRowSlower) {
    for (const uint64_t unit : {kUs, kMs}) {
        for (uint64_t v = 0; v < (uint64_t{1} << 34); v = v < 100000 ? v + 1 : v + v / 997 + 1) {
            Log2Hist h;
            h.slots[Log2Hist::slot_of(v)] = 1;
            const auto rows = rebin_to_unit(h, unit);
            ASSERT_FALSE(rows.empty());
            ASSERT_EQ(rows.back().count, 1u);
            const unsigned shown = static_cast<unsigned>(rows.size() - 1);
            const unsigned truth = unit_row_of(v / unit);
            ASSERT_GE(shown, truth) << "v=" << v << " unit=" << unit;
            ASSERT_LE(shown, truth + 1) << "v=" << v << " unit=" << unit;
        }
    }
}

}  // namespace
}  // namespace coiommu::bpf
