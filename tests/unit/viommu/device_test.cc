// The virtio-iommu request layer: one test per status path of engine/README.md, "virtio-iommu
// request statuses", malformed requests, PROBE's property bytes, config, and waiting on IOMMU
// faults.
#include "engine/viommu/viommu_device.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <memory>
#include <thread>

#include "tests/testing/expect.h"
#include "tests/testing/log_capture.h"
#include "tests/unit/viommu/viommu_test_util.h"

namespace coiommu::viommu {
namespace {

using namespace testutil;  // NOLINT(google-build-using-namespace): test helpers
using std::chrono::milliseconds;

constexpr uint64_t kPage = 0x1000;
constexpr uint32_t kRW = wire::kMapFlagRead | wire::kMapFlagWrite;

class ViommuDeviceTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_OK(dev_.add_endpoint(1, mapper_a_));
        ASSERT_OK(dev_.add_endpoint(2, mapper_b_));
    }

    std::shared_ptr<BasicMemoryMapper> mapper_a_ = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    std::shared_ptr<BasicMemoryMapper> mapper_b_ = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    ViommuDevice dev_;
};

// ---- ATTACH ---------------------------------------------------------------------------------

TEST_F(ViommuDeviceTest, AttachCreatesTheDomain) {
    EXPECT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(dev_.endpoint_domain(1), 10u);
    EXPECT_EQ(dev_.domain_endpoint_count(10), 1u);
}

TEST_F(ViommuDeviceTest, AttachWithReservedBytesIsInvalAndChangesNothing) {
    auto body = attach_body(10, 1);
    body.reserved[7] = 1;
    EXPECT_EQ(send(dev_, request(wire::kTypeAttach, body)), wire::kStatusInval);
    EXPECT_EQ(dev_.endpoint_domain(1), std::nullopt);
    EXPECT_EQ(dev_.domain_count(), 0u);
}

TEST_F(ViommuDeviceTest, AttachWithVirtio12BypassFlagIsInval) {
    auto body = attach_body(10, 1);
    body.reserved[0] = 1;  // virtio 1.2 ATTACH flags: BYPASS, not offered
    EXPECT_EQ(send(dev_, request(wire::kTypeAttach, body)), wire::kStatusInval);
    EXPECT_EQ(dev_.domain_count(), 0u);
}

TEST_F(ViommuDeviceTest, AttachUnknownEndpointIsNoent) {
    EXPECT_EQ(attach(dev_, 10, 99), wire::kStatusNoEnt);
    EXPECT_EQ(dev_.domain_count(), 0u);
}

TEST_F(ViommuDeviceTest, AttachSharedMapperToAnotherDomainIsUnsupp) {
    ASSERT_OK(dev_.add_endpoint(3, mapper_a_));  // same mapper as endpoint 1 (one VFIO group)
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(attach(dev_, 11, 3), wire::kStatusUnsupp);
    EXPECT_EQ(dev_.endpoint_domain(3), std::nullopt);
    EXPECT_EQ(dev_.domain_count(), 1u);
}

TEST_F(ViommuDeviceTest, AttachSharedMapperToTheSameDomainCountsBoth) {
    ASSERT_OK(dev_.add_endpoint(3, mapper_a_));
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(attach(dev_, 10, 3), wire::kStatusOk);
    EXPECT_EQ(dev_.domain_endpoint_count(10), 2u);
}

TEST_F(ViommuDeviceTest, AttachDifferentMapperToAnExistingDomainIsUnsupp) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(attach(dev_, 10, 2), wire::kStatusUnsupp);
    EXPECT_EQ(dev_.domain_endpoint_count(10), 1u);
    EXPECT_EQ(dev_.endpoint_domain(2), std::nullopt);
}

TEST_F(ViommuDeviceTest, ReattachDetachesFromTheOldDomainFirst) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0, kPage - 1, 0), wire::kStatusOk);
    EXPECT_EQ(attach(dev_, 11, 1), wire::kStatusOk);
    EXPECT_EQ(dev_.endpoint_domain(1), 11u);
    EXPECT_EQ(dev_.domain_endpoint_count(10), std::nullopt);  // the old domain ceased to exist
    EXPECT_TRUE(mapper_a_->empty());                          // and was reset
}

