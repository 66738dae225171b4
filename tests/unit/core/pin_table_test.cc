#include "engine/core/pin_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>
#include <sys/resource.h>

#include "tests/testing/expect.h"

namespace coiommu::core {
namespace {

constexpr uint64_t kGfns = 4096;  // a 16 MiB guest

std::vector<uint64_t> mapped_in(const PinTable& t, uint64_t first, uint64_t end) {
    std::vector<uint64_t> out;
    (void)t.for_each_mapped(Gfn{first}, end, [&](Gfn g) {
        out.push_back(raw(g));
        return true;
    });
    return out;
}

TEST(PinTable, ZeroGfnsIsRejected) { EXPECT_ERR(PinTable::create(0), EINVAL); }

TEST(PinTable, SizeOverflowIsRejected) { EXPECT_ERR(PinTable::create(uint64_t{1} << 63), EOVERFLOW); }

TEST(PinTable, TableForATebibyteGuestIsReservedLazily) {
    // 2^28 gfns = 1 TiB of guest RAM = a 1 GiB table; MAP_NORESERVE commits only touched pages.
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(uint64_t{1} << 28));
    EXPECT_EQ(t.size(), uint64_t{1} << 28);
    EXPECT_FALSE(t.mapped(Gfn{(uint64_t{1} << 28) - 1}));
}

TEST(PinTable, InRangeStopsAtTheGfnCount) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    EXPECT_TRUE(t.in_range(Gfn{kGfns - 1}));
    EXPECT_FALSE(t.in_range(Gfn{kGfns}));
}

TEST(PinTable, NewTableRecordsNothing) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    EXPECT_FALSE(t.mapped(Gfn{7}));
    EXPECT_EQ(t.mapped_pages(), 0u);
}

TEST(PinTable, SetMappedIsVisibleAndCounted) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    {
        auto lock = t.lock(Gfn{7});
        lock.set_mapped();
        EXPECT_TRUE(lock.mapped());
    }
    EXPECT_TRUE(t.mapped(Gfn{7}));
    EXPECT_FALSE(t.mapped(Gfn{8}));
    EXPECT_EQ(t.mapped_pages(), 1u);
}

TEST(PinTable, ClearMappedForgetsThePage) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    t.lock(Gfn{7}).set_mapped();

    t.lock(Gfn{7}).clear_mapped();

    EXPECT_FALSE(t.mapped(Gfn{7}));
    EXPECT_EQ(t.mapped_pages(), 0u);
}

TEST(PinTable, HeldLockRefusesTryLock) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto held = t.lock(Gfn{3});
    EXPECT_FALSE(t.try_lock(Gfn{3}).owns_lock());
}

TEST(PinTable, ReleasedLockCanBeTakenAgain) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto held = t.lock(Gfn{3});
    held.unlock();
    EXPECT_TRUE(t.try_lock(Gfn{3}).owns_lock());
}

TEST(PinTable, LocksOfDifferentPagesAreIndependent) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto held = t.lock(Gfn{3});
    EXPECT_TRUE(t.try_lock(Gfn{4}).owns_lock());
}

TEST(PinTable, LockKeepsTheMappedBit) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    t.lock(Gfn{3}).set_mapped();
    auto held = t.lock(Gfn{3});
    EXPECT_TRUE(t.mapped(Gfn{3}));
}

TEST(PinTable, MovedGuardUnlocksOnce) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto a = t.lock(Gfn{3});
    PinTable::PageLock b = std::move(a);
    EXPECT_FALSE(a.owns_lock());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(b.owns_lock());
    EXPECT_FALSE(t.try_lock(Gfn{3}).owns_lock());
    b.unlock();
    EXPECT_TRUE(t.try_lock(Gfn{3}).owns_lock());
}

TEST(PinTable, LockBlocksUntilTheHolderReleases) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto held = t.lock(Gfn{3});
    std::atomic<bool> acquired{false};
    std::thread waiter([&] {
        auto mine = t.lock(Gfn{3});
        acquired.store(true);
    });
    // Long enough for the waiter to pass its spin phase and sleep on the futex.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(acquired.load());

    held.unlock();
    waiter.join();

    EXPECT_TRUE(acquired.load());
}

