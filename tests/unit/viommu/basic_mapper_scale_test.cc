// BasicMemoryMapper with thousands of mappings: its ordered map then spans many chunks, so the
// walks of remove_map and export_range cross chunk boundaries (the crosvm-derived cases in
// basic_mapper_test.cc fit in one chunk).
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "engine/viommu/basic_mapper.h"
#include "tests/testing/expect.h"

namespace coiommu::viommu {
namespace {

constexpr uint64_t kPage = 0x1000;
constexpr uint64_t kMany = 3000;  // about 90 chunks

MappingInfo page_at(uint64_t page, uint64_t pages = 1) {
    return MappingInfo{Iova{page * kPage}, Gpa{page * kPage}, pages * kPage, Prot::ReadWrite};
}

void add(BasicMemoryMapper& m, const MappingInfo& info) {
    auto r = m.add_map(info);
    ASSERT_OK(r);
    ASSERT_EQ(*r, AddMapResult::Ok);
}

bool overlaps_existing(BasicMemoryMapper& m, uint64_t page) {
    auto r = m.add_map(page_at(page));
    return r.has_value() && *r == AddMapResult::OverlapFailure;
}

TEST(BasicMemoryMapperScale, RemoveRefusingASplitAtTheFarEndRemovesNothing) {
    BasicMemoryMapper m(~uint64_t{0});
    add(m, page_at(0, 4));                                        // pages 0..3, the lowest mapping
    for (uint64_t p = 4; p < 4 + kMany; ++p) add(m, page_at(p));  // then one page each
    // The range starts inside the lowest mapping: the walk down from the end passes every
    // other mapping (many chunks) before it finds the one it would split.
    auto r = m.remove_map(Iova{2 * kPage}, (2 + kMany) * kPage);
    ASSERT_OK(r);
    EXPECT_TRUE(r->is_overlap_failure());
    EXPECT_EQ(m.size(), kMany + 1);
    for (uint64_t p : {uint64_t{0}, uint64_t{3}, uint64_t{4}, kMany / 2, kMany + 3}) {
        EXPECT_TRUE(overlaps_existing(m, p)) << "page " << p << " lost its mapping";
    }
    auto whole = m.remove_map(Iova{0}, (4 + kMany) * kPage);
    ASSERT_OK(whole);
    EXPECT_TRUE(whole->is_success());
    EXPECT_TRUE(m.empty());
}

TEST(BasicMemoryMapperScale, RemoveOfAWideRangeTakesExactlyTheMappingsInside) {
    BasicMemoryMapper m(~uint64_t{0});
    for (uint64_t i = 0; i < kMany; ++i) add(m, page_at(2 * ((i * 7919) % kMany)));  // even pages, shuffled
    const uint64_t from = 1000;
    const uint64_t to = 5000;  // pages [1000, 5000): mappings at 1000, 1002, .., 4998
    auto r = m.remove_map(Iova{from * kPage}, (to - from) * kPage);
    ASSERT_OK(r);
    EXPECT_TRUE(r->is_success());
    EXPECT_EQ(m.size(), kMany - (to - from) / 2);
    EXPECT_TRUE(overlaps_existing(m, from - 2));
    EXPECT_FALSE(overlaps_existing(m, from));  // free now (and mapped again by the probe)
    EXPECT_FALSE(overlaps_existing(m, to - 2));
    EXPECT_TRUE(overlaps_existing(m, to));
}

TEST(BasicMemoryMapperScale, ExportWalksContiguousMappingsAcrossChunks) {
    BasicMemoryMapper m(~uint64_t{0});
    for (uint64_t p = 0; p < kMany; ++p) add(m, page_at(p));
    ASSERT_OK(m.start_export_session());
    // One region: every mapping continues the GPA run of the one below it.
    auto all = m.export_range(Iova{kPage / 2}, kMany * kPage - kPage);
    ASSERT_OK(all);
    ASSERT_EQ(all->size(), 1u);
    EXPECT_EQ((*all)[0], (MemRegion{Gpa{kPage / 2}, kMany * kPage - kPage, Prot::ReadWrite}));
    ASSERT_OK(m.release(Iova{kPage / 2}, kMany * kPage - kPage));
    // A hole in the middle: not covered.
    auto removed = m.remove_map(Iova{(kMany / 2) * kPage}, kPage);
    ASSERT_OK(removed);
    ASSERT_TRUE(removed->is_success());
    EXPECT_ERR(m.export_range(Iova{0}, kMany * kPage), EFAULT);
    EXPECT_EQ(m.exported_count(), 0u);
}

TEST(BasicMemoryMapperScale, ResetDomainDropsEveryChunkAndTheDomainMapsAgain) {
    BasicMemoryMapper m(~uint64_t{0});
    for (uint64_t p = 0; p < kMany; ++p) add(m, page_at(3 * p));
    EXPECT_FALSE(m.reset_domain().valid());  // nothing exported: no fault
    EXPECT_TRUE(m.empty());
    for (uint64_t p = 0; p < kMany; ++p) add(m, page_at(3 * p + 1));
    EXPECT_EQ(m.size(), kMany);
}

}  // namespace
}  // namespace coiommu::viommu