TEST_F(ViommuDeviceTest, ReattachOfAnEndpointThatCannotDetachIsUnsupp) {
    auto vfio_like = std::make_shared<TestMapper>(TestMapper::Options{.id = 7, .detach = false});
    ASSERT_OK(dev_.add_endpoint(5, vfio_like));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    EXPECT_EQ(attach(dev_, 11, 5), wire::kStatusUnsupp);
    EXPECT_EQ(dev_.endpoint_domain(5), 10u);
    EXPECT_EQ(dev_.domain_count(), 1u);
}

// ---- DETACH ---------------------------------------------------------------------------------

TEST_F(ViommuDeviceTest, DetachOfTheLastEndpointRemovesAndResetsTheDomain) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0, kPage - 1, 0), wire::kStatusOk);
    EXPECT_EQ(detach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(dev_.endpoint_domain(1), std::nullopt);
    EXPECT_EQ(dev_.domain_count(), 0u);
    EXPECT_TRUE(mapper_a_->empty());
    EXPECT_EQ(map(dev_, 10, 0, kPage - 1, 0), wire::kStatusNoEnt);  // the domain is gone
}

TEST_F(ViommuDeviceTest, DetachUnknownEndpointIsNoent) { EXPECT_EQ(detach(dev_, 10, 99), wire::kStatusNoEnt); }

TEST_F(ViommuDeviceTest, DetachWithoutDetachSupportIsUnsupp) {
    auto vfio_like = std::make_shared<TestMapper>(TestMapper::Options{.id = 7, .detach = false});
    ASSERT_OK(dev_.add_endpoint(5, vfio_like));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    EXPECT_EQ(detach(dev_, 10, 5), wire::kStatusUnsupp);
    EXPECT_EQ(dev_.endpoint_domain(5), 10u);
    EXPECT_EQ(vfio_like->resets.load(), 0);
}

TEST_F(ViommuDeviceTest, DetachFromADomainWithOtherEndpointsIsUnsupp) {
    ASSERT_OK(dev_.add_endpoint(3, mapper_a_));
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(attach(dev_, 10, 3), wire::kStatusOk);
    EXPECT_EQ(detach(dev_, 10, 3), wire::kStatusUnsupp);
    EXPECT_EQ(dev_.domain_endpoint_count(10), 2u);
}

TEST_F(ViommuDeviceTest, DetachWithReservedBytesIsInvalAndChangesNothing) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    auto body = detach_body(10, 1);
    body.reserved[0] = 1;
    EXPECT_EQ(send(dev_, request(wire::kTypeDetach, body)), wire::kStatusInval);
    EXPECT_EQ(dev_.endpoint_domain(1), 10u);
}

TEST_F(ViommuDeviceTest, DetachOfAnUnattachedEndpointIsOk) { EXPECT_EQ(detach(dev_, 10, 1), wire::kStatusOk); }

// ---- MAP ------------------------------------------------------------------------------------

TEST_F(ViommuDeviceTest, MapAddsAMapping) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0x10000, 0x11fff, 0x5000, kRW), wire::kStatusOk);
    ASSERT_OK(mapper_a_->start_export_session());
    ASSERT_OK_AND_ASSIGN(auto regions, mapper_a_->export_range(Iova{0x10000}, 0x2000));
    EXPECT_EQ(regions, (std::vector{MemRegion{Gpa{0x5000}, 0x2000, Prot::ReadWrite}}));
}

TEST_F(ViommuDeviceTest, MapWithoutWriteFlagIsReadOnly) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0, kPage - 1, 0, wire::kMapFlagRead), wire::kStatusOk);
    ASSERT_OK(mapper_a_->start_export_session());
    EXPECT_EQ(mapper_a_->export_range(Iova{0}, kPage).value().front().prot, Prot::Read);
}

TEST_F(ViommuDeviceTest, MapWithStartNotBelowEndIsInval) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0x2000, 0x2000, 0), wire::kStatusInval);
    EXPECT_EQ(map(dev_, 10, 0x3000, 0x1fff, 0), wire::kStatusInval);
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuDeviceTest, MapUnalignedIsRange) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0x1000, 0x1fff, 0x800), wire::kStatusRange);  // phys_start
    EXPECT_EQ(map(dev_, 10, 0x1800, 0x2fff, 0), wire::kStatusRange);      // virt_start
    EXPECT_EQ(map(dev_, 10, 0x1000, 0x2000, 0), wire::kStatusRange);      // virt_end + 1
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuDeviceTest, MapWithUnknownFlagsIsInval) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0, kPage - 1, 0, wire::kMapFlagRead | 8), wire::kStatusInval);
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuDeviceTest, MapWithMmioFlagIsAccepted) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0, kPage - 1, 0, wire::kMapFlagRead | wire::kMapFlagMmio), wire::kStatusOk);
}

