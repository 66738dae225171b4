#include "engine/base/log.h"

#include <gtest/gtest.h>

#include "tests/testing/log_capture.h"

namespace coiommu {
namespace {

TEST(Log, LineCarriesLevelComponentAndMessage) {
    testing::LogCapture cap;
    CLOG_ERROR("pin", "gfn {:#x} bad", 0x10);
    ASSERT_EQ(cap.lines().size(), 1u);
    EXPECT_EQ(cap.lines()[0], "ERROR pin: gfn 0x10 bad");
}

TEST(Log, LinesBelowTheLevelAreDropped) {
    testing::LogCapture cap;
    const auto saved = log::level();
    log::set_level(log::Level::Warn);
    CLOG_INFO("pin", "quiet");
    log::set_level(saved);
    EXPECT_TRUE(cap.lines().empty());
}

TEST(Log, RateLimitedSiteDropsAFlood) {
    testing::LogCapture cap;
    for (int i = 0; i < 1000; ++i) CLOG_ERROR_RL("guest", "bad request {}", i);
    EXPECT_LE(cap.lines().size(), 10u);
    EXPECT_GE(cap.lines().size(), 1u);
}

TEST(Log, ParseLevelKnowsTheNames) {
    log::Level l = log::Level::Info;
    EXPECT_TRUE(log::parse_level("debug", &l));
    EXPECT_EQ(l, log::Level::Debug);
    EXPECT_FALSE(log::parse_level("loud", &l));
}

}  // namespace
}  // namespace coiommu
