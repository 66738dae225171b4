// RequestTraceBatch's and DmaTraceBatch's flush policy (what the tracer sees is tested in
// tests/integration/bpf, with the real engine program attached).
#include "engine/telemetry/request_trace.h"

#include <gtest/gtest.h>

namespace coiommu::telemetry {
namespace {

constexpr uint64_t kMs = 1'000'000;

TEST(RequestTraceBatch, EmptyBatchNeedsNoWakeup) {
    RequestTraceBatch batch(1);
    EXPECT_EQ(batch.due_ns(), 0u);
}

TEST(RequestTraceBatch, FullBatchIsHandedOverAtOnce) {
    RequestTraceBatch batch(1);
    for (uint32_t i = 0; i + 1 < RequestTraceBatch::kCapacity; ++i) batch.add(RequestKind::Single, 1, 0, 10, 0);
    EXPECT_EQ(batch.size(), RequestTraceBatch::kCapacity - 1);
    batch.add(RequestKind::Single, 1, 0, 10, 0);
    EXPECT_EQ(batch.size(), 0u);
}

TEST(RequestTraceBatch, WakeupIsDueWhenTheOldestRecordTurnsMaxAge) {
    RequestTraceBatch batch(1);
    batch.add(RequestKind::Batch, 4, 0, 10, 5 * kMs);
    batch.add(RequestKind::Batch, 4, 0, 10, 5 * kMs + kMs / 2);  // does not restart the clock
    EXPECT_EQ(batch.due_ns(), 6 * kMs);
    batch.flush();
    EXPECT_EQ(batch.due_ns(), 0u) << "a flushed batch is due never";
}

TEST(RequestTraceBatch, FlushIfDueKeepsAYoungBatchAndHandsOverAnOldOne) {
    RequestTraceBatch batch(1);
    batch.add(RequestKind::Single, 1, 0, 10, 0);
    batch.flush_if_due(RequestTraceBatch::kMaxAgeNs - 1);
    EXPECT_EQ(batch.size(), 1u);
    batch.flush_if_due(RequestTraceBatch::kMaxAgeNs);
    EXPECT_EQ(batch.size(), 0u);
    EXPECT_EQ(batch.due_ns(), 0u);
}

TEST(RequestTraceBatch, RecordMatchesTheProbeAbi) {
    static_assert(sizeof(RequestRecord) == 24);
    static_assert(RequestTraceBatch::kCapacity == kMaxRequestRecords);
    const RequestRecord r{7, 3, -12, static_cast<uint32_t>(RequestKind::Batch)};
    EXPECT_EQ(r.kind, 1u);
    EXPECT_EQ(r.result, -12);
}

TEST(DmaTraceBatch, FullBatchIsHandedOverAtOnce) {
    DmaTraceBatch batch(1);
    for (uint32_t i = 0; i + 1 < DmaTraceBatch::kCapacity; ++i) batch.add(DmaRecordOp::Map, 0, 4096, 0, 10, 0);
    EXPECT_EQ(batch.size(), DmaTraceBatch::kCapacity - 1);
    batch.add(DmaRecordOp::Unmap, 0, 4096, 0, 10, 0);
    EXPECT_EQ(batch.size(), 0u);
    EXPECT_EQ(batch.due_ns(), 0u);
}

TEST(DmaTraceBatch, ANewSessionHandsOverTheRecordsOfTheOldOne) {
    DmaTraceBatch batch(1);
    batch.add(DmaRecordOp::Unmap, 0, 4096, 0, 10, 0);
    batch.set_session(1);
    EXPECT_EQ(batch.size(), 1u) << "same session: kept";
    batch.set_session(2);
    EXPECT_EQ(batch.size(), 0u);
}

TEST(RequestTraceBatch, DmaRecordsMakeItDueAtTheOldestRecordOfEitherKind) {
    RequestTraceBatch batch(1);
    batch.dma().add(DmaRecordOp::Map, 0, 4096, 0, 10, 2 * kMs);
    batch.add(RequestKind::Single, 1, 0, 10, 3 * kMs);
    EXPECT_EQ(batch.due_ns(), 3 * kMs);
    batch.flush_if_due(3 * kMs);  // the DMA records are due, the request records not yet
    EXPECT_EQ(batch.dma().size(), 0u);
    EXPECT_EQ(batch.size(), 1u);
    EXPECT_EQ(batch.due_ns(), 4 * kMs);
}

TEST(RequestTraceBatch, FlushHandsOverTheDmaRecordsToo) {
    RequestTraceBatch batch(1);
    batch.add(RequestKind::Single, 1, 0, 10, 0);
    batch.dma().add(DmaRecordOp::Map, 0, 4096, 0, 10, 0);
    batch.flush();
    EXPECT_EQ(batch.size(), 0u);
    EXPECT_EQ(batch.dma().size(), 0u);
    EXPECT_EQ(batch.due_ns(), 0u);
}

TEST(RequestTraceBatch, AFullDmaBatchLeavesTheRequestRecordsPending) {
    RequestTraceBatch batch(1);
    batch.add(RequestKind::Batch, 16, 0, 10, 0);
    for (uint32_t i = 0; i < DmaTraceBatch::kCapacity; ++i) batch.dma().add(DmaRecordOp::Map, 0, 4096, 0, 10, 0);
    EXPECT_EQ(batch.dma().size(), 0u);
    EXPECT_EQ(batch.size(), 1u);
}

}  // namespace
}  // namespace coiommu::telemetry