TEST_F(ViommuDeviceTest, MapToUnknownDomainIsNoent) { EXPECT_EQ(map(dev_, 10, 0, kPage - 1, 0), wire::kStatusNoEnt); }

TEST_F(ViommuDeviceTest, MapOfTheWholeAddressSpaceIsDeverr) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0, ~uint64_t{0}, 0), wire::kStatusDevErr);
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuDeviceTest, MapOverlappingAMappingIsInval) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x1000, 0x2fff, 0), wire::kStatusOk);
    EXPECT_EQ(map(dev_, 10, 0x2000, 0x3fff, 0), wire::kStatusInval);
    EXPECT_EQ(mapper_a_->size(), 1u);
}

TEST_F(ViommuDeviceTest, MapperErrorFailsTheRequestWithUsedLengthZero) {
    auto m = std::make_shared<TestMapper>(TestMapper::Options{.id = 7});
    ASSERT_OK(dev_.add_endpoint(5, m));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    m->fail_add = EIO;
    std::vector<std::byte> w(sizeof(wire::ReqTail), std::byte{kUntouched});
    auto used = dev_.handle(request(wire::kTypeMap, map_body(10, 0, kPage - 1, 0, kRW)), w);
    EXPECT_ERR(used, EIO);
    EXPECT_EQ(w[0], std::byte{kUntouched});
    EXPECT_EQ(dev_.counters().failed.load(), 1u);
}

TEST_F(ViommuDeviceTest, MapInsideADmabufGoesToVfioDmaMap) {
    auto m = std::make_shared<TestMapper>(TestMapper::Options{.id = 7});
    ASSERT_OK(dev_.add_endpoint(5, m));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    ASSERT_OK(dev_.register_dmabuf(Gpa{0x100000}, 0x10000, Hva{0x7f0000000000}));
    EXPECT_EQ(map(dev_, 10, 0x20000, 0x21fff, 0x104000, wire::kMapFlagRead), wire::kStatusOk);
    ASSERT_EQ(m->dma_maps.size(), 1u);
    EXPECT_EQ(m->dma_maps[0].iova, Iova{0x20000});
    EXPECT_EQ(m->dma_maps[0].hva, Hva{0x7f0000004000});
    EXPECT_EQ(m->dma_maps[0].size, 0x2000u);
    EXPECT_EQ(m->dma_maps[0].prot, Prot::Read);
    EXPECT_EQ(m->size(), 0u);  // not through add_map
}

TEST_F(ViommuDeviceTest, MapCrossingTheEndOfADmabufIsGuestMemory) {
    auto m = std::make_shared<TestMapper>(TestMapper::Options{.id = 7});
    ASSERT_OK(dev_.add_endpoint(5, m));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    ASSERT_OK(dev_.register_dmabuf(Gpa{0x100000}, 0x10000, Hva{0x7f0000000000}));
    EXPECT_EQ(map(dev_, 10, 0x20000, 0x21fff, 0x10f000), wire::kStatusOk);
    EXPECT_TRUE(m->dma_maps.empty());
    EXPECT_EQ(m->size(), 1u);
}

TEST_F(ViommuDeviceTest, OverlappingDmabufsAreRejected) {
    ASSERT_OK(dev_.register_dmabuf(Gpa{0x100000}, 0x10000, Hva{0x7f0000000000}));
    EXPECT_ERR(dev_.register_dmabuf(Gpa{0x108000}, 0x10000, Hva{0x7f0000100000}), EEXIST);
    EXPECT_ERR(dev_.register_dmabuf(Gpa{0xf8000}, 0x10000, Hva{0x7f0000100000}), EEXIST);
    EXPECT_OK(dev_.register_dmabuf(Gpa{0x110000}, 0x1000, Hva{0x7f0000100000}));
    EXPECT_OK(dev_.unregister_dmabuf(Gpa{0x100000}));
    EXPECT_ERR(dev_.unregister_dmabuf(Gpa{0x100000}), ENOENT);
}

// ---- UNMAP ----------------------------------------------------------------------------------

