// Workload generators: the pure page choices, determinism per seed, distribution sanity, Zipf skew.
#include "engine/loadgen/workload.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::loadgen {
namespace {

constexpr uint64_t kDataPages = 64 * 1024;  // 256 MiB of data pages
constexpr uint32_t kBufferPages = 16;

WorkloadParams params(WorkloadKind kind, uint32_t vcpus = 2, uint64_t seed = 7) {
    WorkloadParams p;
    p.kind = kind;
    p.data_pages = kDataPages;
    p.buffer_pages = kBufferPages;
    p.vcpus = vcpus;
    p.seed = seed;
    return p;
}

std::vector<Buffer> draw(WorkloadGen& g, int n) {
    std::vector<Buffer> out;
    for (int i = 0; i < n; ++i) out.push_back(g.next());
    return out;
}

std::vector<Buffer> draw(const WorkloadParams& p, uint32_t vcpu, int n) {
    auto g = WorkloadGen::create(p, vcpu);
    EXPECT_TRUE(g.has_value());
    return draw(*g, n);
}

// ---- pure choices ---------------------------------------------------------------------------------

TEST(Stripe, SplitsDataPagesEvenlyInWholeBuffers) {
    const Stripe s0 = stripe_of(1000, 3, 0, 16);
    const Stripe s2 = stripe_of(1000, 3, 2, 16);
    EXPECT_EQ(s0.first, 0u);
    EXPECT_EQ(s2.first, 666u);
    EXPECT_EQ(s0.pages, 320u);  // 333 pages hold 20 whole buffers of 16
}

TEST(StreamBuffer, AdvancesByOneBufferAndWrapsAtTheStripeEnd) {
    const Stripe s{100, 64};
    EXPECT_EQ(stream_buffer(s, 16, 0), (Buffer{Gfn{100}, 16}));
    EXPECT_EQ(stream_buffer(s, 16, 1), (Buffer{Gfn{116}, 16}));
    EXPECT_EQ(stream_buffer(s, 16, 4), (Buffer{Gfn{100}, 16}));
}

TEST(RandomBuffer, StaysInsideTheDataPages) {
    EXPECT_EQ(random_buffer(1000, 16, 0), (Buffer{Gfn{0}, 16}));
    EXPECT_EQ(random_buffer(1000, 16, ~uint64_t{0}).first, Gfn{984});  // last start that fits
}

TEST(ZipfBuffer, MapsRanksOntoDistinctSlots) {
    constexpr uint64_t kSlots = 1000;
    std::set<uint64_t> starts;
    for (uint64_t rank = 1; rank <= kSlots; ++rank) starts.insert(raw(zipf_buffer(kSlots, 8, rank, 3).first));
    EXPECT_EQ(starts.size(), kSlots);  // a permutation: every slot once
    EXPECT_LT(*starts.rbegin(), kSlots * 8);
}

TEST(ZipfBuffer, ScattersTheHottestRanks) {
    // Rank 1 and rank 2 are not neighbours (so the hot set is not one contiguous run).
    const uint64_t a = raw(zipf_buffer(4096, 16, 1, 9).first);
    const uint64_t b = raw(zipf_buffer(4096, 16, 2, 9).first);
    EXPECT_NE(a > b ? a - b : b - a, 16u);
}

TEST(RingBuffers, AreDistinctSlotsInsideTheStripe) {
    const Stripe s{4096, 4096};
    const auto ring = ring_buffers(s, 16, 64, 5, 1);
    ASSERT_EQ(ring.size(), 64u);
    std::set<uint64_t> starts;
    for (const Buffer& b : ring) {
        starts.insert(raw(b.first));
        EXPECT_GE(raw(b.first), s.first);
        EXPECT_LE(raw(b.first) + b.pages, s.first + s.pages);
        EXPECT_EQ((raw(b.first) - s.first) % 16, 0u);
    }
    EXPECT_EQ(starts.size(), 64u);
}

TEST(RingBuffers, ShrinkToTheStripeWhenItHoldsFewerSlots) {
    EXPECT_EQ(ring_buffers(Stripe{0, 64}, 16, 64, 5, 0).size(), 4u);
}

// ---- Zipf sampler ---------------------------------------------------------------------------------

TEST(ZipfSampler, StaysWithinOneToN) {
    const ZipfSampler z(50, 1.3);
    Rng rng(1, 1);
    for (int i = 0; i < 10000; ++i) {
        const uint64_t k = z.sample(rng);
        ASSERT_GE(k, 1u);
        ASSERT_LE(k, 50u);
    }
}

TEST(ZipfSampler, RankOneFrequencyMatchesTheLaw) {
    // P(1) = 1 / H(n, s); with n = 1000, s = 1.1, H ~ 4.3, so P(1) ~ 0.23.
    constexpr uint64_t kN = 1000;
    constexpr double kS = 1.1;
    double h = 0;
    for (uint64_t k = 1; k <= kN; ++k) h += std::pow(static_cast<double>(k), -kS);
    const ZipfSampler z(kN, kS);
    Rng rng(42, 0);
    constexpr int kDraws = 200000;
    int ones = 0, twos = 0;
    for (int i = 0; i < kDraws; ++i) {
        const uint64_t k = z.sample(rng);
        ones += k == 1;
        twos += k == 2;
    }
    EXPECT_NEAR(static_cast<double>(ones) / kDraws, 1.0 / h, 0.01);
    EXPECT_NEAR(static_cast<double>(twos) / kDraws, std::pow(2.0, -kS) / h, 0.01);
}

TEST(ZipfSampler, LargerExponentConcentratesMore) {
    Rng a(3, 0), b(3, 0);
    const ZipfSampler mild(1000, 0.5), steep(1000, 2.0);
    int mild_top = 0, steep_top = 0;
    for (int i = 0; i < 20000; ++i) {
        mild_top += mild.sample(a) <= 10;
        steep_top += steep.sample(b) <= 10;
    }
    EXPECT_GT(steep_top, 2 * mild_top);
}

TEST(ZipfSampler, ExponentOneIsHandled) {
    // s == 1 takes the series branch of the helpers (division by 1 - s nowhere).
    const ZipfSampler z(100, 1.0);
    Rng rng(5, 5);
    int ones = 0;
    for (int i = 0; i < 50000; ++i) ones += z.sample(rng) == 1;
    EXPECT_NEAR(ones / 50000.0, 1.0 / 5.187, 0.01);  // H(100, 1) = 5.187
}

// ---- the generator -----------------------------------------------------------------------------

TEST(WorkloadGen, SameSeedSameBuffers) {
    for (WorkloadKind k : kAllWorkloads) {
        EXPECT_EQ(draw(params(k), 1, 500), draw(params(k), 1, 500)) << to_string(k);
    }
}

TEST(WorkloadGen, DifferentSeedDifferentBuffers) {
    EXPECT_NE(draw(params(WorkloadKind::Random, 2, 1), 0, 100), draw(params(WorkloadKind::Random, 2, 2), 0, 100));
}

TEST(WorkloadGen, VcpusDrawIndependentStreams) {
    EXPECT_NE(draw(params(WorkloadKind::Random), 0, 100), draw(params(WorkloadKind::Random), 1, 100));
}

TEST(WorkloadGen, EveryBufferLiesInTheDataPages) {
    for (WorkloadKind k : kAllWorkloads) {
        for (const Buffer& b : draw(params(k), 1, 2000)) {
            ASSERT_EQ(b.pages, kBufferPages);
            ASSERT_LE(raw(b.first) + b.pages, kDataPages) << to_string(k);
        }
    }
}

TEST(WorkloadGen, StreamStaysInItsOwnStripe) {
    const Stripe s = stripe_of(kDataPages, 2, 1, kBufferPages);
    for (const Buffer& b : draw(params(WorkloadKind::Stream), 1, 5000)) {
        ASSERT_GE(raw(b.first), s.first);
        ASSERT_LE(raw(b.first) + b.pages, s.first + s.pages);
    }
}

TEST(WorkloadGen, StreamIsSequential) {
    const auto bufs = draw(params(WorkloadKind::Stream), 0, 3);
    EXPECT_EQ(raw(bufs[1].first), raw(bufs[0].first) + kBufferPages);
    EXPECT_EQ(raw(bufs[2].first), raw(bufs[1].first) + kBufferPages);
}

TEST(WorkloadGen, RingRecyclesItsBuffers) {
    WorkloadParams p = params(WorkloadKind::Ring);
    p.ring_buffers = 8;
    const auto bufs = draw(p, 0, 24);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(bufs[i], bufs[i + 8]);
    EXPECT_EQ(std::set<uint64_t>({raw(bufs[0].first), raw(bufs[1].first), raw(bufs[2].first), raw(bufs[3].first),
                                  raw(bufs[4].first), raw(bufs[5].first), raw(bufs[6].first), raw(bufs[7].first)})
                  .size(),
              8u);
}

TEST(WorkloadGen, RandomCoversTheDataPagesUniformly) {
    // 8 equal bands of data RAM each get about 1/8 of 40000 buffer starts.
    constexpr int kDraws = 40000;
    std::vector<int> bands(8, 0);
    for (const Buffer& b : draw(params(WorkloadKind::Random), 0, kDraws)) ++bands[raw(b.first) * 8 / kDataPages];
    constexpr int kPerBand = kDraws / 8;
    constexpr int kTolerance = kPerBand / 10;
    for (int n : bands) EXPECT_NEAR(n, kPerBand, kTolerance);
}

TEST(WorkloadGen, ZipfHasAHotSet) {
    // With s = 1.1 over 4096 slots, the 10 hottest slots take about 40% of the draws.
    std::map<uint64_t, int> freq;
    constexpr int kDraws = 20000;
    for (const Buffer& b : draw(params(WorkloadKind::Zipf), 0, kDraws)) ++freq[raw(b.first)];
    std::vector<int> counts;
    for (const auto& [start, n] : freq) counts.push_back(n);
    std::sort(counts.rbegin(), counts.rend());
    int top10 = 0;
    for (int i = 0; i < 10 && i < static_cast<int>(counts.size()); ++i) top10 += counts[i];
    EXPECT_GT(top10, kDraws * 30 / 100);
    EXPECT_LT(top10, kDraws * 55 / 100);
}

TEST(WorkloadGen, ZipfHotSetIsSharedByVcpus) {
    auto hottest = [](uint32_t vcpu) {
        std::map<uint64_t, int> freq;
        for (const Buffer& b : draw(params(WorkloadKind::Zipf), vcpu, 5000)) ++freq[raw(b.first)];
        return std::max_element(freq.begin(), freq.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    };
    EXPECT_EQ(hottest(0), hottest(1));
}

TEST(WorkloadGen, MixDrawsFromEveryKind) {
    auto g = WorkloadGen::create(params(WorkloadKind::Mix), 0);
    ASSERT_TRUE(g.has_value());
    std::set<WorkloadKind> seen;
    for (int i = 0; i < 200; ++i) {
        (void)g->next();
        seen.insert(g->last_kind());
    }
    EXPECT_EQ(seen, (std::set<WorkloadKind>{WorkloadKind::Stream, WorkloadKind::Ring, WorkloadKind::Zipf,
                                            WorkloadKind::Random}));
}

TEST(WorkloadGen, BalloonDrawsRandomBuffers) {
    auto g = WorkloadGen::create(params(WorkloadKind::Balloon), 0);
    ASSERT_TRUE(g.has_value());
    (void)g->next();
    EXPECT_EQ(g->last_kind(), WorkloadKind::Random);
}

TEST(WorkloadGen, RejectsAStripeSmallerThanABuffer) {
    WorkloadParams p = params(WorkloadKind::Stream, 4);
    p.data_pages = 60;  // 15 pages per vCPU < 16
    EXPECT_ERR(WorkloadGen::create(p, 0), EINVAL);
}

TEST(WorkloadGen, RejectsANonPositiveZipfExponent) {
    WorkloadParams p = params(WorkloadKind::Zipf);
    p.zipf_s = 0;
    EXPECT_ERR(WorkloadGen::create(p, 0), EINVAL);
}

TEST(WorkloadGen, RejectsAVcpuBeyondTheCount) {
    EXPECT_ERR(WorkloadGen::create(params(WorkloadKind::Ring, 2), 2), EINVAL);
}

TEST(Workload, NamesRoundTrip) {
    for (WorkloadKind k : kAllWorkloads) EXPECT_EQ(parse_workload(to_string(k)), k);
    EXPECT_EQ(parse_workload("zipfian"), std::nullopt);
}

}  // namespace
}  // namespace coiommu::loadgen
