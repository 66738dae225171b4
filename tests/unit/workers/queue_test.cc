#include "engine/workers/mpmc_queue.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace coiommu::workers {
namespace {

TEST(MpmcQueue, CapacityRoundsUpToAPowerOfTwo) {
    MpmcQueue<uint64_t> q(5);
    EXPECT_EQ(q.capacity(), 8u);
}

TEST(MpmcQueue, PopOfAnEmptyQueueIsNothing) {
    MpmcQueue<uint64_t> q(4);
    EXPECT_FALSE(q.try_pop().has_value());
}

TEST(MpmcQueue, ItemsComeOutInOrder) {
    MpmcQueue<uint64_t> q(4);
    ASSERT_TRUE(q.try_push(1));
    ASSERT_TRUE(q.try_push(2));
    EXPECT_EQ(q.try_pop(), 1u);
    EXPECT_EQ(q.try_pop(), 2u);
}

TEST(MpmcQueue, PushToAFullQueueFailsWithoutChangingIt) {
    MpmcQueue<uint64_t> q(2);
    ASSERT_TRUE(q.try_push(1));
    ASSERT_TRUE(q.try_push(2));
    EXPECT_FALSE(q.try_push(3));
    EXPECT_EQ(q.size_estimate(), 2u);
    EXPECT_EQ(q.try_pop(), 1u);
}

TEST(MpmcQueue, WrapsAroundManyLaps) {
    MpmcQueue<uint64_t> q(4);
    for (uint64_t i = 0; i < 1000; ++i) {
        ASSERT_TRUE(q.try_push(i));
        ASSERT_EQ(q.try_pop(), i);
    }
}

TEST(EventCount, NotifyWithoutWaitersDoesNotAdvanceTheEpoch) {
    EventCount ec;
    const auto key = ec.prepare_wait();
    ec.cancel_wait();
    ec.notify_one();
    // Nobody waited, so a new waiter still sees the same epoch.
    EXPECT_EQ(ec.prepare_wait(), key);
    ec.cancel_wait();
}

TEST(EventCount, NotifyAfterPrepareReleasesTheWait) {
    EventCount ec;
    const auto key = ec.prepare_wait();
    ec.notify_one();
    ec.wait(key);  // returns at once: the epoch moved
    SUCCEED();
}

}  // namespace
}  // namespace coiommu::workers
