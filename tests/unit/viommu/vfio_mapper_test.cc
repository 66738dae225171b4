// VfioMapper against the fake DMA backend (type1 semantics in memory).
#include "engine/viommu/vfio_mapper.h"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>

#include "engine/dma/fake_backend.h"
#include "tests/testing/expect.h"

namespace coiommu::viommu {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kPage = 0x1000;
// RAM below and above a hole, as a VMM lays it out.
const std::array<RegionSpec, 2> kRam{{{Gpa{0}, 2 * kMiB}, {Gpa{4 * kMiB}, 1 * kMiB}}};
constexpr uint32_t kGroupId = 7;

class VfioMapperTest : public ::testing::Test {
protected:
    GuestMemory mem_ = std::move(GuestMemory::create(kRam).value());
    dma::FakeBackend backend_{dma::FakeConfig{}};
    VfioMapper mapper_{mem_, backend_, kGroupId};

    Hva hva_of(uint64_t gpa) const { return mem_.translate(Gpa{gpa}, 1).value(); }
};

TEST_F(VfioMapperTest, AddMapMapsTheGuestRamBehindTheGpa) {
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.add_map(MappingInfo{Iova{0x10000}, Gpa{0x3000}, 2 * kPage, Prot::ReadWrite}));
    EXPECT_EQ(r, AddMapResult::Ok);
    auto m = backend_.find(Iova{0x10000});
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->iova, Iova{0x10000});
    EXPECT_EQ(m->hva, hva_of(0x3000));
    EXPECT_EQ(m->size, 2 * kPage);
    EXPECT_EQ(m->prot, Prot::ReadWrite);
}

TEST_F(VfioMapperTest, ReadOnlyMappingIsNotWritable) {
    ASSERT_OK(mapper_.add_map(MappingInfo{Iova{0x10000}, Gpa{0x3000}, kPage, Prot::Read}));
    EXPECT_EQ(backend_.find(Iova{0x10000})->prot, Prot::Read);
}

TEST_F(VfioMapperTest, GpaOutsideRamIsEfault) {
    EXPECT_ERR(mapper_.add_map(MappingInfo{Iova{0}, Gpa{2 * kMiB}, kPage, Prot::Read}), EFAULT);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(VfioMapperTest, GpaRangeStraddlingTheHoleIsEfault) {
    EXPECT_ERR(mapper_.add_map(MappingInfo{Iova{0}, Gpa{2 * kMiB - kPage}, 2 * kPage, Prot::Read}), EFAULT);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(VfioMapperTest, OverlapIsOverlapFailure) {
    ASSERT_OK(mapper_.add_map(MappingInfo{Iova{0x10000}, Gpa{0x3000}, 2 * kPage, Prot::ReadWrite}));
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.add_map(MappingInfo{Iova{0x11000}, Gpa{0x8000}, 2 * kPage, Prot::Read}));
    EXPECT_EQ(r, AddMapResult::OverlapFailure);
    EXPECT_EQ(backend_.live_entries(), 1u);
}

TEST_F(VfioMapperTest, InjectedEexistIsOverlapFailure) {
    backend_.fail_nth(dma::Op::Map, 1, EEXIST);
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.add_map(MappingInfo{Iova{0}, Gpa{0}, kPage, Prot::Read}));
    EXPECT_EQ(r, AddMapResult::OverlapFailure);
}

TEST_F(VfioMapperTest, EntryLimitIsEnospcError) {
    dma::FakeConfig cfg;
    cfg.entry_limit = 1;
    dma::FakeBackend small{cfg};
    VfioMapper mapper{mem_, small, kGroupId};
    ASSERT_OK(mapper.add_map(MappingInfo{Iova{0}, Gpa{0}, kPage, Prot::Read}));
    EXPECT_ERR(mapper.add_map(MappingInfo{Iova{kPage}, Gpa{kPage}, kPage, Prot::Read}), ENOSPC);
}

TEST_F(VfioMapperTest, OtherBackendErrorsAreErrors) {
    backend_.fail_nth(dma::Op::Map, 1, ENOMEM);
    EXPECT_ERR(mapper_.add_map(MappingInfo{Iova{0}, Gpa{0}, kPage, Prot::Read}), ENOMEM);
}

TEST_F(VfioMapperTest, VfioDmaMapMapsTheGivenHostAddress) {
    const Hva hva = hva_of(4 * kMiB);  // any memory of this process; here guest RAM for simplicity
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.vfio_dma_map(Iova{0x20000}, hva, kPage, Prot::Read));
    EXPECT_EQ(r, AddMapResult::Ok);
    EXPECT_EQ(backend_.find(Iova{0x20000})->hva, hva);
}

TEST_F(VfioMapperTest, RemoveMapIsOneUnmapOfTheWholeRange) {
    ASSERT_OK(mapper_.add_map(MappingInfo{Iova{0x10000}, Gpa{0}, kPage, Prot::Read}));
    ASSERT_OK(mapper_.add_map(MappingInfo{Iova{0x12000}, Gpa{0}, kPage, Prot::Read}));
    const uint64_t calls_before = backend_.counters().unmap_calls.load();
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.remove_map(Iova{0x10000}, 4 * kPage));
    EXPECT_TRUE(r.is_success());
    EXPECT_FALSE(r.has_fault_resolved());
    EXPECT_EQ(backend_.counters().unmap_calls.load(), calls_before + 1);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(VfioMapperTest, RemoveMapOfNothingSucceeds) {
    ASSERT_OK_AND_ASSIGN(auto r, mapper_.remove_map(Iova{0x10000}, kPage));
    EXPECT_TRUE(r.is_success());
}

TEST_F(VfioMapperTest, RemoveMapOverflowIsCheckedBeforeTheBackend) {
    EXPECT_ERR(mapper_.remove_map(Iova{~uint64_t{0} - kPage + 1}, kPage), EOVERFLOW);
    EXPECT_EQ(backend_.counters().unmap_calls.load(), 0u);
}

TEST_F(VfioMapperTest, BisectingUnmapIsABackendError) {
    ASSERT_OK(mapper_.add_map(MappingInfo{Iova{0x10000}, Gpa{0}, 2 * kPage, Prot::Read}));
    EXPECT_ERR(mapper_.remove_map(Iova{0x10000}, kPage), EINVAL);
    EXPECT_TRUE(backend_.is_mapped(Iova{0x10000}, 2 * kPage));
}

TEST_F(VfioMapperTest, GetMaskIsTheContainersPageSizes) {
    EXPECT_EQ(mapper_.get_mask().value(), 0x40201000u);
    EXPECT_NE(mapper_.get_mask().value() & kPage, 0u);
}

TEST_F(VfioMapperTest, NoDetachAndTheGivenId) {
    EXPECT_FALSE(mapper_.supports_detach());
    EXPECT_EQ(mapper_.id(), kGroupId);
    EXPECT_FALSE(mapper_.reset_domain().valid());
}

TEST_F(VfioMapperTest, ExportIsNotSupported) {
    EXPECT_ERR(mapper_.start_export_session(), ENOTSUP);
    EXPECT_ERR(mapper_.export_range(Iova{0}, kPage), ENOTSUP);
    EXPECT_ERR(mapper_.release(Iova{0}, kPage), ENOTSUP);
}

}  // namespace
}  // namespace coiommu::viommu
