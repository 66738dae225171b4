#include "engine/guest/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "tests/testing/expect.h"

namespace coiommu {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
// Two regions with a hole between them, as a VMM lays out RAM below and above the PCI hole.
const std::array<RegionSpec, 2> kTwoRegions{{{Gpa{0}, 2 * kMiB}, {Gpa{4 * kMiB}, 1 * kMiB}}};

GuestMemory make_two_regions() { return std::move(GuestMemory::create(kTwoRegions).value()); }

TEST(GuestMemory, TranslateInsideOneRegionSucceeds) {
    auto mem = make_two_regions();
    auto hva = mem.translate(Gpa{4 * kMiB + 0x1000}, 0x1000);
    ASSERT_OK(hva);
    EXPECT_NE(raw(*hva), 0u);
}

TEST(GuestMemory, RamRangesAreTheRegionsInGfnsWithTheHoleLeftOut) {
    const auto ranges = make_two_regions().ram_ranges();
    ASSERT_EQ(ranges.size(), 2u);
    EXPECT_EQ(raw(ranges[0].start), 0u);
    EXPECT_EQ(ranges[0].count, 512u);
    EXPECT_EQ(raw(ranges[1].start), 1024u);
    EXPECT_EQ(ranges[1].count, 256u);
}

TEST(GuestMemory, TranslateAcrossTheHoleFails) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.translate(Gpa{2 * kMiB - 0x1000}, 0x2000), EFAULT);
}

TEST(GuestMemory, TranslateInTheHoleFails) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.translate(Gpa{3 * kMiB}, 8), EFAULT);
}

TEST(GuestMemory, TranslateBeyondTheEndFails) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.translate(Gpa{5 * kMiB}, 1), EFAULT);
}

TEST(GuestMemory, TranslateWithHugeLengthDoesNotWrap) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.translate(Gpa{0x1000}, ~uint64_t{0}), EFAULT);
}

TEST(GuestMemory, WriteThenReadObjRoundTrips) {
    auto mem = make_two_regions();
    ASSERT_OK(mem.write_obj<uint64_t>(Gpa{0x2000}, 0xdeadbeefcafef00dull));
    auto v = mem.read_obj<uint64_t>(Gpa{0x2000});
    ASSERT_OK(v);
    EXPECT_EQ(*v, 0xdeadbeefcafef00dull);
}

TEST(GuestMemory, ReadObjStraddlingRegionEndFails) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.read_obj<uint64_t>(Gpa{2 * kMiB - 4}), EFAULT);
}

TEST(GuestMemory, AtomicWordSeesWritesThroughReadObj) {
    auto mem = make_two_regions();
    ASSERT_OK_AND_ASSIGN(auto word, mem.atomic_u32(Gpa{0x3004}));
    word.fetch_or(0x80000000u, std::memory_order_seq_cst);
    auto v = mem.read_obj<uint32_t>(Gpa{0x3004});
    ASSERT_OK(v);
    EXPECT_EQ(*v, 0x80000000u);
}

TEST(GuestMemory, UnalignedAtomicWordIsRejected) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.atomic_u32(Gpa{0x3002}), EINVAL);
    EXPECT_ERR(mem.atomic_u64(Gpa{0x3004}), EINVAL);
}

TEST(GuestMemory, AtomicWordOutsideRamIsRejected) {
    auto mem = make_two_regions();
    EXPECT_ERR(mem.atomic_u32(Gpa{3 * kMiB}), EFAULT);
}

TEST(GuestMemory, OverlappingRegionsAreRejected) {
    const std::array<RegionSpec, 2> overlap{{{Gpa{0}, 2 * kMiB}, {Gpa{kMiB}, kMiB}}};
    EXPECT_ERR(GuestMemory::create(overlap), EINVAL);
}

TEST(GuestMemory, ZeroSizedRegionIsRejected) {
    const std::array<RegionSpec, 1> zero{{{Gpa{0}, 0}}};
    EXPECT_ERR(GuestMemory::create(zero), EINVAL);
}

TEST(GuestMemory, RegionEndingPast64BitsIsRejected) {
    const std::array<RegionSpec, 1> wrap{{{Gpa{~uint64_t{0} & ~kPageMask}, 2 * kPageSize}}};
    EXPECT_ERR(GuestMemory::create(wrap), EOVERFLOW);
}

TEST(GuestMemory, UnalignedRegionIsRejected) {
    const std::array<RegionSpec, 1> unaligned{{{Gpa{0x800}, kMiB}}};
    EXPECT_ERR(GuestMemory::create(unaligned), EINVAL);
}

TEST(GuestMemory, EmptyRegionListIsRejected) { EXPECT_ERR(GuestMemory::create({}), EINVAL); }

TEST(GuestMemory, ExportedFdMapsTheSamePages) {
    auto mem = make_two_regions();
    ASSERT_OK(mem.write_obj<uint32_t>(Gpa{4 * kMiB + 8}, 0x1234u));
    const auto layout = mem.layout();
    ASSERT_EQ(layout.size(), 2u);
    // Another mapping of the exported fd (as another process would make) sees the same bytes.
    void* p = ::mmap(nullptr, layout[1].size, PROT_READ, MAP_SHARED, layout[1].fd, 0);
    ASSERT_NE(p, MAP_FAILED);
    uint32_t v = 0;
    std::memcpy(&v, static_cast<char*>(p) + 8, sizeof v);
    ::munmap(p, layout[1].size);
    EXPECT_EQ(v, 0x1234u);
}

TEST(GuestMemory, AdoptMapsRegionsOfAnotherOwner) {
    auto owner = make_two_regions();
    ASSERT_OK(owner.write_obj<uint32_t>(Gpa{0x10}, 77u));
    std::vector<AdoptedRegion> regions;
    for (const auto& l : owner.layout()) {
        regions.push_back(AdoptedRegion{l.base, l.size, UniqueFd(::dup(l.fd)), l.fd_offset});
    }
    ASSERT_OK_AND_ASSIGN(auto adopted, GuestMemory::adopt(std::move(regions)));
    auto v = adopted.read_obj<uint32_t>(Gpa{0x10});
    ASSERT_OK(v);
    EXPECT_EQ(*v, 77u);
}

TEST(GuestMemory, AdoptRejectsFdSmallerThanRegion) {
    auto owner = make_two_regions();
    std::vector<AdoptedRegion> regions;
    regions.push_back(AdoptedRegion{Gpa{0}, 8 * kMiB, UniqueFd(::dup(owner.layout()[0].fd)), 0});
    EXPECT_ERR(GuestMemory::adopt(std::move(regions)), EINVAL);
}

TEST(GuestMemory, GfnSpanCoversTheHighestRegion) {
    auto mem = make_two_regions();
    EXPECT_EQ(mem.gfn_span(), (5 * kMiB) / kPageSize);
    EXPECT_EQ(mem.total_bytes(), 3 * kMiB);
}

}  // namespace
}  // namespace coiommu
