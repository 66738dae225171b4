// Multi-threaded stress with the safety invariant checked continuously: every page a guest vCPU
// thread has DMA-mapped (marked) and sees PINNED is mapped in the FakeBackend - checked by the
// vCPU right after its map completes and again just before it unmaps, while the LRU unpinner runs
// on a 1 ms timer, other vCPUs pin overlapping buffers and a balloon thread forces unpins.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "tests/unit/workers/engine_harness.h"

namespace coiommu::workers::test {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kVcpus = 4;
constexpr uint64_t kShared = 256;                                // gfns [0, 256): every vCPU maps here (contention)
constexpr uint64_t kPrivate = 512;                               // then 512 private gfns per vCPU
constexpr uint64_t kBalloonFirst = kShared + kVcpus * kPrivate;  // the balloon's own range
constexpr uint64_t kBalloonPages = 64;
constexpr int kIterations = 300;  // per vCPU

struct Violation {
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> first_gfn{0};
    void record(Gfn g) {
        if (count.fetch_add(1) == 0) first_gfn = raw(g);
    }
};

void check_held(EmulatedVm& vm, const std::vector<Gfn>& pages, Violation& v) {
    for (Gfn g : pages) {
        if (vm.pinned(g) && !vm.mapped(g)) v.record(g);
    }
}

void vcpu_loop(EmulatedVm& vm, uint32_t vcpu, Violation& v, std::atomic<uint64_t>& failures) {
    std::mt19937_64 rng(1000 + vcpu);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    for (int it = 0; it < kIterations; ++it) {
        std::vector<Gfn> pages;
        if (pick(2) == 0) {
            pages = vm_range(pick(kShared - 32), 1 + pick(32));
        } else {
            pages = vm_range(kShared + vcpu * kPrivate + pick(kPrivate - 64), 1 + pick(64));
        }
        auto r = vm.map(vcpu, pages);
        if (!r) {
            failures.fetch_add(1);
            continue;
        }
        check_held(vm, pages, v);
        std::this_thread::sleep_for(std::chrono::microseconds(pick(200)));
        check_held(vm, pages, v);
        EXPECT_OK(vm.vcpu(vcpu).unmap(pages));
    }
}

void stress(EngineConfig cfg) {
    cfg.unpin_interval = 1ms;
    cfg.unpin_gen_threshold = 2;
    VmOptions o = vm_options(cfg, kVcpus);
    EmulatedVm vm(o);
    Violation v;
    std::atomic<uint64_t> failures{0};
    std::atomic<bool> done{false};

    // The balloon owns its range: the guest pins it once, unmaps it, then the balloon takes it.
    ASSERT_OK(vm.map_range(0, kBalloonFirst, kBalloonPages));
    vm.unmap_range(0, kBalloonFirst, kBalloonPages);
    std::thread balloon([&] {
        const GfnRange r{vm_gfn(kBalloonFirst), kBalloonPages};
        while (!done.load()) {
            auto res = vm.engine().balloon_unpin({&r, 1});
            EXPECT_TRUE(res && *res == telemetry::BalloonResult::Success);
            std::this_thread::sleep_for(2ms);
        }
    });
    std::vector<std::thread> vcpus;
    for (uint32_t i = 0; i < kVcpus; ++i) vcpus.emplace_back([&, i] { vcpu_loop(vm, i, v, failures); });
    for (auto& t : vcpus) t.join();
    done = true;
    balloon.join();

    EXPECT_EQ(v.count.load(), 0u) << "PINNED page not mapped, first gfn " << v.first_gfn.load();
    EXPECT_EQ(failures.load(), 0u) << "guest DMA maps that failed";
    // Host bookkeeping agrees with the container at rest (parked: no unpin in flight).
    vm.command(core::Command::ParkUnpin);
    uint64_t recorded = 0;
    if (auto* f = vm.fast()) recorded = f->pin_table().mapped_pages();
    if (auto* s = vm.seed()) recorded = s->pin_table().mapped_pages();
    EXPECT_EQ(recorded, vm.mapped_pages());
    EXPECT_GT(vm.stats().totals.pages_unpinned, 0u) << "the unpinner must have raced the pinners";
    vm.engine().stop();
    EXPECT_TRUE(vm.backend().mappings().empty());
}

TEST(EngineStress, FastEngineOneWorker) { stress(test_config()); }

TEST(EngineStress, FastEngineTwoWorkersNoSpin) {
    EngineConfig cfg = test_config();
    cfg.workers = 2;
    cfg.spin_budget = 0ns;
    stress(cfg);
}

TEST(EngineStress, FastEngineInlineWithoutCoalescing) {
    EngineConfig cfg = test_config();
    cfg.workers = 0;
    cfg.coalesce = Coalesce::Off;
    stress(cfg);
}

TEST(EngineStress, FastEngineTbbStore) {
    EngineConfig cfg = test_config();
    cfg.extent_store = ExtentStoreKind::Tbb;
    stress(cfg);
}

TEST(EngineStress, SeedSeedPinner) { stress(test_config(Variant::Seed)); }

}  // namespace
}  // namespace coiommu::workers::test
