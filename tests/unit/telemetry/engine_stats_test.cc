#include "engine/telemetry/engine_stats.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string_view>

#include "engine/telemetry/clock.h"

namespace coiommu::telemetry {
namespace {

// Writes a distinct value into every shard field by name, scaled by `k`, so a test can tell
// which field a total came from.
void fill_every_field(StatsShard& s, uint64_t k) {
    s.requests[RequestKind::Single].add(1 * k);
    s.requests[RequestKind::Batch].add(2 * k);
    s.pages_requested.add(3 * k);
    s.pages_pinned.add(4 * k);
    s.pages_already_pinned.add(5 * k);
    s.pin_failures[PinFailureReason::VfioMap].add(6 * k);
    s.pin_failures[PinFailureReason::NoSpace].add(7 * k);
    s.pin_failures[PinFailureReason::InvalidRequest].add(8 * k);
    s.pin_failures[PinFailureReason::Other].add(9 * k);
    s.requests_failed.add(10 * k);
    s.request_latency_ns[RequestKind::Single].observe(1000);
    s.request_latency_ns[RequestKind::Batch].observe(2000);
    s.pages_per_request.observe(16);
    s.dma_calls[DmaOp::Map].add(11 * k);
    s.dma_calls[DmaOp::Unmap].add(12 * k);
    s.dma_call_failures[DmaOp::Map].add(13 * k);
    s.dma_call_failures[DmaOp::Unmap].add(14 * k);
    s.dma_bytes[DmaOp::Map].add(15 * k);
    s.dma_bytes[DmaOp::Unmap].add(16 * k);
    s.dma_call_latency_ns[DmaOp::Map].observe(3000);
    s.dma_call_latency_ns[DmaOp::Unmap].observe(4000);
    s.pages_unpinned.add(17 * k);
    s.unpin_attempts[UnpinResult::Unpinned].add(18 * k);
    s.unpin_attempts[UnpinResult::NotPinned].add(19 * k);
    s.unpin_attempts[UnpinResult::NotUnpinned].add(20 * k);
    s.unpin_attempts[UnpinResult::Failed].add(21 * k);
    s.unpin_attempts[UnpinResult::Parked].add(22 * k);
    s.unpin_scans[ScanKind::Lru].add(23 * k);
    s.unpin_scans[ScanKind::Balloon].add(24 * k);
    s.unpin_scan_duration_ns[ScanKind::Lru].observe(5000);
    s.unpin_scan_duration_ns[ScanKind::Balloon].observe(6000);
    s.balloon_requests[BalloonResult::Success].add(25 * k);
    s.balloon_requests[BalloonResult::Failed].add(26 * k);
    s.viommu_requests[DmaOp::Map].add(27 * k);
    s.viommu_requests[DmaOp::Unmap].add(28 * k);
    s.viommu_request_failures[DmaOp::Map].add(29 * k);
    s.viommu_request_failures[DmaOp::Unmap].add(30 * k);
    s.viommu_fault_events.add(31 * k);
}

TEST(StatsShard, IsCacheLineAlignedSoShardsNeverShareALine) {
    EXPECT_EQ(alignof(StatsShard), kCacheLineSize);
    EXPECT_EQ(sizeof(StatsShard) % kCacheLineSize, 0u);
    StatsRegistry stats(2);
    const auto a = reinterpret_cast<uintptr_t>(&stats.shard(0));
    const auto b = reinterpret_cast<uintptr_t>(&stats.shard(1));
    EXPECT_EQ(a % kCacheLineSize, 0u);
    EXPECT_EQ(b % kCacheLineSize, 0u);
}

TEST(StatsRegistry, FreshSnapshotIsAllZero) {
    const StatsRegistry stats(3);
    const StatsSnapshot s = stats.snapshot();
    EXPECT_EQ(s.shards, 3u);
    EXPECT_EQ(s.totals.pages_pinned, 0u);
    EXPECT_EQ(s.totals.request_latency_ns[RequestKind::Batch].count(), 0u);
    EXPECT_EQ(s.gauges.pinned_pages, 0u);
}

TEST(StatsRegistry, SnapshotSumsEveryCounterFieldAcrossShards) {
    StatsRegistry stats(2);
    fill_every_field(stats.shard(0), 1);
    fill_every_field(stats.shard(1), 100);
    const ShardTotals t = stats.snapshot().totals;
    EXPECT_EQ(t.requests[RequestKind::Single], 101u);
    EXPECT_EQ(t.requests[RequestKind::Batch], 202u);
    EXPECT_EQ(t.pages_requested, 303u);
    EXPECT_EQ(t.pages_pinned, 404u);
    EXPECT_EQ(t.pages_already_pinned, 505u);
    EXPECT_EQ(t.pin_failures[PinFailureReason::VfioMap], 606u);
    EXPECT_EQ(t.pin_failures[PinFailureReason::NoSpace], 707u);
    EXPECT_EQ(t.pin_failures[PinFailureReason::InvalidRequest], 808u);
    EXPECT_EQ(t.pin_failures[PinFailureReason::Other], 909u);
    EXPECT_EQ(t.requests_failed, 1010u);
    EXPECT_EQ(t.dma_calls[DmaOp::Map], 1111u);
    EXPECT_EQ(t.dma_calls[DmaOp::Unmap], 1212u);
    EXPECT_EQ(t.dma_call_failures[DmaOp::Map], 1313u);
    EXPECT_EQ(t.dma_call_failures[DmaOp::Unmap], 1414u);
    EXPECT_EQ(t.dma_bytes[DmaOp::Map], 1515u);
    EXPECT_EQ(t.dma_bytes[DmaOp::Unmap], 1616u);
    EXPECT_EQ(t.pages_unpinned, 1717u);
    EXPECT_EQ(t.unpin_attempts[UnpinResult::Unpinned], 1818u);
    EXPECT_EQ(t.unpin_attempts[UnpinResult::NotPinned], 1919u);
    EXPECT_EQ(t.unpin_attempts[UnpinResult::NotUnpinned], 2020u);
    EXPECT_EQ(t.unpin_attempts[UnpinResult::Failed], 2121u);
    EXPECT_EQ(t.unpin_attempts[UnpinResult::Parked], 2222u);
    EXPECT_EQ(t.unpin_scans[ScanKind::Lru], 2323u);
    EXPECT_EQ(t.unpin_scans[ScanKind::Balloon], 2424u);
    EXPECT_EQ(t.balloon_requests[BalloonResult::Success], 2525u);
    EXPECT_EQ(t.balloon_requests[BalloonResult::Failed], 2626u);
    EXPECT_EQ(t.viommu_requests[DmaOp::Map], 2727u);
    EXPECT_EQ(t.viommu_requests[DmaOp::Unmap], 2828u);
    EXPECT_EQ(t.viommu_request_failures[DmaOp::Map], 2929u);
    EXPECT_EQ(t.viommu_request_failures[DmaOp::Unmap], 3030u);
    EXPECT_EQ(t.viommu_fault_events, 3131u);
}

TEST(StatsRegistry, SnapshotMergesEveryHistogramFieldAcrossShards) {
    StatsRegistry stats(2);
    fill_every_field(stats.shard(0), 1);
    fill_every_field(stats.shard(1), 1);
    const ShardTotals t = stats.snapshot().totals;
    EXPECT_EQ(t.request_latency_ns[RequestKind::Single].sum, 2000u);
    EXPECT_EQ(t.request_latency_ns[RequestKind::Batch].sum, 4000u);
    EXPECT_EQ(t.pages_per_request.buckets[4], 2u);
    EXPECT_EQ(t.dma_call_latency_ns[DmaOp::Map].sum, 6000u);
    EXPECT_EQ(t.dma_call_latency_ns[DmaOp::Unmap].sum, 8000u);
    EXPECT_EQ(t.unpin_scan_duration_ns[ScanKind::Lru].sum, 10000u);
    EXPECT_EQ(t.unpin_scan_duration_ns[ScanKind::Balloon].sum, 12000u);
}

TEST(StatsRegistry, SnapshotCopiesEveryGauge) {
    StatsRegistry stats(1);
    EngineGauges& g = stats.gauges();
    g.pinned_pages.set(1);
    g.dma_entries.set(2);
    g.dma_entry_limit.set(3);
    g.queue_depth.set(4);
    g.unpin_worker_parked.set(5);
    g.last_unpin_run_unix_ns.set(6);
    g.guest_ram_bytes.set(7);
    g.vcpus.set(8);
    g.active_sessions.set(9);
    const GaugeValues v = stats.snapshot().gauges;
    EXPECT_EQ(v.pinned_pages, 1u);
    EXPECT_EQ(v.dma_entries, 2u);
    EXPECT_EQ(v.dma_entry_limit, 3u);
    EXPECT_EQ(v.queue_depth, 4u);
    EXPECT_EQ(v.unpin_worker_parked, 5u);
    EXPECT_EQ(v.last_unpin_run_unix_ns, 6u);
    EXPECT_EQ(v.guest_ram_bytes, 7u);
    EXPECT_EQ(v.vcpus, 8u);
    EXPECT_EQ(v.active_sessions, 9u);
}

TEST(StatsRegistry, GaugesGoUpAndDown) {
    StatsRegistry stats(1);
    stats.gauges().pinned_pages.add(10);
    stats.gauges().pinned_pages.sub(4);
    EXPECT_EQ(stats.snapshot().gauges.pinned_pages, 6u);
}

TEST(StatsRegistry, AddedShardCountsTowardTheTotals) {
    StatsRegistry stats(1);
    StatsShard& unpinner = stats.add_shard();
    unpinner.pages_unpinned.add(7);
    stats.shard(0).pages_unpinned.add(1);
    const StatsSnapshot s = stats.snapshot();
    EXPECT_EQ(s.shards, 2u);
    EXPECT_EQ(stats.shard_count(), 2u);
    EXPECT_EQ(s.totals.pages_unpinned, 8u);
}

TEST(StatsRegistry, ShardAddressesStayStableWhenShardsAreAdded) {
    StatsRegistry stats(1);
    StatsShard* first = &stats.shard(0);
    for (int i = 0; i < 64; ++i) (void)stats.add_shard();
    EXPECT_EQ(&stats.shard(0), first);
}

TEST(ShardTotals, MergeAddsCountersAndHistograms) {
    StatsRegistry a(1);
    StatsRegistry b(1);
    fill_every_field(a.shard(0), 1);
    fill_every_field(b.shard(0), 2);
    ShardTotals total = a.snapshot().totals;
    merge(total, b.snapshot().totals);
    EXPECT_EQ(total.pages_pinned, 12u);
    EXPECT_EQ(total.viommu_fault_events, 93u);
    EXPECT_EQ(total.pages_per_request.count(), 2u);
}

bool is_snake_case(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        if (!((c >= 'a' && c <= 'z') || c == '_')) return false;
    }
    return s.front() != '_' && s.back() != '_';
}

TEST(TelemetryLabels, EveryLabelValueIsSnakeCase) {
    for (auto l : kRequestKindLabels) EXPECT_TRUE(is_snake_case(l)) << l;
    for (auto l : kScanKindLabels) EXPECT_TRUE(is_snake_case(l)) << l;
    for (auto l : kPinFailureReasonLabels) EXPECT_TRUE(is_snake_case(l)) << l;
    for (auto l : kUnpinResultLabels) EXPECT_TRUE(is_snake_case(l)) << l;
    for (auto l : kBalloonResultLabels) EXPECT_TRUE(is_snake_case(l)) << l;
    for (auto l : kDmaOpLabels) EXPECT_TRUE(is_snake_case(l)) << l;
}

TEST(TelemetryLabels, IndexMatchesTheEnumerator) {
    EXPECT_EQ(kRequestKindLabels[static_cast<std::size_t>(RequestKind::Batch)], "batch");
    EXPECT_EQ(kScanKindLabels[static_cast<std::size_t>(ScanKind::Balloon)], "balloon");
    EXPECT_EQ(kPinFailureReasonLabels[static_cast<std::size_t>(PinFailureReason::NoSpace)], "no_space");
    EXPECT_EQ(kUnpinResultLabels[static_cast<std::size_t>(UnpinResult::Parked)], "parked");
    EXPECT_EQ(kBalloonResultLabels[static_cast<std::size_t>(BalloonResult::Failed)], "failed");
    EXPECT_EQ(kDmaOpLabels[static_cast<std::size_t>(DmaOp::Unmap)], "unmap");
}

TEST(TelemetryClock, MonotonicNeverGoesBackAndWallClockIsAfter2020) {
    const uint64_t a = monotonic_ns();
    const uint64_t b = monotonic_ns();
    EXPECT_LE(a, b);
    constexpr uint64_t k2020UnixNs = 1'577'836'800ull * 1'000'000'000ull;
    EXPECT_GT(unix_time_ns(), k2020UnixNs);
}

}  // namespace
}  // namespace coiommu::telemetry
