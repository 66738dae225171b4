// The VfioBackend parts that run without VFIO: GET_INFO reply parsing (crafted replies, laid out
// as the kernel lays them out), the module parameter, and errors from fds that are not VFIO.
#include "engine/dma/vfio_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

constexpr uint64_t kVtdPgsizes = 0x40201000;
constexpr uint64_t kTop39 = (uint64_t{1} << 39) - 1;

// A VFIO_IOMMU_GET_INFO reply: the 24-byte header, then capabilities appended 8-byte aligned
// and chained from cap_offset, as vfio_info_cap_add() builds them.
class Reply {
public:
    explicit Reply(uint32_t flags = kIommuInfoFlagPgsizes | kIommuInfoFlagCaps, uint64_t pgsizes = kVtdPgsizes)
        : bytes_(kIommuInfoSize) {
        put<uint32_t>(4, flags);
        put<uint64_t>(8, pgsizes);
        sync_argsz();
    }

    template <class T>
    void put(size_t off, T v) {
        std::memcpy(bytes_.data() + off, &v, sizeof(T));
    }

    // Appends a capability with `payload` zeroed bytes after its header; returns its offset.
    size_t add_cap(uint16_t id, size_t payload) {
        const size_t off = (bytes_.size() + 7) & ~size_t{7};
        bytes_.resize(off + kInfoCapHeaderSize + payload);
        put<uint16_t>(off, id);
        put<uint16_t>(off + 2, 1);  // version
        put<uint32_t>(last_ == 0 ? 16 : last_ + 4, static_cast<uint32_t>(off));
        last_ = off;
        sync_argsz();
        return off;
    }
    size_t add_iova_ranges(const std::vector<IovaRange>& ranges) {
        const size_t off = add_cap(kInfoCapIovaRange, 8 + 16 * ranges.size());
        put<uint32_t>(off + 8, static_cast<uint32_t>(ranges.size()));
        for (size_t i = 0; i < ranges.size(); ++i) {
            put<uint64_t>(off + 16 + 16 * i, ranges[i].start);
            put<uint64_t>(off + 24 + 16 * i, ranges[i].end);
        }
        return off;
    }
    size_t add_dma_avail(uint32_t avail) {
        const size_t off = add_cap(kInfoCapDmaAvail, 4);
        put<uint32_t>(off + 8, avail);
        return off;
    }

    [[nodiscard]] std::span<const std::byte> span() const { return bytes_; }
    [[nodiscard]] uint32_t cap_offset() const {
        uint32_t v = 0;
        std::memcpy(&v, bytes_.data() + 16, sizeof(v));
        return v;
    }
    void sync_argsz() { put<uint32_t>(0, static_cast<uint32_t>(bytes_.size())); }

private:
    std::vector<std::byte> bytes_;
    size_t last_ = 0;
};

// What a 6.1 guest with VT-d reports: migration cap (id 2), IOVA ranges around the MSI window,
// DMA_AVAIL.
Reply vtd_reply(uint32_t avail) {
    Reply r;
    r.add_cap(2, 24);
    r.add_iova_ranges({{0, 0xfedfffff}, {0xfef00000, kTop39}});
    r.add_dma_avail(avail);
    return r;
}

// ---- parse_iommu_info / parse_info_caps ---------------------------------------------------------

TEST(VfioInfoParse, VtdReplyYieldsRangesAndDmaAvail) {
    const Reply r = vtd_reply(65535);
    ASSERT_OK_AND_ASSIGN(auto info, parse_iommu_info(r.span()));
    EXPECT_EQ(info.iova_pgsizes, kVtdPgsizes);
    ASSERT_EQ(info.caps.iova_ranges.size(), 2u);
    EXPECT_EQ(info.caps.iova_ranges[0].end, 0xfedfffffu);
    EXPECT_EQ(info.caps.iova_ranges[1].start, 0xfef00000u);
    EXPECT_EQ(info.caps.iova_ranges[1].end, kTop39);
    EXPECT_EQ(info.caps.dma_avail, 65535u);
}

TEST(VfioInfoParse, HeaderWithoutCapsHasNoCaps) {
    const Reply r(kIommuInfoFlagPgsizes);
    ASSERT_OK_AND_ASSIGN(auto info, parse_iommu_info(r.span()));
    EXPECT_TRUE(info.caps.iova_ranges.empty());
    EXPECT_FALSE(info.caps.dma_avail.has_value());
}