TEST_F(ViommuDeviceTest, UnmapRemovesTheMapping) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x1000, 0x1fff, 0), wire::kStatusOk);
    EXPECT_EQ(unmap(dev_, 10, 0x1000, 0x1fff), wire::kStatusOk);
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuDeviceTest, UnmapOfNothingIsOk) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_EQ(unmap(dev_, 10, 0x1000, 0x1fff), wire::kStatusOk);
}

TEST_F(ViommuDeviceTest, UnmapOfUnknownDomainIsNoent) { EXPECT_EQ(unmap(dev_, 10, 0, kPage - 1), wire::kStatusNoEnt); }

TEST_F(ViommuDeviceTest, UnmapSplittingAMappingIsRangeAndRemovesNothing) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x1000, 0x1fff, 0), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x2000, 0x3fff, 0), wire::kStatusOk);
    EXPECT_EQ(unmap(dev_, 10, 0x1000, 0x2fff), wire::kStatusRange);
    EXPECT_EQ(mapper_a_->size(), 2u);
}

TEST_F(ViommuDeviceTest, UnmapWithEndBelowStartIsInval) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x1000, 0x1fff, 0), wire::kStatusOk);
    EXPECT_EQ(unmap(dev_, 10, 0x2000, 0x0fff), wire::kStatusInval);
    EXPECT_EQ(mapper_a_->size(), 1u);
}

TEST_F(ViommuDeviceTest, UnmapOfTheWholeAddressSpaceIsDeverr) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    ASSERT_EQ(map(dev_, 10, 0x1000, 0x1fff, 0), wire::kStatusOk);
    EXPECT_EQ(unmap(dev_, 10, 0, ~uint64_t{0}), wire::kStatusDevErr);
    EXPECT_EQ(mapper_a_->size(), 1u);
}

TEST_F(ViommuDeviceTest, UnmapMapperErrorFailsTheRequest) {
    auto m = std::make_shared<TestMapper>(TestMapper::Options{.id = 7});
    ASSERT_OK(dev_.add_endpoint(5, m));
    ASSERT_EQ(attach(dev_, 10, 5), wire::kStatusOk);
    m->fail_remove = EIO;
    EXPECT_EQ(unmap(dev_, 10, 0, kPage - 1), kFailed);
}

// ---- IOMMU faults: completion waits for the export client ------------------------------------

class ViommuFaultTest : public ViommuDeviceTest {
protected:
    void SetUp() override {
        ViommuDeviceTest::SetUp();
        ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
        ASSERT_EQ(map(dev_, 10, 0x1000, 0x2fff, 0x8000), wire::kStatusOk);
        auto fault = mapper_a_->start_export_session();
        ASSERT_OK(fault);
        fault_ = std::move(*fault);
        ASSERT_OK(mapper_a_->export_range(Iova{0x1000}, 0x2000));
    }
    EventFd fault_;
};

TEST_F(ViommuFaultTest, UnmapOfExportedMemoryCompletesAfterTheRelease) {
    const auto start = std::chrono::steady_clock::now();
    std::thread client([&] {
        // The client waits for its fault event, then releases after a delay.
        ASSERT_TRUE(fault_.wait_for(milliseconds(5000)).value());
        std::this_thread::sleep_for(milliseconds(200));
        ASSERT_OK(mapper_a_->release(Iova{0x1000}, 0x2000));
    });
    EXPECT_EQ(unmap(dev_, 10, 0x1000, 0x2fff), wire::kStatusOk);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    client.join();
    EXPECT_GE(elapsed, milliseconds(200));
    EXPECT_EQ(dev_.counters().fault_waits.load(), 1u);
    EXPECT_TRUE(mapper_a_->empty());
}

TEST_F(ViommuFaultTest, DetachWithExportedMemoryCompletesAfterTheRelease) {
    std::thread client([&] {
        ASSERT_TRUE(fault_.wait_for(milliseconds(5000)).value());
        std::this_thread::sleep_for(milliseconds(100));
        ASSERT_OK(mapper_a_->release(Iova{0x1000}, 0x2000));
    });
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(detach(dev_, 10, 1), wire::kStatusOk);
    EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(100));
    client.join();
    EXPECT_EQ(dev_.domain_count(), 0u);
}

