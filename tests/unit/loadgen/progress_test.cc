// The progress line's rates: counts over the last full second of samples, not the last 100 ms
// interval scaled up.
#include "engine/loadgen/progress.h"

#include <gtest/gtest.h>

#include <vector>

namespace coiommu::loadgen {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSecond = 1000 * kMs;

// A tally every 100 ms from t = 0, `maps_per_interval[i]` maps (and twice as many pins) in
// interval i.
std::vector<Tally> every_100ms(const std::vector<uint64_t>& maps_per_interval) {
    std::vector<Tally> h{Tally{0, 0, 0}};
    for (uint64_t m : maps_per_interval) {
        const Tally& prev = h.back();
        h.push_back(Tally{prev.t_ns + 100 * kMs, prev.maps + m, prev.pages_pinned + 2 * m});
    }
    return h;
}

TEST(WindowRates, AreTheCountOverTheLastSecondNotTheLastIntervalScaled) {
    // 1000 maps in the first 100 ms, none after: 1000 maps in the last second. The last
    // interval scaled up would say 0/s; the first one scaled up 10k/s.
    const auto h = every_100ms({1000, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    const WindowRates w = window_rates(h, kSecond);
    EXPECT_DOUBLE_EQ(w.window_s, 1.0);
    EXPECT_DOUBLE_EQ(w.maps_per_s, 1000.0);
    EXPECT_DOUBLE_EQ(w.pins_per_s, 2000.0);
}

TEST(WindowRates, SlideWithTheNewestSample) {
    // 12 intervals: the window of the newest one covers intervals 2..11 (t = 0.2 s .. 1.2 s).
    const auto h = every_100ms({500, 500, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10});
    EXPECT_EQ(window_start(h, kSecond), 2u);
    const WindowRates w = window_rates(h, kSecond);
    EXPECT_DOUBLE_EQ(w.window_s, 1.0);
    EXPECT_DOUBLE_EQ(w.maps_per_s, 100.0);
}

TEST(WindowRates, LateSamplesStillCoverAtLeastTheWindow) {
    // Samples that arrive late: the window starts at the newest tally at least 1 s old.
    const std::vector<Tally> h{{0, 0, 0}, {400 * kMs, 100, 0}, {900 * kMs, 200, 0}, {1'250 * kMs, 450, 0}};
    EXPECT_EQ(window_start(h, kSecond), 0u);
    const WindowRates w = window_rates(h, kSecond);
    EXPECT_DOUBLE_EQ(w.window_s, 1.25);
    EXPECT_DOUBLE_EQ(w.maps_per_s, 360.0);
    const std::vector<Tally> later{{0, 0, 0}, {400 * kMs, 100, 0}, {1'500 * kMs, 400, 0}};
    EXPECT_EQ(window_start(later, kSecond), 1u);
    EXPECT_DOUBLE_EQ(window_rates(later, kSecond).maps_per_s, 300.0 / 1.1);
}

TEST(WindowRates, ShorterHistoryUsesWhatThereIs) {
    const auto h = every_100ms({50, 50, 50});
    EXPECT_EQ(window_start(h, kSecond), 0u);
    const WindowRates w = window_rates(h, kSecond);
    EXPECT_NEAR(w.window_s, 0.3, 1e-12);
    EXPECT_NEAR(w.maps_per_s, 500.0, 1e-9);
}

TEST(WindowRates, NoRatesWithoutTwoTalliesOrTime) {
    EXPECT_EQ(window_rates({}, kSecond).window_s, 0.0);
    const std::vector<Tally> one{{5, 10, 10}};
    EXPECT_EQ(window_rates(one, kSecond).maps_per_s, 0.0);
    const std::vector<Tally> same_time{{5, 10, 10}, {5, 20, 20}};
    EXPECT_EQ(window_rates(same_time, kSecond).maps_per_s, 0.0);
}

}  // namespace
}  // namespace coiommu::loadgen
