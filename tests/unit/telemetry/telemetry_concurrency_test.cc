// Readers snapshot while writers run: the properties the exporter relies on every scrape.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "engine/telemetry/engine_stats.h"
#include "engine/telemetry/histogram.h"

namespace coiommu::telemetry {
namespace {

constexpr int kWriters = 2;
constexpr uint64_t kObservationsPerWriter = 200'000;

uint64_t bucket_sum(const HistogramSnapshot& s) {
    uint64_t n = 0;
    for (uint64_t b : s.buckets) n += b;
    return n;
}

TEST(Log2HistogramConcurrency, SnapshotCountIsMonotonicAndEqualsBucketSumWhileTwoWritersRun) {
    Log2Histogram h;
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back([&, w] {
            while (!go.load(std::memory_order_acquire)) {}
            for (uint64_t i = 0; i < kObservationsPerWriter; ++i)
                h.observe((i * 7919 + static_cast<uint64_t>(w)) % 100'000);
        });
    }
    go.store(true, std::memory_order_release);

    uint64_t last = 0;
    HistogramSnapshot prev;
    int snapshots = 0;
    bool done = false;
    while (!done) {
        done = last == kWriters * kObservationsPerWriter;
        const HistogramSnapshot s = h.snapshot();
        const uint64_t n = s.count();
        ASSERT_EQ(n, bucket_sum(s));
        ASSERT_GE(n, last);
        for (std::size_t k = 0; k < kLog2Buckets; ++k) ASSERT_GE(s.buckets[k], prev.buckets[k]) << k;
        last = n;
        prev = s;
        ++snapshots;
    }
    for (auto& t : writers) t.join();
    EXPECT_EQ(h.snapshot().count(), kWriters * kObservationsPerWriter);
    EXPECT_GT(snapshots, 1);
}

TEST(StatsRegistryConcurrency, SnapshotsWhileShardWritersRunAreMonotonicAndEndExact) {
    StatsRegistry stats(kWriters);
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
        StatsShard& shard = stats.shard(static_cast<std::size_t>(w));
        writers.emplace_back([&, w, shard_ptr = &shard] {
            while (!go.load(std::memory_order_acquire)) {}
            for (uint64_t i = 0; i < kObservationsPerWriter / 4; ++i) {
                shard_ptr->requests[RequestKind::Batch].add();
                shard_ptr->pages_pinned.add(4);
                shard_ptr->request_latency_ns[RequestKind::Batch].observe(1000 + i);
                stats.gauges().pinned_pages.add(4);
                if (w == 0 && i % 1024 == 0) (void)stats.add_shard();  // grow while readers sum
            }
        });
    }
    go.store(true, std::memory_order_release);

    const uint64_t expected_requests = kWriters * (kObservationsPerWriter / 4);
    uint64_t last_requests = 0;
    uint64_t last_count = 0;
    while (last_requests < expected_requests) {
        const StatsSnapshot s = stats.snapshot();
        const uint64_t requests = s.totals.requests[RequestKind::Batch];
        const HistogramSnapshot& lat = s.totals.request_latency_ns[RequestKind::Batch];
        ASSERT_GE(requests, last_requests);
        ASSERT_GE(lat.count(), last_count);
        ASSERT_EQ(lat.count(), bucket_sum(lat));
        last_requests = requests;
        last_count = lat.count();
    }
    for (auto& t : writers) t.join();
    const StatsSnapshot end = stats.snapshot();
    EXPECT_EQ(end.totals.requests[RequestKind::Batch], expected_requests);
    EXPECT_EQ(end.totals.pages_pinned, 4 * expected_requests);
    EXPECT_EQ(end.totals.request_latency_ns[RequestKind::Batch].count(), expected_requests);
    EXPECT_EQ(end.gauges.pinned_pages, 4 * expected_requests);
}

TEST(LogLinearHistogramConcurrency, SnapshotStaysSelfConsistentWhileTwoWritersRun) {
    LogLinearHistogram h;
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back([&, w] {
            while (!go.load(std::memory_order_acquire)) {}
            for (uint64_t i = 1; i <= kObservationsPerWriter / 4; ++i) h.observe(i * static_cast<uint64_t>(w + 1));
        });
    }
    go.store(true, std::memory_order_release);
    uint64_t last = 0;
    while (last < kWriters * (kObservationsPerWriter / 4)) {
        const LogLinearSnapshot s = h.snapshot();
        const uint64_t n = s.count();
        ASSERT_GE(n, last);
        if (n != 0) {
            ASSERT_LE(s.min, s.max);
            ASSERT_LE(s.percentile(0.99), s.max);
        }
        last = n;
    }
    for (auto& t : writers) t.join();
    EXPECT_EQ(h.max(), 2 * (kObservationsPerWriter / 4));
    EXPECT_EQ(h.snapshot().min, 1u);
}

}  // namespace
}  // namespace coiommu::telemetry