TEST_F(ViommuFaultTest, ClientThatNeverReleasesTimesOutWithDeverr) {
    testing::LogCapture logs;
    ViommuDevice dev(ViommuDevice::Options{.fault_wait_timeout = milliseconds(100)});
    ASSERT_OK(dev.add_endpoint(4, mapper_a_));
    // mapper_a_ is already attached in dev_, not in dev; a fresh domain in dev shares its state.
    ASSERT_EQ(attach(dev, 20, 4), wire::kStatusOk);
    EXPECT_EQ(unmap(dev, 20, 0x1000, 0x2fff), wire::kStatusDevErr);
    EXPECT_EQ(dev.counters().fault_wait_timeouts.load(), 1u);
    EXPECT_TRUE(logs.contains("UNMAP domain 20"));
    EXPECT_TRUE(logs.contains("[endpoints 4]"));
    EXPECT_TRUE(logs.contains("did not release"));
}

TEST_F(ViommuFaultTest, SecondFaultDoesNotWait) {
    testing::LogCapture logs;  // the first fault's timeout is logged
    ViommuDevice dev(ViommuDevice::Options{.fault_wait_timeout = milliseconds(100)});
    ASSERT_OK(dev.add_endpoint(4, mapper_a_));
    ASSERT_EQ(attach(dev, 20, 4), wire::kStatusOk);
    ASSERT_EQ(map(dev, 20, 0x10000, 0x10fff, 0), wire::kStatusOk);
    ASSERT_OK(mapper_a_->export_range(Iova{0x10000}, 0x1000));
    EXPECT_EQ(unmap(dev, 20, 0x1000, 0x2fff), wire::kStatusDevErr);  // first fault: times out
    EXPECT_EQ(unmap(dev, 20, 0x10000, 0x10fff), wire::kStatusOk);    // second: no event
    // Counted, not timed: a second wait would show as a second fault wait (and, unanswered, as a
    // second timeout), whatever the machine's speed.
    EXPECT_EQ(dev.counters().fault_waits.load(), 1u);
    EXPECT_EQ(dev.counters().fault_wait_timeouts.load(), 1u);
}

// ---- PROBE ----------------------------------------------------------------------------------

std::vector<std::byte> expected_resv_mem_msi() {
    // type 1 (RESV_MEM), length 20, subtype 1 (MSI), reserved, start 0xfee00000, end 0xfeefffff.
    const uint8_t bytes[] = {0x01, 0x00, 0x14, 0x00, 0x01, 0x00, 0x00, 0x00,  //
                             0x00, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00,  //
                             0xff, 0xff, 0xef, 0xfe, 0x00, 0x00, 0x00, 0x00};
    std::vector<std::byte> out;
    for (uint8_t b : bytes) out.push_back(std::byte{b});
    return out;
}

TEST_F(ViommuDeviceTest, ProbeReportsTheMsiWindowAsReserved) {
    std::vector<std::byte> w(wire::kProbeSize + sizeof(wire::ReqTail), std::byte{kUntouched});
    ASSERT_OK_AND_ASSIGN(size_t used, dev_.handle(request(wire::kTypeProbe, probe_body(1)), w));
    EXPECT_EQ(used, w.size());
    EXPECT_EQ(std::vector<std::byte>(w.begin(), w.begin() + wire::kProbeSize), expected_resv_mem_msi());
    EXPECT_EQ(w[wire::kProbeSize], std::byte{wire::kStatusOk});
    EXPECT_EQ(w[wire::kProbeSize + 1], std::byte{0});  // tail reserved bytes are zero
}

TEST_F(ViommuDeviceTest, ProbeZeroFillsALargerPropertiesArea) {
    std::vector<std::byte> w(64 + sizeof(wire::ReqTail), std::byte{kUntouched});
    ASSERT_OK_AND_ASSIGN(size_t used, dev_.handle(request(wire::kTypeProbe, probe_body(1)), w));
    EXPECT_EQ(used, w.size());
    for (size_t i = wire::kProbeSize; i < 64; ++i) EXPECT_EQ(w[i], std::byte{0}) << i;
    EXPECT_EQ(w[64], std::byte{wire::kStatusOk});
}

TEST_F(ViommuDeviceTest, ProbeOfUnknownEndpointIsNoentWithNoProperty) {
    std::vector<std::byte> w(wire::kProbeSize + sizeof(wire::ReqTail), std::byte{kUntouched});
    ASSERT_OK_AND_ASSIGN(size_t used, dev_.handle(request(wire::kTypeProbe, probe_body(99)), w));
    EXPECT_EQ(used, w.size());
    for (size_t i = 0; i < wire::kProbeSize; ++i) EXPECT_EQ(w[i], std::byte{0}) << i;
    EXPECT_EQ(w[wire::kProbeSize], std::byte{wire::kStatusNoEnt});
}

