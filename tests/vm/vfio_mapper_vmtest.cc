// VfioMapper (virtio-iommu strict mode) against the real kernel: runs inside the QEMU guest of
// scripts/vfio-vm-test.sh (emulated VT-d, QEMU `edu` bound to vfio-pci; VFIO_GROUP in the
// environment). Outside that guest every case skips.
//
// A group belongs to one container at a time, so each case opens its own VfioBackend in the
// fixture and closes it when the case ends.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <memory>
#include <string>

#include "engine/dma/vfio_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/viommu/viommu_device.h"
#include "engine/viommu/protocol.h"
#include "engine/viommu/vfio_mapper.h"
#include "tests/testing/expect.h"

namespace coiommu::viommu {
namespace {

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kMiB = uint64_t{1} << 20;
// IOVAs at 4 GiB: above the 32-bit MSI window and inside VT-d's 39-bit input range.
constexpr uint64_t kIovaBase = uint64_t{1} << 32;
constexpr uint32_t kMapperId = 1;

class VfioMapperVm : public ::testing::Test {
protected:
    void SetUp() override {
        const char* group = std::getenv("VFIO_GROUP");
        if (group == nullptr) GTEST_SKIP() << "VFIO_GROUP not set: run inside the guest of scripts/vfio-vm-test.sh";
        ASSERT_OK_AND_ASSIGN(backend_, dma::VfioBackend::open_group(group));
        const std::array<RegionSpec, 1> ram{{{Gpa{0}, 4 * kMiB}}};
        ASSERT_OK_AND_ASSIGN(mem_, GuestMemory::create(ram));
        mapper_ = std::make_shared<VfioMapper>(mem_, *backend_, kMapperId);
    }
    void TearDown() override {
        mapper_.reset();  // before the backend and memory it borrows
    }

    GuestMemory mem_;  // declared first: destroyed after the container that maps it
    std::unique_ptr<dma::VfioBackend> backend_;
    std::shared_ptr<VfioMapper> mapper_;
};

TEST_F(VfioMapperVm, AddMapOfGuestRamIsMapped) {
    ASSERT_OK_AND_ASSIGN(auto r,
                         mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{0x10000}, 4 * kPage, Prot::ReadWrite}));
    EXPECT_EQ(r, AddMapResult::Ok);
    EXPECT_EQ(backend_->live_entries(), 1u);
    // Mapping the same IOVA again is refused by the kernel with EEXIST, so it is mapped.
    ASSERT_OK_AND_ASSIGN(auto again, mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{0x10000}, kPage, Prot::Read}));
    EXPECT_EQ(again, AddMapResult::OverlapFailure);
}

TEST_F(VfioMapperVm, OverlappingAddMapIsOverlapFailure) {
    ASSERT_OK(mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{0}, 2 * kPage, Prot::ReadWrite}));
    ASSERT_OK_AND_ASSIGN(auto r,
                         mapper_->add_map(MappingInfo{Iova{kIovaBase + kPage}, Gpa{0x20000}, 2 * kPage, Prot::Read}));
    EXPECT_EQ(r, AddMapResult::OverlapFailure);  // a real EEXIST from VFIO_IOMMU_MAP_DMA
    EXPECT_EQ(backend_->live_entries(), 1u);
}

TEST_F(VfioMapperVm, RemoveMapUnmaps) {
    ASSERT_OK(mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{0}, kPage, Prot::ReadWrite}));
    ASSERT_OK(mapper_->add_map(MappingInfo{Iova{kIovaBase + 2 * kPage}, Gpa{kPage}, kPage, Prot::Read}));
    ASSERT_OK_AND_ASSIGN(auto r, mapper_->remove_map(Iova{kIovaBase}, 4 * kPage));
    EXPECT_TRUE(r.is_success());
    EXPECT_EQ(backend_->live_entries(), 0u);
    // Unmapped for real: the same range maps again without EEXIST.
    ASSERT_OK_AND_ASSIGN(auto again, mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{0}, kPage, Prot::Read}));
    EXPECT_EQ(again, AddMapResult::Ok);
}

TEST_F(VfioMapperVm, GpaOutsideGuestRamIsEfault) {
    EXPECT_ERR(mapper_->add_map(MappingInfo{Iova{kIovaBase}, Gpa{8 * kMiB}, kPage, Prot::Read}), EFAULT);
}

TEST_F(VfioMapperVm, MaskContainsFourKiB) {
    ASSERT_OK_AND_ASSIGN(uint64_t mask, mapper_->get_mask());
    EXPECT_NE(mask & kPage, 0u);
    EXPECT_FALSE(mapper_->supports_detach());
}

// One virtio-iommu request through ViommuDevice; returns the tail status (0xff: handle() failed).
template <class Body>
uint8_t send(ViommuDevice& dev, uint8_t type, const Body& body) {
    std::vector<std::byte> req(sizeof(wire::ReqHead) + sizeof(Body));
    wire::ReqHead head;
    head.type = type;
    std::memcpy(req.data(), &head, sizeof head);
    std::memcpy(req.data() + sizeof head, &body, sizeof body);
    std::byte tail[sizeof(wire::ReqTail)] = {};
    auto used = dev.handle(req, tail);
    return used ? static_cast<uint8_t>(tail[0]) : uint8_t{0xff};
}

TEST_F(VfioMapperVm, GuestRequestsMapAndUnmapThroughRealVfio) {
    ViommuDevice dev;
    ASSERT_OK(dev.add_endpoint(8, mapper_));
    wire::ReqAttach attach;
    attach.domain = 1u;
    attach.endpoint = 8u;
    ASSERT_EQ(send(dev, wire::kTypeAttach, attach), wire::kStatusOk);

    wire::ReqMap map;
    map.domain = 1u;
    map.virt_start = kIovaBase;
    map.virt_end = kIovaBase + 2 * kPage - 1;
    map.phys_start = uint64_t{0x20000};
    map.flags = wire::kMapFlagRead | wire::kMapFlagWrite;
    EXPECT_EQ(send(dev, wire::kTypeMap, map), wire::kStatusOk);
    EXPECT_EQ(backend_->live_entries(), 1u);
    EXPECT_EQ(send(dev, wire::kTypeMap, map), wire::kStatusInval);  // EEXIST from the kernel

    wire::ReqUnmap unmap;
    unmap.domain = 1u;
    unmap.virt_start = kIovaBase;
    unmap.virt_end = kIovaBase + 2 * kPage - 1;
    EXPECT_EQ(send(dev, wire::kTypeUnmap, unmap), wire::kStatusOk);
    EXPECT_EQ(backend_->live_entries(), 0u);

    wire::ReqDetach detach;
    detach.domain = 1u;
    detach.endpoint = 8u;
    EXPECT_EQ(send(dev, wire::kTypeDetach, detach), wire::kStatusUnsupp);  // VFIO cannot detach
}

}  // namespace
}  // namespace coiommu::viommu
