// Pin and unpin racing on overlapping pages, against the safety invariant (engine/README.md):
// a page the guest has DMA-mapped (count > 0) and sees PINNED is mapped in the container; and
// the host record never double-maps, never unmaps what it did not map, never leaks.
// Run under the tsan preset (label `concurrency`).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <thread>
#include <vector>

#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "tests/testing/expect.h"
#include "tests/testing/log_capture.h"
#include "tests/unit/core/pin_fixture.h"

namespace coiommu::core::test {
namespace {

constexpr uint64_t kFirstGfn = 0x100;
constexpr uint64_t kPages = 96;  // small, so every page is contended; spans two leaf pages
constexpr int kVcpus = 3;
constexpr int kIterations = 20000;
constexpr uint16_t kBdf = 0x0018;

// xorshift64: deterministic per thread, no shared state.
struct Rng {
    uint64_t s;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    Gfn gfn() { return Gfn{kFirstGfn + next() % kPages}; }
};

dma::FakeConfig slow_container() {
    dma::FakeConfig cfg;
    dma::LatencyModel lat;
    lat.map_per_call = std::chrono::nanoseconds(500);  // widens the map/unmap windows
    lat.unmap_per_call = std::chrono::nanoseconds(500);
    cfg.latency = lat;
    return cfg;
}

struct Violations {
    std::atomic<uint64_t> pinned_but_unmapped{0};
    std::atomic<uint64_t> request_errors{0};
};

// One vCPU: mark a page (DMA map), ask for a pin if it is not PINNED, check the invariant while
// the mapping is outstanding, then unmark (DMA unmap). vCPU 0 sends batches, the others singles.
void vcpu(PinFixture& f, int id, Violations& v, std::latch& start) {
    start.arrive_and_wait();
    Rng rng{0x9E3779B97F4A7C15ull * static_cast<uint64_t>(id + 1)};
    DttWalker walker = f.walker();
    EndpointSet eps;
    eps.add(kBdf);
    // A private batch buffer per vCPU, below the pinned range.
    const Gpa batch_gpa{static_cast<uint64_t>(id + 1) * 0x10000};
    for (int i = 0; i < kIterations; ++i) {
        const Gfn gfns[2] = {rng.gfn(), rng.gfn()};
        const int n = id == 0 ? 2 : 1;
        bool need_pin = false;
        for (int k = 0; k < n; ++k) {
            auto pinned = f.dtt().mark(gfns[k]);
            if (!pinned) {
                v.request_errors.fetch_add(1);
                return;
            }
            need_pin = need_pin || !*pinned;
        }
        if (need_pin) {
            uint64_t slot = 0;
            if (n == 1) {
                slot = (raw(gfns[0]) << kSingleGfnShift) | kBdf;
            } else {
                PinPageInfo info{};
                info.bdf = kBdf;
                info.nr_pages = 2;
                (void)f.mem().write_obj(batch_gpa, info);
                (void)f.mem().write_obj<uint64_t>(offset(batch_gpa, 16), raw(gfns[0]));
                (void)f.mem().write_obj<uint64_t>(offset(batch_gpa, 24), raw(gfns[1]));
                slot = raw(batch_gpa) | kPinPagesInBatch;
            }
            auto req = decode_request(slot, f.mem(), eps, {});
            if (!req) {
                v.request_errors.fetch_add(1);
            } else {
                auto report = process_request(f.ctx(), walker, *req);
                if (report.first_error) v.request_errors.fetch_add(1);
            }
        }
        for (int k = 0; k < n; ++k) {
            // The guest would fail its DMA map if PINNED were clear; when it is set, the device
            // may DMA now, so the page must be mapped.
            if (f.dtt().pinned(gfns[k]) && !f.backend().is_mapped(iova_of(gfns[k]), kPageSize)) {
                v.pinned_but_unmapped.fetch_add(1);
            }
        }
        for (int k = 0; k < n; ++k) (void)f.dtt().unmark(gfns[k]);
    }
}

// The LRU-style unpinner: second-chance scans, with an occasional balloon-style force.
void unpinner(PinFixture& f, const std::atomic<bool>& stop, std::latch& start) {
    start.arrive_and_wait();
    DttWalker walker = f.walker();
    Rng rng{0xDEADBEEFull};
    while (!stop.load(std::memory_order_relaxed)) {
        const Gfn gfn = rng.gfn();
        const Force force = (rng.next() % 16) == 0 ? Force::Yes : Force::No;
        (void)unpin_page(f.ctx(), walker, gfn, force);
    }
}

// A guest that clears PINNED behind the host's back.
void vandal(PinFixture& f, const std::atomic<bool>& stop, std::latch& start) {
    start.arrive_and_wait();
    Rng rng{0xC0FFEEull};
    while (!stop.load(std::memory_order_relaxed)) {
        (void)f.dtt().clear_pinned(rng.gfn());
        std::this_thread::yield();
    }
}

TEST(PinConcurrency, RacingPinAndUnpinKeepTheSafetyInvariant) {
    PinFixture f(slow_container());
    testing::LogCapture logs;  // force unpins of busy pages log errors by design
    for (uint64_t g = kFirstGfn; g < kFirstGfn + kPages; ++g) ASSERT_OK(f.guest().set_entry(Gfn{g}, 0));
    Violations v;
    std::atomic<bool> stop{false};

    std::latch start(kVcpus + 2);

    std::vector<std::thread> vcpus;
    for (int id = 0; id < kVcpus; ++id) vcpus.emplace_back(vcpu, std::ref(f), id, std::ref(v), std::ref(start));
    std::thread unpin_thread(unpinner, std::ref(f), std::cref(stop), std::ref(start));
    std::thread vandal_thread(vandal, std::ref(f), std::cref(stop), std::ref(start));
    for (auto& t : vcpus) t.join();
    stop.store(true);
    unpin_thread.join();
    vandal_thread.join();

    EXPECT_GT(f.backend().counters().unmap_calls.load(), 0u) << "the race never unpinned anything";
    EXPECT_EQ(v.pinned_but_unmapped.load(), 0u);
    EXPECT_EQ(v.request_errors.load(), 0u);
    EXPECT_EQ(f.backend().counters().map_eexist.load(), 0u) << "a page of ours was mapped twice";
    EXPECT_EQ(f.backend().counters().unmap_failures.load(), 0u);
    EXPECT_EQ(f.table().mapped_pages(), f.backend().live_entries());
    for (uint64_t g = kFirstGfn; g < kFirstGfn + kPages; ++g) {
        EXPECT_EQ(f.table().mapped(Gfn{g}), f.backend().is_mapped(iova_of(Gfn{g}), kPageSize)) << "gfn " << g;
        EXPECT_EQ(f.dtt().map_count(Gfn{g}), 0u) << "gfn " << g;
    }
}

// Runs (the pin path's RunLock) and single page locks (the unpinner's) on overlapping pages: at
// most one holder per page at any time, and no holder waits forever (a missed wake hangs the
// test). The owner words are plain memory, so under TSan a gap in the exclusion is a data race.
TEST(PinConcurrency, RunLocksAndPageLocksExcludeEachOther) {
    constexpr uint64_t kSpan = 96;
    constexpr int kRounds = 10000;
    ASSERT_OK_AND_ASSIGN(auto table, PinTable::create(kSpan));
    std::vector<int> owner(kSpan, -1);
    std::atomic<uint64_t> overlaps{0};
    std::latch start(3);
    auto hold = [&](int id, uint64_t first, uint64_t n) {
        for (uint64_t g = first; g < first + n; ++g) {
            if (owner[g] != -1) overlaps.fetch_add(1, std::memory_order_relaxed);
            owner[g] = id;
        }
        std::this_thread::yield();  // hold long enough that waiters go past their spin and sleep
        for (uint64_t g = first; g < first + n; ++g) {
            if (owner[g] != id) overlaps.fetch_add(1, std::memory_order_relaxed);
            owner[g] = -1;
        }
    };
    auto runs = [&](int id) {
        start.arrive_and_wait();
        Rng rng{0xC0FFEEull * static_cast<uint64_t>(id + 1)};
        PinTable::RunLock run;
        for (int i = 0; i < kRounds; ++i) {
            const uint64_t first = rng.next() % kSpan;
            const auto n = static_cast<uint32_t>(1 + rng.next() % std::min<uint64_t>(40, kSpan - first));
            table.lock_run(Gfn{first}, n, run);
            hold(id, first, n);
            run.unlock();
        }
    };
    std::thread a(runs, 0);
    std::thread b(runs, 1);
    start.arrive_and_wait();
    Rng rng{0xBADC0DEull};
    for (int i = 0; i < kRounds; ++i) {
        const uint64_t g = rng.next() % kSpan;
        auto lock = table.lock(Gfn{g});
        hold(2, g, 1);
    }
    a.join();
    b.join();
    EXPECT_EQ(overlaps.load(), 0u);
}

TEST(PinConcurrency, EverythingRecordedCanBeReleasedAfterARace) {
    PinFixture f(slow_container());
    testing::LogCapture logs;
    for (uint64_t g = kFirstGfn; g < kFirstGfn + kPages; ++g) ASSERT_OK(f.guest().set_entry(Gfn{g}, 0));
    Violations v;
    std::atomic<bool> stop{false};
    std::latch start(kVcpus + 1);
    std::vector<std::thread> vcpus;
    for (int id = 0; id < kVcpus; ++id) vcpus.emplace_back(vcpu, std::ref(f), id, std::ref(v), std::ref(start));
    std::thread vandal_thread(vandal, std::ref(f), std::cref(stop), std::ref(start));
    for (auto& t : vcpus) t.join();
    stop.store(true);
    vandal_thread.join();

    // Balloon the whole range: every page must come back, whatever the vandal left in PINNED.
    DttWalker walker = f.walker();
    for (uint64_t g = kFirstGfn; g < kFirstGfn + kPages; ++g) {
        const Gfn gfn{g};
        if (f.table().mapped(gfn)) ASSERT_OK(f.pin(gfn));  // re-sets a PINNED the vandal cleared
        const UnpinResult r = unpin_page(f.ctx(), walker, gfn, Force::Yes);
        EXPECT_TRUE(r == UnpinResult::Unpinned || r == UnpinResult::NotPinned) << to_string(r);
    }

    EXPECT_EQ(f.backend().live_entries(), 0u);
    EXPECT_EQ(f.table().mapped_pages(), 0u);
}

}  // namespace
}  // namespace coiommu::core::test