TEST_F(ViommuDeviceTest, ProbeWithAreaSmallerThanProbeSizeIsInval) {
    std::vector<std::byte> w(8 + sizeof(wire::ReqTail), std::byte{kUntouched});
    ASSERT_OK_AND_ASSIGN(size_t used, dev_.handle(request(wire::kTypeProbe, probe_body(1)), w));
    EXPECT_EQ(used, w.size());
    for (size_t i = 0; i < 8; ++i) EXPECT_EQ(w[i], std::byte{0}) << i;  // no property
    EXPECT_EQ(w[8], std::byte{wire::kStatusInval});
}

// ---- malformed requests ---------------------------------------------------------------------

TEST_F(ViommuDeviceTest, WritableTooSmallForTheTailFailsAndWritesNothing) {
    std::vector<std::byte> w(3, std::byte{kUntouched});
    EXPECT_ERR(dev_.handle(request(wire::kTypeAttach, attach_body(10, 1)), w), EMSGSIZE);
    for (std::byte b : w) EXPECT_EQ(b, std::byte{kUntouched});
    EXPECT_EQ(dev_.endpoint_domain(1), std::nullopt);
}

TEST_F(ViommuDeviceTest, RequestShorterThanTheHeadFails) {
    std::vector<std::byte> req(3, std::byte{wire::kTypeAttach});
    EXPECT_EQ(send(dev_, req), kFailed);
}

TEST_F(ViommuDeviceTest, ShortBodyFailsAndChangesNothing) {
    ASSERT_EQ(attach(dev_, 10, 1), wire::kStatusOk);
    auto req = request(wire::kTypeMap, map_body(10, 0, kPage - 1, 0, kRW));
    req.pop_back();
    EXPECT_EQ(send(dev_, req), kFailed);
    EXPECT_TRUE(mapper_a_->empty());
    auto att = request(wire::kTypeAttach, attach_body(11, 2));
    att.resize(att.size() - 4);
    EXPECT_EQ(send(dev_, att), kFailed);
    EXPECT_EQ(dev_.endpoint_domain(2), std::nullopt);
}

TEST_F(ViommuDeviceTest, EveryTypeRejectsItsShortBody) {
    for (uint8_t type : {wire::kTypeAttach, wire::kTypeDetach, wire::kTypeMap, wire::kTypeUnmap, wire::kTypeProbe}) {
        std::vector<std::byte> req(sizeof(wire::ReqHead) + 1, std::byte{0});
        req[0] = std::byte{type};
        EXPECT_EQ(send(dev_, req, 64), kFailed) << "type " << int{type};
    }
}

TEST_F(ViommuDeviceTest, UnknownTypeWritesNothingAndUsesLengthZero) {
    std::vector<std::byte> w(sizeof(wire::ReqTail), std::byte{kUntouched});
    auto req = request(wire::kTypeAttach, attach_body(10, 1));
    req[0] = std::byte{9};
    EXPECT_ERR(dev_.handle(req, w), EOPNOTSUPP);
    EXPECT_EQ(w[0], std::byte{kUntouched});
    EXPECT_EQ(dev_.domain_count(), 0u);
}

TEST_F(ViommuDeviceTest, TrailingBytesAfterTheBodyAreIgnored) {
    auto req = request(wire::kTypeAttach, attach_body(10, 1));
    req.resize(req.size() + 16, std::byte{0xee});
    EXPECT_EQ(send(dev_, req), wire::kStatusOk);
}

TEST_F(ViommuDeviceTest, TailIsWrittenAtTheStartOfTheWritablePart) {
    std::vector<std::byte> w(16, std::byte{kUntouched});
    ASSERT_OK_AND_ASSIGN(size_t used, dev_.handle(request(wire::kTypeAttach, attach_body(10, 1)), w));
    EXPECT_EQ(used, sizeof(wire::ReqTail));
    EXPECT_EQ(w[0], std::byte{wire::kStatusOk});
    EXPECT_EQ(w[1], std::byte{0});
    EXPECT_EQ(w[4], std::byte{kUntouched});
}

// ---- config ---------------------------------------------------------------------------------