TEST(VfioInfoParse, CapsAreIgnoredWhenTheCapsFlagIsClear) {
    Reply r = vtd_reply(7);
    r.put<uint32_t>(4, kIommuInfoFlagPgsizes);
    ASSERT_OK_AND_ASSIGN(auto info, parse_iommu_info(r.span()));
    EXPECT_FALSE(info.caps.dma_avail.has_value());
}

TEST(VfioInfoParse, TruncatedReplyReportsTheSizeItNeeds) {
    // The kernel's answer to a too-small argsz: flags has CAPS, argsz is the full size, no caps.
    Reply r;
    r.put<uint32_t>(0, 96);
    ASSERT_OK_AND_ASSIGN(auto info, parse_iommu_info(r.span()));
    EXPECT_EQ(info.argsz, 96u);
    EXPECT_FALSE(info.caps.dma_avail.has_value());
}

TEST(VfioInfoParse, ReplyShorterThanTheHeaderFailsWithEproto) {
    const std::vector<std::byte> tiny(16);
    EXPECT_ERR(parse_iommu_info(tiny), EPROTO);
}

TEST(VfioInfoParse, UnknownCapabilitiesAreSkipped) {
    Reply r;
    r.add_cap(99, 40);
    r.add_dma_avail(12);
    ASSERT_OK_AND_ASSIGN(auto caps, parse_info_caps(r.span(), r.cap_offset()));
    EXPECT_EQ(caps.dma_avail, 12u);
}

TEST(VfioInfoParse, ZeroRangesIsAnEmptyList) {
    Reply r;
    r.add_iova_ranges({});
    ASSERT_OK_AND_ASSIGN(auto caps, parse_info_caps(r.span(), r.cap_offset()));
    EXPECT_TRUE(caps.iova_ranges.empty());
}

TEST(VfioInfoParse, CapabilityOffsetPastTheReplyFailsWithEproto) {
    const Reply r = vtd_reply(1);
    EXPECT_ERR(parse_info_caps(r.span(), static_cast<uint32_t>(r.span().size())), EPROTO);
}

TEST(VfioInfoParse, CapabilityHeaderCutByTheReplyEndFailsWithEproto) {
    const Reply r = vtd_reply(1);
    EXPECT_ERR(parse_info_caps(r.span(), static_cast<uint32_t>(r.span().size() - 4)), EPROTO);
}

TEST(VfioInfoParse, CapabilityInsideTheHeaderFailsWithEproto) {
    const Reply r = vtd_reply(1);
    EXPECT_ERR(parse_info_caps(r.span(), 8), EPROTO);
}