TEST(PinTableRunLock, HoldsEveryPageOfTheRunUntilUnlocked) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    PinTable::RunLock run;
    t.lock_run(Gfn{10}, 5, run);
    EXPECT_EQ(run.size(), 5u);
    for (uint64_t g = 10; g < 15; ++g) EXPECT_FALSE(t.try_lock(Gfn{g}).owns_lock()) << "gfn " << g;
    EXPECT_TRUE(t.try_lock(Gfn{9}).owns_lock());
    EXPECT_TRUE(t.try_lock(Gfn{15}).owns_lock());
    run.unlock();
    for (uint64_t g = 10; g < 15; ++g) EXPECT_TRUE(t.try_lock(Gfn{g}).owns_lock()) << "gfn " << g;
}

TEST(PinTableRunLock, ReportsThePagesRecordedBeforeTheLock) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    t.lock(Gfn{12}).set_mapped();
    PinTable::RunLock run;
    t.lock_run(Gfn{10}, 4, run);
    EXPECT_FALSE(run.mapped(0));
    EXPECT_TRUE(run.mapped(2));
    run.unlock();
    EXPECT_TRUE(t.mapped(Gfn{12})) << "unlocking keeps an existing record";
}

TEST(PinTableRunLock, MarkedPagesArePublishedByTheUnlock) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    PinTable::RunLock run;
    t.lock_run(Gfn{1020}, 8, run);  // crosses the chunk boundary at 1024
    run.mark_mapped(2, 6);
    t.add_mapped_pages(4);
    EXPECT_TRUE(run.mapped(2));
    EXPECT_FALSE(run.mapped(6));
    EXPECT_FALSE(t.mapped(Gfn{1022})) << "never visible before the unlock";
    run.unlock();
    EXPECT_EQ(mapped_in(t, 0, kGfns), (std::vector<uint64_t>{1022, 1023, 1024, 1025}));
    EXPECT_EQ(t.mapped_pages(), 4u);
}

TEST(PinTableRunLock, ReusedRunStartsWithNothingMarked) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    PinTable::RunLock run;
    t.lock_run(Gfn{0}, 2, run);
    run.mark_mapped(0, 2);
    run.unlock();
    t.lock_run(Gfn{100}, 2, run);
    EXPECT_FALSE(run.mapped(0));
    run.unlock();
    EXPECT_FALSE(t.mapped(Gfn{100}));
    EXPECT_FALSE(t.mapped(Gfn{101}));
}

TEST(PinTableRunLock, WaitsForAPageHeldByAnotherThread) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    auto held = t.lock(Gfn{7});
    std::atomic<bool> acquired{false};
    std::thread waiter([&] {
        PinTable::RunLock run;
        t.lock_run(Gfn{5}, 4, run);
        acquired.store(true);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the spin phase, on the futex
    EXPECT_FALSE(acquired.load());
    EXPECT_FALSE(t.try_lock(Gfn{5}).owns_lock()) << "the pages below the held one are taken in order";

    held.unlock();
    waiter.join();

    EXPECT_TRUE(acquired.load());
    EXPECT_TRUE(t.try_lock(Gfn{8}).owns_lock()) << "the run's destructor released it";
}

TEST(PinTableRunLock, FindsTheNextPageInEitherStateAcrossWords) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    for (uint64_t g : {3, 64, 65, 66, 129}) t.lock(Gfn{g}).set_mapped();
    PinTable::RunLock run;
    t.lock_run(Gfn{0}, 130, run);
    run.mark_mapped(70, 72);
    using enum PinTable::MappedState;
    EXPECT_EQ(run.find(0, Mapped), 3u);
    EXPECT_EQ(run.find(4, Mapped), 64u) << "the next 64-page word";
    EXPECT_EQ(run.find(64, Unmapped), 67u);
    EXPECT_EQ(run.find(67, Mapped), 70u) << "marked in this run";
    EXPECT_EQ(run.find(70, Unmapped), 72u);
    EXPECT_EQ(run.find(72, Mapped), 129u);
    EXPECT_EQ(run.find(129, Unmapped), 130u) << "none left: size()";
    EXPECT_EQ(run.find(130, Mapped), 130u);
}

