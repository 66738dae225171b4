// The request layer under concurrent callers (run under TSan via the `concurrency` label).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "engine/viommu/viommu_device.h"
#include "tests/testing/expect.h"
#include "tests/unit/viommu/viommu_test_util.h"

namespace coiommu::viommu {
namespace {

using namespace testutil;  // NOLINT(google-build-using-namespace): test helpers
using std::chrono::milliseconds;

constexpr uint64_t kPage = 0x1000;

TEST(ViommuDeviceConcurrency, ParallelMapUnmapWithTopologyChangesAndReaders) {
    constexpr int kWorkers = 3;
    constexpr int kIterations = 1500;
    ViommuDevice dev;
    std::vector<std::shared_ptr<BasicMemoryMapper>> mappers;
    for (uint32_t i = 0; i < kWorkers + 1; ++i) {
        mappers.push_back(std::make_shared<BasicMemoryMapper>(~uint64_t{0}));
        ASSERT_OK(dev.add_endpoint(i, mappers.back()));
    }
    std::atomic<bool> stop{false};
    std::atomic<int> bad{0};

    std::vector<std::thread> threads;
    for (uint32_t w = 0; w < kWorkers; ++w) {
        threads.emplace_back([&, w] {
            const uint32_t domain = 100 + w;
            if (attach(dev, domain, w) != wire::kStatusOk) ++bad;
            for (int i = 0; i < kIterations; ++i) {
                const uint64_t iova = (static_cast<uint64_t>(i % 64) + 1) * 2 * kPage;
                if (map(dev, domain, iova, iova + kPage - 1, iova) != wire::kStatusOk) ++bad;
                if (unmap(dev, domain, iova, iova + kPage - 1) != wire::kStatusOk) ++bad;
            }
        });
    }
    // Topology churn on its own endpoint, concurrently with the workers.
    threads.emplace_back([&] {
        for (int i = 0; i < kIterations / 2; ++i) {
            if (attach(dev, 200 + static_cast<uint32_t>(i % 3), kWorkers) != wire::kStatusOk) ++bad;
            if (detach(dev, 0, kWorkers) != wire::kStatusOk) ++bad;
        }
    });
    // Inspection from another thread.
    std::thread reader([&] {
        uint64_t sink = 0;
        while (!stop.load()) {
            for (uint32_t e = 0; e <= kWorkers; ++e) sink += dev.endpoint_domain(e).value_or(0);
            sink += dev.domain_endpoint_count(100).value_or(0) + dev.domain_count();
            sink += dev.counters().requests.load(std::memory_order_relaxed);
        }
        EXPECT_NE(sink, 1u);  // keep the loop observable
    });
    for (auto& t : threads) t.join();
    stop = true;
    reader.join();

    EXPECT_EQ(bad.load(), 0);
    for (uint32_t w = 0; w < kWorkers; ++w) {
        EXPECT_TRUE(mappers[w]->empty());
        EXPECT_EQ(dev.endpoint_domain(w), 100 + w);
    }
    EXPECT_EQ(dev.endpoint_domain(kWorkers), std::nullopt);
    EXPECT_EQ(dev.domain_count(), static_cast<size_t>(kWorkers));
}

TEST(ViommuDeviceConcurrency, TwoThreadsMapDisjointRangesOfOneDomain) {
    ViommuDevice dev;
    auto m = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    ASSERT_OK(dev.add_endpoint(1, m));
    ASSERT_EQ(attach(dev, 10, 1), wire::kStatusOk);
    std::atomic<int> bad{0};
    auto worker = [&](uint64_t base) {
        for (uint64_t i = 0; i < 500; ++i) {
            const uint64_t iova = base + i * kPage;
            if (map(dev, 10, iova, iova + kPage - 1, iova) != wire::kStatusOk) ++bad;
        }
    };
    std::thread a(worker, 0);
    std::thread b(worker, uint64_t{1} << 30);
    a.join();
    b.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(m->size(), 1000u);
}

TEST(ViommuDeviceConcurrency, DetachWaitsForAnInFlightMapOfItsDomain) {
    ViommuDevice dev;
    auto m = std::make_shared<TestMapper>(TestMapper::Options{.id = 1});
    ASSERT_OK(dev.add_endpoint(1, m));
    ASSERT_EQ(attach(dev, 10, 1), wire::kStatusOk);

    m->close_gate();
    std::atomic<uint8_t> map_status{kFailed};
    std::thread mapper_thread([&] { map_status = map(dev, 10, 0, kPage - 1, 0); });
    m->wait_blocked();  // the MAP is inside the mapper, holding its domain

    std::atomic<bool> detached{false};
    std::thread detach_thread([&] {
        EXPECT_EQ(detach(dev, 10, 1), wire::kStatusOk);
        detached = true;
    });
    std::this_thread::sleep_for(milliseconds(100));
    EXPECT_FALSE(detached.load()) << "DETACH tore the domain down under an in-flight MAP";
    m->open_gate();
    mapper_thread.join();
    detach_thread.join();

    EXPECT_EQ(map_status.load(), wire::kStatusOk);
    EXPECT_TRUE(detached.load());
    EXPECT_EQ(m->size(), 0u);  // the reset came after the MAP: nothing lives in a dead domain
    EXPECT_EQ(dev.domain_count(), 0u);
}

TEST(ViommuDeviceConcurrency, AFaultWaitBlocksOnlyItsOwnCaller) {
    ViommuDevice dev;
    auto exported = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    auto other = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    ASSERT_OK(dev.add_endpoint(1, exported));
    ASSERT_OK(dev.add_endpoint(2, other));
    ASSERT_EQ(attach(dev, 10, 1), wire::kStatusOk);
    ASSERT_EQ(attach(dev, 20, 2), wire::kStatusOk);
    ASSERT_EQ(map(dev, 10, 0, kPage - 1, 0), wire::kStatusOk);
    ASSERT_OK_AND_ASSIGN(EventFd fault, exported->start_export_session());
    ASSERT_OK(exported->export_range(Iova{0}, kPage));

    std::atomic<bool> unmapped{false};
    std::thread waiter([&] {
        EXPECT_EQ(unmap(dev, 10, 0, kPage - 1), wire::kStatusOk);
        unmapped = true;
    });
    ASSERT_TRUE(fault.wait_for(milliseconds(5000)).value());
    // While that UNMAP waits for the client, other requests proceed.
    EXPECT_EQ(map(dev, 20, 0, kPage - 1, 0), wire::kStatusOk);
    EXPECT_EQ(attach(dev, 20, 2), wire::kStatusOk);  // topology changes too
    EXPECT_FALSE(unmapped.load());
    ASSERT_OK(exported->release(Iova{0}, kPage));
    waiter.join();
    EXPECT_TRUE(unmapped.load());
}

}  // namespace
}  // namespace coiommu::viommu
