// Allocation failure: SortedChunkMap::insert and BasicMemoryMapper::add_map report ENOMEM, change
// nothing, throw nothing, and work again once memory is back. This binary replaces the global
// operator new / delete (malloc underneath) so that a test can make one allocation fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "engine/viommu/basic_mapper.h"
#include "engine/viommu/sorted_chunks.h"
#include "tests/testing/expect.h"

namespace {

// -1: every allocation succeeds. n >= 0: n more succeed, the next one fails, then all succeed.
thread_local long t_fail_in = -1;
thread_local long t_failures = 0;

bool take_failure() {
    if (t_fail_in < 0) return false;
    if (t_fail_in-- > 0) return false;
    ++t_failures;
    return true;
}

void* checked_malloc(std::size_t n) { return take_failure() ? nullptr : std::malloc(n == 0 ? 1 : n); }

void* checked_aligned(std::size_t n, std::align_val_t align) {
    if (take_failure()) return nullptr;
    void* p = nullptr;
    const std::size_t a = std::max(static_cast<std::size_t>(align), sizeof(void*));
    return ::posix_memalign(&p, a, n == 0 ? 1 : n) == 0 ? p : nullptr;
}

}  // namespace

void* operator new(std::size_t n) {
    void* p = checked_malloc(n);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return checked_malloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
    void* p = checked_aligned(n, a);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return checked_aligned(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace coiommu::viommu {
namespace {

// Arms a failure of the next allocation for the scope of one call.
class FailNextAllocation {
public:
    FailNextAllocation() : failures_before_(t_failures) { t_fail_in = 0; }
    ~FailNextAllocation() { t_fail_in = -1; }
    FailNextAllocation(const FailNextAllocation&) = delete;
    FailNextAllocation& operator=(const FailNextAllocation&) = delete;
    [[nodiscard]] bool failed() const { return t_failures != failures_before_; }

private:
    long failures_before_;
};

struct Val {
    uint64_t a = 0;
    uint64_t b = 0;
};

template <class M>
std::vector<uint64_t> keys_of(const M& m) {
    std::vector<uint64_t> out;
    for (auto it = m.begin(); it != m.end(); ++it) out.push_back(it.key());
    return out;
}

TEST(SortedChunkMapAllocation, EveryInsertThatNeedsMemoryFailsCleanlyAndWorksOnRetry) {
    SortedChunkMap<Val, 8> m;  // small chunks: many splits, chunk-vector growths and slabs
    std::mt19937_64 rng(7);
    int refused = 0;
    for (int i = 0; i < 3000; ++i) {
        const uint64_t key = rng() % 1'000'000;
        if (m.find(key) != m.end()) continue;
        const auto before = keys_of(m);
        Status st;
        bool failed = false;
        {
            FailNextAllocation arm;
            st = m.insert(key, key, Val{key, i + 0u});
            failed = arm.failed();
        }
        if (failed) {
            ++refused;
            EXPECT_ERR(st, ENOMEM);
            ASSERT_EQ(keys_of(m), before) << "insert " << i << " changed the map although it failed";
            ASSERT_TRUE(m.check_invariants());
            ASSERT_OK(m.insert(key, key, Val{key, i + 0u}));  // memory is back
        } else {
            ASSERT_OK(st);  // no allocation was needed
        }
        ASSERT_TRUE(m.check_invariants());
        ASSERT_EQ(m.find(key).value().a, key);
    }
    // The first insert, each growth of the chunk vector (16, 32, .. entries) and each new slab.
    EXPECT_GE(refused, 6);
}

TEST(BasicMemoryMapperAllocation, AddMapReportsEnomemAndLeavesTheDomainAsItWas) {
    BasicMemoryMapper m(~uint64_t{0});
    int refused = 0;
    for (uint64_t i = 0; i < 20'000; ++i) {
        const uint64_t iova = (i * 7919 % 20'000) * 0x2000;  // every other page, scattered
        const MappingInfo info{Iova{iova}, Gpa{iova}, 0x1000, Prot::ReadWrite};
        const size_t before = m.size();
        Result<AddMapResult> r;
        bool failed = false;
        {
            FailNextAllocation arm;
            r = m.add_map(info);
            failed = arm.failed();
        }
        if (failed) {
            ++refused;
            EXPECT_ERR(r, ENOMEM);
            ASSERT_EQ(m.size(), before);
            // Not half-added: the same mapping maps now (no overlap with itself).
            auto again = m.add_map(info);
            ASSERT_OK(again);
            ASSERT_EQ(*again, AddMapResult::Ok);
        } else {
            ASSERT_OK(r);
            ASSERT_EQ(*r, AddMapResult::Ok);
        }
        ASSERT_EQ(m.size(), before + 1);
    }
    EXPECT_GT(refused, 5);
    // remove_map allocates nothing: it works with the next allocation failing.
    Result<RemoveMapResult> removed = RemoveMapResult::overlap_failure();
    bool failed = false;
    {
        FailNextAllocation arm;
        removed = m.remove_map(Iova{0}, uint64_t{20'000} * 0x2000);
        failed = arm.failed();
    }
    EXPECT_FALSE(failed);
    ASSERT_OK(removed);
    EXPECT_TRUE(removed->is_success());
    EXPECT_EQ(m.size(), 0u);
}

}  // namespace
}  // namespace coiommu::viommu
