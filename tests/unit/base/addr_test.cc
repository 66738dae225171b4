#include "engine/base/addr.h"

#include <gtest/gtest.h>

namespace coiommu {
namespace {

TEST(Addr, GfnToGpaShiftsByPageSize) { EXPECT_EQ(to_gpa(Gfn{0x12}), Gpa{0x12000}); }

TEST(Addr, GfnToGpaRefusesGfnThatWouldWrap) {
    // 2^52 << 12 == 2^64: would wrap to 0, a valid low address.
    EXPECT_FALSE(to_gpa(Gfn{uint64_t{1} << 52}).has_value());
}

TEST(Addr, LargestGfnStillConverts) { EXPECT_EQ(to_gpa(Gfn{kMaxGfn}), Gpa{~uint64_t{0} & ~kPageMask}); }

TEST(Addr, GpaToGfnDropsPageOffset) { EXPECT_EQ(to_gfn(Gpa{0x12345}), Gfn{0x12}); }

TEST(Addr, CheckedAddDetectsOverflow) {
    EXPECT_FALSE(checked_add(Iova{~uint64_t{0}}, 1).has_value());
    EXPECT_EQ(checked_add(Iova{1}, 2), Iova{3});
}

TEST(Addr, IdentityIovaKeepsTheNumber) { EXPECT_EQ(raw(identity_iova(Gpa{0x5000})), 0x5000u); }

TEST(Addr, PageAlignedChecksLowBits) {
    EXPECT_TRUE(page_aligned(Gpa{0x3000}));
    EXPECT_FALSE(page_aligned(Gpa{0x3001}));
}

}  // namespace
}  // namespace coiommu
