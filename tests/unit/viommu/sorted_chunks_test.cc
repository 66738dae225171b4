// SortedChunkMap (engine/viommu/sorted_chunks.h): order, lookups, the split / merge / exchange
// boundaries with small chunks, range erase across chunks, errors, and a randomized differential
// test against std::map. check_invariants() is asserted after every change.
#include "engine/viommu/sorted_chunks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <iterator>
#include <map>
#include <random>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::viommu {
namespace {

struct Val {
    uint64_t a = 0;
    uint32_t b = 0;
    friend bool operator==(const Val&, const Val&) = default;
};

Val val_of(uint64_t key) { return Val{key * 3 + 1, static_cast<uint32_t>(key ^ 0x5a5a)}; }
uint64_t tag_of(uint64_t key) { return ~key; }

template <class M>
void put(M& m, uint64_t key) {
    ASSERT_OK(m.insert(key, tag_of(key), val_of(key)));
    ASSERT_TRUE(m.check_invariants());
}

template <class M>
std::vector<uint64_t> keys_of(const M& m) {
    std::vector<uint64_t> out;
    for (auto it = m.begin(); it != m.end(); ++it) out.push_back(it.key());
    return out;
}

// Chunks of 8: kMinFill 2, kMergeLimit 6, halves of 4.
using Small = SortedChunkMap<Val, 8>;

TEST(SortedChunkMap, EmptyMapHasNothingToFind) {
    Small m;
    EXPECT_TRUE(m.empty());
    EXPECT_TRUE(m.begin() == m.end());
    EXPECT_TRUE(m.lower_bound(0) == m.end());
    EXPECT_TRUE(m.lower_bound(UINT64_MAX) == m.end());
    EXPECT_TRUE(m.find(7) == m.end());
    EXPECT_TRUE(m.check_invariants());
}

TEST(SortedChunkMap, IteratesInKeyOrderWithEachKeysTagAndValue) {
    Small m;
    std::vector<uint64_t> keys;
    for (uint64_t k = 0; k < 200; ++k) keys.push_back(k * 7919 % 1000);
    std::shuffle(keys.begin(), keys.end(), std::mt19937_64(3));
    for (uint64_t k : keys) put(m, k);
    std::vector<uint64_t> sorted = keys;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(keys_of(m), sorted);
    for (auto it = m.begin(); it != m.end(); ++it) {
        EXPECT_EQ(it.tag(), tag_of(it.key()));
        EXPECT_EQ(*it, val_of(it.key()));
        EXPECT_EQ(it->a, val_of(it.key()).a);
    }
    // Backwards too, across every chunk boundary.
    std::vector<uint64_t> back;
    for (auto it = m.end(); it != m.begin();) back.push_back((--it).key());
    EXPECT_EQ(back, std::vector<uint64_t>(sorted.rbegin(), sorted.rend()));
    EXPECT_GT(m.chunk_count(), 20u);
}

TEST(SortedChunkMap, LowerBoundIsTheFirstKeyNotBelow) {
    Small m;
    for (uint64_t k = 10; k <= 400; k += 10) put(m, k);  // 40 keys: several chunks
    put(m, 0);
    put(m, UINT64_MAX);
    EXPECT_EQ(m.lower_bound(0).key(), 0u);
    EXPECT_EQ(m.lower_bound(1).key(), 10u);
    for (uint64_t k = 10; k <= 400; k += 10) {
        EXPECT_EQ(m.lower_bound(k).key(), k);       // a key itself
        EXPECT_EQ(m.lower_bound(k - 9).key(), k);   // just above the previous key
        EXPECT_EQ(m.upper_bound(k - 10).key(), k);  // strictly above the previous key
        EXPECT_EQ(m.find(k).key(), k);
        EXPECT_TRUE(m.find(k + 1) == m.end());
    }
    EXPECT_EQ(m.lower_bound(401).key(), UINT64_MAX);
    EXPECT_TRUE(m.upper_bound(UINT64_MAX) == m.end());
    EXPECT_TRUE(std::next(m.lower_bound(UINT64_MAX)) == m.end());
}

TEST(SortedChunkMap, AFullChunkSplitsIntoHalvesWherePutInFrontMiddleOrBack) {
    for (uint64_t extra : {uint64_t{0}, uint64_t{45}, uint64_t{100}}) {
        Small m;
        for (uint64_t k = 10; k <= 80; k += 10) put(m, k);  // exactly one full chunk
        EXPECT_EQ(m.chunk_count(), 1u);
        put(m, extra);
        EXPECT_EQ(m.chunk_count(), 2u) << extra;
        EXPECT_EQ(m.size(), 9u);
        std::vector<uint64_t> want{10, 20, 30, 40, 50, 60, 70, 80};
        want.insert(std::upper_bound(want.begin(), want.end(), extra), extra);
        EXPECT_EQ(keys_of(m), want);
    }
}

TEST(SortedChunkMap, AKeyBetweenChunksGoesToTheOneWithRoom) {
    Small m;
    for (uint64_t k = 10; k <= 90; k += 10) put(m, k);  // split: {10..40} {50..90}
    ASSERT_EQ(m.chunk_count(), 2u);
    for (uint64_t k : {41, 42, 43, 44}) put(m, k);  // fills the lower chunk to 8
    EXPECT_EQ(m.chunk_count(), 2u);
    put(m, 45);  // lower full, upper has room: its new first key
    EXPECT_EQ(m.chunk_count(), 2u);
    EXPECT_EQ(m.lower_bound(45).key(), 45u);
    EXPECT_EQ(std::prev(m.lower_bound(45)).key(), 44u);
}

TEST(SortedChunkMap, AShortChunkMergesWithItsNeighbourWhenBothFitThreeQuarters) {
    Small m;
    for (uint64_t k = 1; k <= 9; ++k) put(m, k);  // {1..4} {5..9}
    ASSERT_EQ(m.chunk_count(), 2u);
    m.erase(m.find(9));
    m.erase(m.find(8));
    m.erase(m.find(7));  // {1..4} {5, 6}: 6 together, none short yet
    EXPECT_EQ(m.chunk_count(), 2u);
    m.erase(m.find(6));  // {5} is short and 5 fit: one chunk
    EXPECT_EQ(m.chunk_count(), 1u);
    EXPECT_TRUE(m.check_invariants());
    EXPECT_EQ(keys_of(m), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

TEST(SortedChunkMap, AShortChunkTakesEntriesFromAFullNeighbour) {
    Small m;
    for (uint64_t k = 1; k <= 9; ++k) put(m, k);  // {1..4} {5..9}
    for (uint64_t k : {10, 11, 12}) put(m, k);    // {1..4} {5..12}
    ASSERT_EQ(m.chunk_count(), 2u);
    for (uint64_t k : {1, 2, 3}) m.erase(m.find(k));  // {4} short, 9 together: exchange
    EXPECT_EQ(m.chunk_count(), 2u);
    EXPECT_TRUE(m.check_invariants());
    EXPECT_EQ(keys_of(m), (std::vector<uint64_t>{4, 5, 6, 7, 8, 9, 10, 11, 12}));
    EXPECT_EQ(*m.find(4), val_of(4));
    EXPECT_EQ(m.find(12).tag(), tag_of(12));
}

TEST(SortedChunkMap, ErasesARangeAcrossManyChunks) {
    Small m;
    for (uint64_t k = 0; k < 300; ++k) put(m, k);
    m.erase(m.lower_bound(37), m.lower_bound(251));
    ASSERT_TRUE(m.check_invariants());
    std::vector<uint64_t> want;
    for (uint64_t k = 0; k < 300; ++k) {
        if (k < 37 || k >= 251) want.push_back(k);
    }
    EXPECT_EQ(keys_of(m), want);
    for (uint64_t k : want) EXPECT_EQ(*m.find(k), val_of(k));
    m.erase(m.begin(), m.lower_bound(250));  // all of the lower part: whole leading chunks
    ASSERT_TRUE(m.check_invariants());
    EXPECT_EQ(m.begin().key(), 251u);
    m.erase(m.begin(), m.end());
    EXPECT_TRUE(m.empty());
    EXPECT_EQ(m.chunk_count(), 0u);
    EXPECT_TRUE(m.check_invariants());
}

TEST(SortedChunkMap, AnEmptyRangeErasesNothing) {
    Small m;
    for (uint64_t k = 0; k < 20; ++k) put(m, k);
    m.erase(m.lower_bound(5), m.lower_bound(5));
    EXPECT_EQ(m.size(), 20u);
    EXPECT_TRUE(m.check_invariants());
}

TEST(SortedChunkMap, RefusesADuplicateOrAMisplacedHintAndChangesNothing) {
    Small m;
    for (uint64_t k = 10; k <= 100; k += 10) put(m, k);
    const auto before = keys_of(m);
    EXPECT_ERR(m.insert(50, 0, Val{}), EEXIST);
    EXPECT_ERR(m.insert(m.lower_bound(50), 50, 0, Val{}), EEXIST);
    EXPECT_ERR(m.insert(m.lower_bound(80), 55, 0, Val{}), EINVAL);  // belongs before 60
    EXPECT_ERR(m.insert(m.begin(), 55, 0, Val{}), EINVAL);          // belongs after 50
    EXPECT_ERR(m.insert(m.end(), 5, 0, Val{}), EINVAL);
    EXPECT_EQ(keys_of(m), before);
    EXPECT_EQ(*m.find(50), val_of(50));
    EXPECT_TRUE(m.check_invariants());
}

TEST(SortedChunkMap, ClearEmptiesAndTheMapIsUsableAgain) {
    Small m;
    for (uint64_t k = 0; k < 100; ++k) put(m, k);
    m.clear();
    EXPECT_TRUE(m.empty());
    EXPECT_TRUE(m.begin() == m.end());
    EXPECT_TRUE(m.check_invariants());
    for (uint64_t k = 100; k > 0; --k) put(m, k);  // descending: every insert at the front
    EXPECT_EQ(m.size(), 100u);
    EXPECT_EQ(m.begin().key(), 1u);
}

TEST(SortedChunkMap, ManyChunksSpanSeveralSlabs) {
    SortedChunkMap<Val, 64> m;
    constexpr uint64_t kKeys = 200'000;  // ~6000 chunks of ~3 KiB: slabs of 64 KiB up to 2 MiB
    for (uint64_t k = 0; k < kKeys; ++k) ASSERT_OK(m.insert(m.end(), k * 2, tag_of(k), val_of(k)));
    ASSERT_TRUE(m.check_invariants());
    EXPECT_EQ(m.size(), kKeys);
    EXPECT_EQ(m.find(2 * 12345).value(), val_of(12345));
    EXPECT_EQ(m.lower_bound(2 * 99'999 + 1).key(), 2 * 100'000u);
    for (uint64_t k = 0; k < kKeys; k += 2) m.erase(m.find(k * 2));  // chunks free and merge
    ASSERT_TRUE(m.check_invariants());
    EXPECT_EQ(m.size(), kKeys / 2);
    for (uint64_t k = 0; k < kKeys; k += 2) ASSERT_OK(m.insert(k * 2, tag_of(k), val_of(k)));  // reuse
    ASSERT_TRUE(m.check_invariants());
    EXPECT_EQ(m.size(), kKeys);
}

// ---- differential ------------------------------------------------------------------------------

template <uint32_t kCap>
void differential(uint64_t seed, int steps, uint64_t key_space) {
    SortedChunkMap<Val, kCap> m;
    std::map<uint64_t, Val> ref;
    std::mt19937_64 rng(seed);
    auto key = [&] { return std::uniform_int_distribution<uint64_t>(0, key_space - 1)(rng); };
    for (int step = 0; step < steps; ++step) {
        const unsigned op = rng() % 100;
        const uint64_t k = key();
        if (op < 45) {  // insert (with a duplicate now and then)
            const bool present = ref.count(k) != 0;
            const auto st = m.insert(m.lower_bound(k), k, tag_of(k), val_of(k));
            ASSERT_EQ(st.has_value(), !present) << "step " << step;
            if (!present) ref.emplace(k, val_of(k));
        } else if (op < 80) {  // erase one
            const auto it = m.find(k);
            ASSERT_EQ(it != m.end(), ref.count(k) != 0) << "step " << step;
            if (it != m.end()) {
                m.erase(it);
                ref.erase(k);
            }
        } else if (op < 85) {  // erase a range, sometimes a long one
            uint64_t hi = 0;
            if (__builtin_add_overflow(k, std::uniform_int_distribution<uint64_t>(0, key_space / 64)(rng), &hi)) {
                hi = UINT64_MAX;
            }
            m.erase(m.lower_bound(k), m.lower_bound(hi));
            ref.erase(ref.lower_bound(k), ref.lower_bound(hi));
        } else {  // lookups
            const auto it = m.lower_bound(k);
            const auto rit = ref.lower_bound(k);
            ASSERT_EQ(it == m.end(), rit == ref.end()) << "step " << step;
            if (rit != ref.end()) {
                ASSERT_EQ(it.key(), rit->first) << "step " << step;
                ASSERT_EQ(*it, rit->second);
                ASSERT_EQ(it.tag(), tag_of(rit->first));
            }
            if (rit != ref.begin()) {
                ASSERT_EQ(std::prev(it).key(), std::prev(rit)->first) << "step " << step;
            }
        }
        ASSERT_TRUE(m.check_invariants()) << "step " << step;
        ASSERT_EQ(m.size(), ref.size()) << "step " << step;
        if (step % 1000 == 0) {
            auto it = m.begin();
            for (const auto& [rk, rv] : ref) {
                ASSERT_EQ(it.key(), rk);
                ASSERT_EQ(*it, rv);
                ++it;
            }
            ASSERT_TRUE(it == m.end());
        }
    }
}

TEST(SortedChunkMapDifferential, AgreesWithStdMapInChunksOf4) { differential<4>(1, 60'000, 2'000); }
TEST(SortedChunkMapDifferential, AgreesWithStdMapInChunksOf8) { differential<8>(2, 60'000, 5'000); }
TEST(SortedChunkMapDifferential, AgreesWithStdMapInChunksOf64) { differential<64>(3, 60'000, 20'000); }
TEST(SortedChunkMapDifferential, AgreesWithStdMapOverTheWholeKeySpace) { differential<16>(4, 40'000, UINT64_MAX); }

}  // namespace
}  // namespace coiommu::viommu
