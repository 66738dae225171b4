// Many threads against one fake container: its state and counters stay consistent, and racing
// maps of one range produce exactly one Mapped.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "engine/dma/fake_backend.h"
#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

constexpr uint64_t kPage = kPageSize;
constexpr Hva kHva{0x7f0000000000};
constexpr int kThreads = 4;
constexpr int kRounds = 2000;

TEST(FakeBackendConcurrency, DisjointMapUnmapFromManyThreadsLeavesNothingBehind) {
    FakeBackend fake;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&fake, t] {
            // Each thread owns a 1 GiB slice of IOVA space.
            const Iova base{(uint64_t{1} << 30) * static_cast<uint64_t>(t + 1)};
            for (int i = 0; i < kRounds; ++i) {
                const Iova iova = offset(base, static_cast<uint64_t>(i % 64) * kPage);
                EXPECT_EQ(fake.map(iova, kHva, kPage, Prot::ReadWrite).value_or(MapOutcome::NoSpace),
                          MapOutcome::Mapped);
                EXPECT_EQ(fake.unmap(iova, kPage).value_or(0), kPage);
            }
        });
    }
    for (auto& th : threads) th.join();
    const auto& c = fake.counters();
    EXPECT_EQ(c.map_calls.load(), uint64_t{kThreads} * kRounds);
    EXPECT_EQ(c.unmap_calls.load(), uint64_t{kThreads} * kRounds);
    EXPECT_EQ(c.bytes_mapped.load(), c.bytes_unmapped.load());
    EXPECT_EQ(fake.live_entries(), 0u);
    EXPECT_TRUE(fake.mappings().empty());
}

TEST(FakeBackendConcurrency, RacingMapsOfOneRangeMapItExactlyOnce) {
    FakeBackend fake;
    std::atomic<int> mapped{0};
    std::atomic<int> already{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < kRounds; ++i) {
                const Iova iova{0x100000 + static_cast<uint64_t>(i) * kPage};
                const auto r = fake.map(iova, kHva, kPage, Prot::ReadWrite);
                if (r && *r == MapOutcome::Mapped) mapped.fetch_add(1, std::memory_order_relaxed);
                if (r && *r == MapOutcome::AlreadyMapped) already.fetch_add(1, std::memory_order_relaxed);
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(mapped.load(), kRounds);
    EXPECT_EQ(already.load(), (kThreads - 1) * kRounds);
    EXPECT_EQ(fake.live_entries(), uint64_t{kRounds});
}

TEST(FakeBackendConcurrency, FaultInjectionIsThreadSafe) {
    FakeBackend fake;
    fake.fail_if([](Op op, Iova iova, uint64_t) { return op == Op::Map && (raw(iova) >> 12) % 2 == 1 ? EFAULT : 0; });
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const uint64_t base = (uint64_t{1} << 30) * static_cast<uint64_t>(t + 1);
            for (int i = 0; i < kRounds; ++i) {
                if (!fake.map(Iova{base + static_cast<uint64_t>(i) * kPage}, kHva, kPage, Prot::ReadWrite)) {
                    failed.fetch_add(1, std::memory_order_relaxed);
                }
                if (i == kRounds / 2 && t == 0) fake.fail_nth(Op::Unmap, 1, EIO);
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failed.load(), kThreads * kRounds / 2);
    EXPECT_EQ(fake.live_entries(), uint64_t{kThreads} * kRounds / 2);
    EXPECT_EQ(fake.counters().map_failures.load(), uint64_t{kThreads} * kRounds / 2);
}

}  // namespace
}  // namespace coiommu::dma
