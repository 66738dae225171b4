// The loader's plain snapshot types: slot arithmetic shared with the BPF side, cumulative buckets
// for Prometheus, interval deltas, result classes. No BPF needed.
#include "bpf/loader/snapshot.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace coiommu::bpf {
namespace {

TEST(Log2Hist, ValuesUpToOneLandInSlotZero) {
    EXPECT_EQ(Log2Hist::slot_of(0), 0u);
    EXPECT_EQ(Log2Hist::slot_of(1), 0u);
}

TEST(Log2Hist, SlotIsCeilLog2) {
    EXPECT_EQ(Log2Hist::slot_of(2), 1u);
    EXPECT_EQ(Log2Hist::slot_of(3), 2u);
    EXPECT_EQ(Log2Hist::slot_of(4), 2u);
    EXPECT_EQ(Log2Hist::slot_of(5), 3u);
    EXPECT_EQ(Log2Hist::slot_of(1024), 10u);
    EXPECT_EQ(Log2Hist::slot_of(1025), 11u);
}

TEST(Log2Hist, UpperBoundOfAValuesSlotIsNeverBelowTheValue) {
    EXPECT_GE(Log2Hist::upper_bound(Log2Hist::slot_of(1000)), 1000u);
    EXPECT_LT(Log2Hist::lower_bound(Log2Hist::slot_of(1000)), 1000u);
    EXPECT_EQ(Log2Hist::upper_bound(10), 1024u);
    EXPECT_EQ(Log2Hist::lower_bound(10), 512u);
    EXPECT_EQ(Log2Hist::lower_bound(0), 0u);
}

TEST(Log2Hist, HugeValuesGoToTheOverflowSlot) {
    EXPECT_EQ(Log2Hist::slot_of(uint64_t{1} << 38), kOverflowSlot - 1);
    EXPECT_EQ(Log2Hist::slot_of((uint64_t{1} << 38) + 1), kOverflowSlot);
    EXPECT_EQ(Log2Hist::slot_of(~uint64_t{0}), kOverflowSlot);
}

TEST(Log2Hist, CumulativeEndsWithTheTotal) {
    Log2Hist h;
    h.slots[0] = 1;
    h.slots[3] = 2;
    h.slots[kOverflowSlot] = 4;

    const auto c = h.cumulative();
    EXPECT_EQ(c[0], 1u);
    EXPECT_EQ(c[2], 1u);
    EXPECT_EQ(c[3], 3u);
    EXPECT_EQ(c[kOverflowSlot], 7u);
    EXPECT_EQ(h.total(), 7u);
}

TEST(Log2Hist, DeltaSubtractsFieldByFieldAndSaturates) {
    Log2Hist before, after;
    before.slots[2] = 5;
    before.sum = 100;
    before.count = 5;
    after.slots[2] = 7;
    after.slots[4] = 1;
    after.sum = 130;
    after.count = 8;

    const Log2Hist d = after.delta_since(before);
    EXPECT_EQ(d.slots[2], 2u);
    EXPECT_EQ(d.slots[4], 1u);
    EXPECT_EQ(d.sum, 30u);
    EXPECT_EQ(d.count, 3u);
    EXPECT_EQ(before.delta_since(after).count, 0u);  // a reload never goes negative
}

TEST(Log2Hist, LowestAndHighestSlotOfEmptyHistogramAreMinusOne) {
    Log2Hist h;
    EXPECT_EQ(h.lowest_slot(), -1);
    EXPECT_EQ(h.highest_slot(), -1);
    h.slots[5] = 1;
    h.slots[9] = 1;
    EXPECT_EQ(h.lowest_slot(), 5);
    EXPECT_EQ(h.highest_slot(), 9);
}

TEST(ResultClass, ReturnValuesMapToTheirClass) {
    EXPECT_EQ(classify_return(0), ResultClass::Ok);
    EXPECT_EQ(classify_return(-EEXIST), ResultClass::Eexist);
    EXPECT_EQ(classify_return(-ENOSPC), ResultClass::Enospc);
    EXPECT_EQ(classify_return(-ENOMEM), ResultClass::Enomem);
    EXPECT_EQ(classify_return(-EINVAL), ResultClass::Einval);
    EXPECT_EQ(classify_return(-ENOTTY), ResultClass::Other);
    EXPECT_EQ(classify_return(-EPERM), ResultClass::Other);
}

TEST(Names, OpsAndClassesHaveStableLabels) {
    EXPECT_EQ(op_name(VfioOp::VfioMap), "vfio_map_dma");
    EXPECT_EQ(op_name(VfioOp::IoasUnmap), "ioas_unmap");
    EXPECT_EQ(result_name(ResultClass::Enospc), "enospc");
    EXPECT_EQ(request_kind_name(1), "batch");
    EXPECT_EQ(scan_kind_name(0), "lru");
    EXPECT_EQ(request_kind_name(9), "unknown");
}

TEST(VfioDmaSnapshot, DeltaKeepsTheInflightGauge) {
    VfioDmaSnapshot before, after;
    before.calls[0].by_result[0] = 4;
    after.calls[0].by_result[0] = 6;
    after.calls[0].bytes = 8192;
    after.inflight_entries = 2;

    const auto d = after.delta_since(before);
    EXPECT_EQ(d.calls[0].total(), 2u);
    EXPECT_EQ(d.calls[0].bytes, 8192u);
    EXPECT_EQ(d.inflight_entries, 2u);
}

}  // namespace
}  // namespace coiommu::bpf
