// Differential test: the same single-threaded guest stream against the fast engine (coalesce=off)
// and the seed pinner must leave the same PINNED bits and the same DMA mapping set.
//
// The stream mixes what a guest does and what a hostile guest does: DMA maps of contiguous and
// scattered buffers (sorted, with repeats), unmaps, batches that name a gfn whose DTT table does not
// exist (the request stops there), single pages beyond guest RAM, PINNED cleared or forged behind
// the host's back, pages mapped by someone else in the container (EEXIST), and the container filling
// up (ENOSPC). No unpinning: the two unpinners differ on purpose (extents, crosvm's quirks).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "tests/unit/workers/engine_harness.h"

namespace coiommu::workers::test {
namespace {

constexpr uint64_t kSpan = 600;        // gfns the stream plays in (from kVmData)
constexpr Gfn kNoTable{0x1800};        // its leaf table is never created
constexpr uint64_t kForeignPage = 77;  // mapped by "someone else" in both containers

struct Pair {
    explicit Pair(uint64_t entry_limit)
        : fast(options(Variant::Fast, entry_limit)), seed(options(Variant::Seed, entry_limit)) {
        for (EmulatedVm* vm : {&fast, &seed}) {
            EXPECT_OK(vm->backend().map(Iova{raw(vm_gfn(kForeignPage)) << kPageShift}, Hva{0x7000'0000}, kPageSize,
                                        dma::Prot::ReadWrite));
        }
    }
    static VmOptions options(Variant v, uint64_t entry_limit) {
        EngineConfig cfg = test_config(v);
        cfg.coalesce = Coalesce::Off;
        cfg.unpin_policy = UnpinPolicy::Off;
        VmOptions o = vm_options(cfg, 1);
        o.fake.entry_limit = entry_limit;
        return o;
    }
    EmulatedVm fast;
    EmulatedVm seed;
};

void expect_same_state(Pair& p, int step) {
    for (uint64_t i = 0; i < kSpan; ++i) {
        const Gfn g = vm_gfn(i);
        ASSERT_EQ(p.fast.pinned(g), p.seed.pinned(g)) << "PINNED of gfn " << raw(g) << " after step " << step;
    }
    const auto a = p.fast.backend().mappings();
    const auto b = p.seed.backend().mappings();
    ASSERT_EQ(a.size(), b.size()) << "after step " << step;
    for (std::size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].iova, b[i].iova) << "after step " << step;
        ASSERT_EQ(a[i].size, b[i].size) << "after step " << step;
    }
}

void run_stream(uint64_t entry_limit, uint32_t seed_value, int steps) {
    Pair p(entry_limit);
    std::mt19937_64 rng(seed_value);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    std::vector<std::vector<Gfn>> held;  // buffers the guest currently has mapped

    for (int step = 0; step < steps; ++step) {
        const uint64_t op = pick(100);
        std::vector<Gfn> g;
        if (op < 40) {  // a contiguous buffer
            const uint64_t first = pick(kSpan - 32);
            g = vm_range(first, 1 + pick(24));
        } else if (op < 55) {  // a scatterlist with repeats
            for (uint64_t k = 0, n = 2 + pick(10); k < n; ++k) g.push_back(vm_gfn(pick(kSpan)));
            std::sort(g.begin(), g.end());
        }
        if (!g.empty()) {
            auto rf = p.fast.map(0, g);
            auto rs = p.seed.map(0, g);
            ASSERT_EQ(rf.has_value(), rs.has_value()) << "step " << step;
            if (rf) held.push_back(g);
        } else if (op < 70 && !held.empty()) {  // unmap a held buffer
            const uint64_t k = pick(held.size());
            for (EmulatedVm* vm : {&p.fast, &p.seed}) ASSERT_OK(vm->vcpu(0).unmap(held[k]));
            held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
        } else if (op < 78) {  // a batch that stops at a gfn without DTT table
            std::vector<Gfn> bad = vm_range(pick(kSpan - 8), 3);
            bad.push_back(kNoTable);
            bad.push_back(vm_gfn(pick(kSpan)));
            for (Gfn x : bad) {
                if (x == kNoTable) continue;
                ASSERT_OK(p.fast.guest().mark(x));
                ASSERT_OK(p.seed.guest().mark(x));
            }
            for (EmulatedVm* vm : {&p.fast, &p.seed}) ASSERT_OK(vm->vcpu(0).request_pins(kEndpoint, bad));
        } else if (op < 82) {  // a single page beyond guest RAM
            const Gfn beyond{(kVmRamBytes >> kPageShift) + pick(64)};
            for (EmulatedVm* vm : {&p.fast, &p.seed}) {
                ASSERT_OK(vm->guest().mark(beyond));
                ASSERT_OK(vm->vcpu(0).request_pins(kEndpoint, std::vector<Gfn>{beyond}));
            }
        } else if (op < 91) {  // the guest clears PINNED on some page
            const Gfn x = vm_gfn(pick(kSpan));
            ASSERT_OK(p.fast.guest().dtt().clear_pinned(x));
            ASSERT_OK(p.seed.guest().dtt().clear_pinned(x));
        } else {  // the guest forges PINNED on some page
            const Gfn x = vm_gfn(pick(kSpan));
            ASSERT_OK(p.fast.guest().dtt().forge_pinned(x));
            ASSERT_OK(p.seed.guest().dtt().forge_pinned(x));
        }
        expect_same_state(p, step);
        if (::testing::Test::HasFatalFailure()) return;
    }
    EXPECT_GT(p.fast.map_calls(), 50u) << "the stream must have exercised the map path";
}

TEST(Differential, FastWithoutCoalescingMatchesTheSeed) { run_stream(65535, 1, 400); }

TEST(Differential, MatchesTheSeedWithAnotherStream) { run_stream(65535, 7, 400); }

TEST(Differential, MatchesTheSeedWhenTheContainerFills) { run_stream(120, 3, 300); }

}  // namespace
}  // namespace coiommu::workers::test