TEST(VfioInfoParse, CapabilityLinkingToItselfFailsWithEproto) {
    Reply r;
    const size_t off = r.add_dma_avail(1);
    r.put<uint32_t>(off + 4, static_cast<uint32_t>(off));
    EXPECT_ERR(parse_info_caps(r.span(), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, CapabilityLinkingBackwardsFailsWithEproto) {
    Reply r;
    const size_t first = r.add_cap(99, 0);
    const size_t second = r.add_dma_avail(1);
    r.put<uint32_t>(second + 4, static_cast<uint32_t>(first));
    EXPECT_ERR(parse_info_caps(r.span(), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, OverlongChainFailsWithEproto) {
    Reply r;
    for (uint32_t i = 0; i <= kMaxInfoCaps; ++i) r.add_cap(99, 0);
    EXPECT_ERR(parse_info_caps(r.span(), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, RangeCountBeyondTheReplyFailsWithEproto) {
    Reply r;
    const size_t off = r.add_iova_ranges({{0, 0xfff}});
    r.put<uint32_t>(off + 8, 0x10000000);  // a hostile count: 4 GiB of ranges
    EXPECT_ERR(parse_info_caps(r.span(), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, RangeWithStartAboveEndFailsWithEproto) {
    Reply r;
    r.add_iova_ranges({{0x2000, 0x1000}});
    EXPECT_ERR(parse_info_caps(r.span(), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, TruncatedDmaAvailFailsWithEproto) {
    Reply r;
    const size_t off = r.add_cap(kInfoCapDmaAvail, 0);  // header only, no avail field
    EXPECT_ERR(parse_info_caps(r.span().first(off + kInfoCapHeaderSize), r.cap_offset()), EPROTO);
}

TEST(VfioInfoParse, ChainIsBoundedByArgszNotTheBuffer) {
    // A reply whose argsz stops before DMA_AVAIL must not read the stale bytes behind it.
    Reply r;
    r.add_cap(99, 0);
    r.add_dma_avail(5);
    r.put<uint32_t>(0, kIommuInfoSize + kInfoCapHeaderSize);
    EXPECT_ERR(parse_iommu_info(r.span()), EPROTO);
}

// ---- errno -> outcome -------------------------------------------------------------------------

TEST(VfioErrnoOutcome, SuccessIsMapped) { EXPECT_EQ(map_outcome_for_errno(0), MapOutcome::Mapped); }
TEST(VfioErrnoOutcome, EexistIsAlreadyMapped) { EXPECT_EQ(map_outcome_for_errno(EEXIST), MapOutcome::AlreadyMapped); }
TEST(VfioErrnoOutcome, EnospcIsNoSpace) { EXPECT_EQ(map_outcome_for_errno(ENOSPC), MapOutcome::NoSpace); }
TEST(VfioErrnoOutcome, OtherErrnosAreFailures) {
    EXPECT_FALSE(map_outcome_for_errno(EFAULT).has_value());
    EXPECT_FALSE(map_outcome_for_errno(ENOMEM).has_value());
    EXPECT_FALSE(map_outcome_for_errno(EINVAL).has_value());
}

// ---- module parameter -------------------------------------------------------------------------

TEST(VfioEntryLimit, ParsesTheSysfsText) { EXPECT_EQ(parse_entry_limit("65535\n"), 65535u); }
TEST(VfioEntryLimit, RejectsGarbage) {
    EXPECT_FALSE(parse_entry_limit("12x\n").has_value());
    EXPECT_FALSE(parse_entry_limit("").has_value());
    EXPECT_FALSE(parse_entry_limit("-1").has_value());
    EXPECT_FALSE(parse_entry_limit("99999999999999999999999").has_value());
}

class VfioEntryLimitFile : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/coiommu-dma-param-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        ASSERT_GE(fd, 0);
        ::close(fd);
        path_ = tmpl;
    }
    void TearDown() override { ::unlink(path_.c_str()); }
    std::string path_;
};

TEST_F(VfioEntryLimitFile, ModuleEntryLimitReadsTheParameter) {
    std::ofstream(path_) << "4194304\n";
    EXPECT_EQ(VfioBackend::module_entry_limit(path_), 4194304u);
}

TEST_F(VfioEntryLimitFile, SetModuleEntryLimitWritesWhatModuleEntryLimitReads) {
    ASSERT_OK(VfioBackend::set_module_entry_limit(100, path_));
    EXPECT_EQ(VfioBackend::module_entry_limit(path_), 100u);
}

TEST(VfioEntryLimit, AbsentParameterIsNullopt) {
    EXPECT_FALSE(VfioBackend::module_entry_limit("/nonexistent/dma_entry_limit").has_value());
}

TEST(VfioEntryLimit, SetOnAnAbsentParameterFailsWithEnoent) {
    EXPECT_ERR(VfioBackend::set_module_entry_limit(100, "/nonexistent/dma_entry_limit"), ENOENT);
}

// ---- errors without VFIO ----------------------------------------------------------------------

TEST(VfioBackendErrors, OpenGroupWithoutAContainerDeviceFailsWithEnoent) {
    EXPECT_ERR(VfioBackend::open_group("/dev/vfio/1", "/nonexistent/vfio"), ENOENT);
}

TEST(VfioBackendErrors, OpenGroupOnANonVfioDeviceFailsAtTheFirstIoctl) {
    const auto r = VfioBackend::open_group("/dev/vfio/1", "/dev/null");
    EXPECT_ERR(r, ENOTTY);
    EXPECT_NE(r.error().context.find("VFIO_GET_API_VERSION"), std::string::npos) << r.error().context;
}

TEST(VfioBackendErrors, AdoptOfAnInvalidFdFailsWithEbadf) { EXPECT_ERR(VfioBackend::adopt(UniqueFd{}), EBADF); }

TEST(VfioBackendErrors, AdoptOfANonVfioFdFailsWithTheIoctlErrno) {
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
    ASSERT_TRUE(efd.valid());
    EXPECT_ERR(VfioBackend::adopt(std::move(efd)), ENOTTY);
}

}  // namespace
}  // namespace coiommu::dma