TEST(PinTableRunLock, MarksWholeWordsAndPartsOfWords) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    PinTable::RunLock run;
    t.lock_run(Gfn{2000}, 200, run);
    run.mark_mapped(60, 192);  // part of word 0, all of words 1 and 2, none of word 3
    EXPECT_FALSE(run.mapped(59));
    EXPECT_TRUE(run.mapped(60));
    EXPECT_TRUE(run.mapped(191));
    EXPECT_FALSE(run.mapped(192));
    run.unlock();
    const auto got = mapped_in(t, 0, kGfns);
    ASSERT_EQ(got.size(), 132u);
    EXPECT_EQ(got.front(), 2060u);
    EXPECT_EQ(got.back(), 2191u);
}

TEST(PinTableRunLock, UnlockWakesAThreadSleepingOnOneOfItsPages) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    PinTable::RunLock run;
    t.lock_run(Gfn{5}, 5, run);
    std::atomic<bool> acquired{false};
    std::thread waiter([&] {
        auto lock = t.lock(Gfn{7});
        acquired.store(true);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the spin phase, on the futex
    EXPECT_FALSE(acquired.load());

    run.unlock();

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!acquired.load() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_TRUE(acquired.load()) << "the run's unlock left a sleeper asleep";
    if (!acquired.load()) t.try_lock(Gfn{7}).unlock();  // a PageLock's unlock always wakes: no hang
    waiter.join();
}

TEST(PinTable, MovedTableKeepsItsRecords) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    t.lock(Gfn{9}).set_mapped();

    PinTable moved = std::move(t);

    EXPECT_TRUE(moved.mapped(Gfn{9}));
    EXPECT_EQ(moved.mapped_pages(), 1u);
}

TEST(PinTable, ForEachMappedVisitsTheRecordedPagesOfTheRangeAscending) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    for (uint64_t g : {5u, 1023u, 1024u, 3000u, 4095u}) t.lock(Gfn{g}).set_mapped();
    {
        auto gone = t.lock(Gfn{3000});
        gone.clear_mapped();
    }
    EXPECT_EQ(mapped_in(t, 0, kGfns), (std::vector<uint64_t>{5, 1023, 1024, 4095}));
    EXPECT_EQ(mapped_in(t, 6, 1024), (std::vector<uint64_t>{1023}));
    EXPECT_EQ(mapped_in(t, 1024, ~uint64_t{0}), (std::vector<uint64_t>{1024, 4095})) << "end clamped to the table";
}

TEST(PinTable, ForEachMappedStopsWhenTheVisitorSaysSo) {
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(kGfns));
    for (uint64_t g : {1u, 2u, 3u}) t.lock(Gfn{g}).set_mapped();
    int visits = 0;
    EXPECT_FALSE(t.for_each_mapped(Gfn{0}, kGfns, [&](Gfn) { return ++visits < 2; }));
    EXPECT_EQ(visits, 2);
}

long minor_faults() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

TEST(PinTable, ForEachMappedOverATebibyteTableReadsOnlyTouchedChunks) {
    // 2^28 words: reading them all takes seconds (and commits 1 GiB); the summary makes it cheap.
    ASSERT_OK_AND_ASSIGN(auto t, PinTable::create(uint64_t{1} << 28));
    t.lock(Gfn{7}).set_mapped();
    t.lock(Gfn{(uint64_t{1} << 28) - 1}).set_mapped();
    // Reading an untouched page of the table costs a minor fault (the zero page is mapped in), so a
    // scan that read every word would fault 2^18 times (512 with huge zero pages); one that reads only the summary and
    // the two touched chunks faults a handful of times, whatever the machine's speed.
    const long faults_before = minor_faults();
    for (int i = 0; i < 10; ++i) EXPECT_EQ(mapped_in(t, 0, ~uint64_t{0}).size(), 2u);
    EXPECT_LT(minor_faults() - faults_before, 64) << minor_faults() - faults_before;
}

}  // namespace
}  // namespace coiommu::core