TEST(ViommuDeviceConfig, PageSizeMaskIsTheHostMaskAndEveryMapper) {
    ViommuDevice dev;
    ASSERT_OK(dev.add_endpoint(1, std::make_shared<TestMapper>(TestMapper::Options{.id = 1, .mask = 0x40201000})));
    ASSERT_OK(dev.add_endpoint(2, std::make_shared<TestMapper>(TestMapper::Options{.id = 2, .mask = 0x201000})));
    EXPECT_EQ(dev.page_size_mask().value(), 0x201000u);
}

TEST(ViommuDeviceConfig, EndpointLeavingNoCommonPageSizeIsRejected) {
    ViommuDevice dev;
    ASSERT_OK(dev.add_endpoint(1, std::make_shared<TestMapper>(TestMapper::Options{.id = 1, .mask = 0x1000})));
    EXPECT_ERR(dev.add_endpoint(2, std::make_shared<TestMapper>(TestMapper::Options{.id = 2, .mask = 0x200000})),
               EINVAL);
    EXPECT_ERR(dev.add_endpoint(3, std::make_shared<TestMapper>(TestMapper::Options{.id = 3, .mask = 0x800})),
               EINVAL);  // below the host page size
    EXPECT_EQ(dev.page_size_mask().value(), 0x1000u);
}

TEST(ViommuDeviceConfig, DuplicateOrNullEndpointIsRejected) {
    ViommuDevice dev;
    auto m = std::make_shared<BasicMemoryMapper>(~uint64_t{0});
    ASSERT_OK(dev.add_endpoint(1, m));
    EXPECT_ERR(dev.add_endpoint(1, m), EEXIST);
    EXPECT_ERR(dev.add_endpoint(2, nullptr), EINVAL);
}

TEST(ViommuDeviceConfig, MapGranuleFollowsTheSmallestCommonPageSize) {
    ViommuDevice dev;
    ASSERT_OK(dev.add_endpoint(1, std::make_shared<TestMapper>(TestMapper::Options{.id = 1, .mask = 0x200000})));
    ASSERT_EQ(attach(dev, 10, 1), wire::kStatusOk);
    EXPECT_EQ(map(dev, 10, 0x1000, 0x1fff, 0), wire::kStatusRange);   // 4 KiB is too small
    EXPECT_EQ(map(dev, 10, 0x200000, 0x3fffff, 0), wire::kStatusOk);  // 2 MiB is fine
}

TEST(ViommuDeviceConfig, ConfigSpace) {
    ViommuDevice dev(ViommuDevice::Options{.max_iova = (uint64_t{1} << 39) - 1});
    ASSERT_OK(dev.add_endpoint(1, std::make_shared<TestMapper>(TestMapper::Options{.id = 1, .mask = 0x40201000})));
    ASSERT_OK_AND_ASSIGN(wire::Config c, dev.config());
    EXPECT_EQ(c.page_size_mask.get(), 0x40201000u);
    EXPECT_EQ(c.input_range.start.get(), 0u);
    EXPECT_EQ(c.input_range.end.get(), (uint64_t{1} << 39) - 1);
    EXPECT_EQ(c.domain_range.start.get(), 0u);
    EXPECT_EQ(c.domain_range.end.get(), 0u);
    EXPECT_EQ(c.probe_size.get(), 24u);
    EXPECT_EQ(c.bypass, 0);
}

TEST(ViommuDeviceConfig, FeaturesAreMapUnmapInputRangeMmioAndProbe) {
    const uint64_t f = ViommuDevice::features();
    EXPECT_NE(f & (1u << wire::kFeatureMapUnmap), 0u);
    EXPECT_NE(f & (1u << wire::kFeatureInputRange), 0u);
    EXPECT_NE(f & (1u << wire::kFeatureMmio), 0u);
    EXPECT_NE(f & (1u << wire::kFeatureProbe), 0u);
    EXPECT_EQ(f & (1u << wire::kFeatureBypass), 0u);
    EXPECT_EQ(f & (1u << wire::kFeatureDomainRange), 0u);
}

TEST(ViommuWire, LittleEndianEncoding) {
    wire::ReqMap m = map_body(0x01020304, 0x1112131415161718, 0, 0, 0);
    std::byte raw[sizeof m];
    std::memcpy(raw, &m, sizeof m);
    EXPECT_EQ(raw[0], std::byte{0x04});
    EXPECT_EQ(raw[3], std::byte{0x01});
    EXPECT_EQ(raw[4], std::byte{0x18});
    EXPECT_EQ(raw[11], std::byte{0x11});
}

}  // namespace
}  // namespace coiommu::viommu
