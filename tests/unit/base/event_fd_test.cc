#include "engine/base/event_fd.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/testing/expect.h"

namespace coiommu {
namespace {

using std::chrono::milliseconds;

TEST(EventFd, ReadOfUnsignaledNonBlockingFdReturnsZero) {
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    auto v = ev.read();
    ASSERT_OK(v);
    EXPECT_EQ(*v, 0u);
}

TEST(EventFd, SignalsAccumulateUntilRead) {
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    ASSERT_OK(ev.signal());
    ASSERT_OK(ev.signal());
    auto v = ev.read();
    ASSERT_OK(v);
    EXPECT_EQ(*v, 2u);
}

TEST(EventFd, WaitForTimesOutWhenNothingSignals) {
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    auto fired = ev.wait_for(milliseconds(10));
    ASSERT_OK(fired);
    EXPECT_FALSE(*fired);
}

TEST(EventFd, WaitForWakesOnSignalFromAnotherThread) {
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    std::thread t([&] { (void)ev.signal(); });
    auto fired = ev.wait_for(milliseconds(5000));
    t.join();
    ASSERT_OK(fired);
    EXPECT_TRUE(*fired);
}

TEST(EventFd, DuplicateSharesTheCounter) {
    ASSERT_OK_AND_ASSIGN(auto ev, EventFd::create());
    ASSERT_OK_AND_ASSIGN(auto dup, ev.duplicate());
    ASSERT_OK(dup.signal());
    auto signaled = ev.is_signaled();
    ASSERT_OK(signaled);
    EXPECT_TRUE(*signaled);
}

}  // namespace
}  // namespace coiommu
