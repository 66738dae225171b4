// BasicMemoryMapper: the unit tests of crosvm's BasicMemoryMapper, case for case, plus the
// export-session / IOMMU-fault flow with real eventfds and the error order of export/release.
#include "engine/viommu/basic_mapper.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <set>
#include <vector>

#include "tests/testing/expect.h"
#include "tests/testing/log_capture.h"

namespace coiommu::viommu {
namespace {

using std::chrono::milliseconds;

constexpr uint64_t kMax = ~uint64_t{0};
constexpr Prot kR = Prot::Read;
constexpr Prot kRW = Prot::ReadWrite;

MappingInfo info(uint64_t iova, uint64_t gpa, uint64_t size, Prot prot) {
    return MappingInfo::create(Iova{iova}, Gpa{gpa}, size, prot).value();
}

MemRegion region(uint64_t gpa, uint64_t len, Prot prot) { return MemRegion{Gpa{gpa}, len, prot}; }

// add_map that must succeed with Ok.
void add(BasicMemoryMapper& m, uint64_t iova, uint64_t gpa, uint64_t size, Prot prot) {
    auto r = m.add_map(info(iova, gpa, size, prot));
    ASSERT_OK(r);
    ASSERT_EQ(*r, AddMapResult::Ok);
}

AddMapResult add_result(BasicMemoryMapper& m, uint64_t iova, uint64_t gpa, uint64_t size, Prot prot) {
    return m.add_map(info(iova, gpa, size, prot)).value();
}

bool remove_ok(BasicMemoryMapper& m, uint64_t iova, uint64_t size) {
    auto r = m.remove_map(Iova{iova}, size);
    return r.has_value() && r->is_success();
}

bool remove_overlaps(BasicMemoryMapper& m, uint64_t iova, uint64_t size) {
    auto r = m.remove_map(Iova{iova}, size);
    return r.has_value() && r->is_overlap_failure();
}

// The first region of a successful export.
MemRegion export_first(BasicMemoryMapper& m, uint64_t iova, uint64_t size) {
    auto r = m.export_range(Iova{iova}, size);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    if (!r || r->empty()) return {};
    return r->front();
}

std::vector<MemRegion> export_all(BasicMemoryMapper& m, uint64_t iova, uint64_t size) {
    auto r = m.export_range(Iova{iova}, size);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    return r ? *r : std::vector<MemRegion>{};
}

bool export_fails(BasicMemoryMapper& m, uint64_t iova, uint64_t size) {
    return !m.export_range(Iova{iova}, size).has_value();
}

bool signaled(const EventFd& ev) { return ev.is_signaled().value(); }

// ---- test_mapping_info ----------------------------------------------------------------------

TEST(MappingInfo, IovaOverflowIsRejected) {
    EXPECT_ERR(MappingInfo::create(Iova{kMax - 1}, Gpa{1}, 2, kR), EOVERFLOW);
    EXPECT_ERR(MappingInfo::create(Iova{kMax}, Gpa{1}, 2, kR), EOVERFLOW);
}

TEST(MappingInfo, GpaOverflowIsRejected) {
    EXPECT_ERR(MappingInfo::create(Iova{1}, Gpa{kMax - 1}, 2, kR), EOVERFLOW);
    EXPECT_ERR(MappingInfo::create(Iova{1}, Gpa{kMax}, 2, kR), EOVERFLOW);
}

TEST(MappingInfo, HugeSizeOverflows) { EXPECT_ERR(MappingInfo::create(Iova{5}, Gpa{5}, kMax, kR), EOVERFLOW); }

TEST(MappingInfo, EndOfExactlyTwoToThe64CountsAsOverflow) {
    EXPECT_ERR(MappingInfo::create(Iova{kMax - 1}, Gpa{0}, 2, kR), EOVERFLOW);
    EXPECT_OK(MappingInfo::create(Iova{kMax - 1}, Gpa{0}, 1, kR));
}

TEST(MappingInfo, ZeroSizeIsRejected) { EXPECT_ERR(MappingInfo::create(Iova{1}, Gpa{5}, 0, kR), EINVAL); }

// ---- test_map_overlap -----------------------------------------------------------------------

TEST(BasicMemoryMapper, MapOverlap) {
    BasicMemoryMapper m(kMax);
    add(m, 10, 1000, 10, kRW);
    EXPECT_EQ(add_result(m, 14, 1000, 1, kRW), AddMapResult::OverlapFailure);  // inside
    EXPECT_EQ(add_result(m, 0, 1000, 12, kRW), AddMapResult::OverlapFailure);  // tail overlap
    EXPECT_EQ(add_result(m, 16, 1000, 6, kRW), AddMapResult::OverlapFailure);  // head overlap
    EXPECT_EQ(add_result(m, 5, 1000, 20, kRW), AddMapResult::OverlapFailure);  // covers it
    EXPECT_EQ(m.size(), 1u);
}

TEST(BasicMemoryMapper, TouchingRangesAreAllowed) {
    BasicMemoryMapper m(kMax);
    add(m, 10, 1000, 10, kRW);
    EXPECT_EQ(add_result(m, 0, 0, 10, kRW), AddMapResult::Ok);
    EXPECT_EQ(add_result(m, 20, 0, 10, kRW), AddMapResult::Ok);
    EXPECT_EQ(m.size(), 3u);  // never merged
}

TEST(BasicMemoryMapper, AddMapRechecksSizeAndOverflow) {
    BasicMemoryMapper m(kMax);
    EXPECT_ERR(m.add_map(MappingInfo{Iova{1}, Gpa{1}, 0, kR}), EINVAL);
    EXPECT_ERR(m.add_map(MappingInfo{Iova{kMax}, Gpa{1}, 1, kR}), EOVERFLOW);
    EXPECT_ERR(m.add_map(MappingInfo{Iova{1}, Gpa{kMax}, 1, kR}), EOVERFLOW);
    EXPECT_TRUE(m.empty());
}

TEST(BasicMemoryMapper, MappingCountIsBounded) {
    BasicMemoryMapper m(kMax, 2);
    add(m, 0, 0, 1, kR);
    add(m, 1, 0, 1, kR);
    EXPECT_ERR(m.add_map(info(2, 0, 1, kR)), ENOSPC);
    EXPECT_EQ(add_result(m, 0, 0, 1, kR), AddMapResult::OverlapFailure);  // overlap is checked first
    ASSERT_TRUE(remove_ok(m, 0, 1));
    EXPECT_EQ(add_result(m, 2, 0, 1, kR), AddMapResult::Ok);
}

// ---- test_map_unmap: the virtio-iommu spec's UNMAP examples, with exports added ----------------

TEST(BasicMemoryMapper, MapUnmapSpecExample1) {
    // UNMAP of an empty range succeeds.
    BasicMemoryMapper m(kMax);
    EXPECT_TRUE(remove_ok(m, 0, 4));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample2) {
    // MAP [0,9]; UNMAP [0,9] removes it.
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 9, kRW);
    EXPECT_EQ(export_first(m, 0, 1), region(1000, 1, kRW));
    EXPECT_EQ(export_first(m, 8, 1), region(1008, 1, kRW));
    EXPECT_TRUE(export_fails(m, 9, 1));
    EXPECT_TRUE(remove_ok(m, 0, 9));
    EXPECT_TRUE(export_fails(m, 0, 1));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample3) {
    // MAP [0,4]; MAP [5,9]; UNMAP [0,9] removes both.
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    add(m, 5, 50, 4, kRW);
    EXPECT_EQ(export_first(m, 0, 1), region(1000, 1, kRW));
    EXPECT_EQ(export_first(m, 6, 1), region(51, 1, kRW));
    EXPECT_TRUE(remove_ok(m, 0, 9));
    EXPECT_TRUE(export_fails(m, 0, 1));
    EXPECT_TRUE(export_fails(m, 6, 1));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample4) {
    // MAP [0,9]; UNMAP [0,4] would split it: RANGE, nothing removed.
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 9, kRW);
    EXPECT_TRUE(remove_overlaps(m, 0, 4));
    EXPECT_EQ(export_first(m, 5, 1), region(1005, 1, kRW));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample5) {
    // MAP [0,4]; MAP [5,9]; UNMAP [0,4] removes only the first.
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    add(m, 5, 50, 4, kRW);
    EXPECT_EQ(export_first(m, 0, 1), region(1000, 1, kRW));
    EXPECT_EQ(export_first(m, 5, 1), region(50, 1, kRW));
    EXPECT_TRUE(remove_ok(m, 0, 4));
    EXPECT_TRUE(export_fails(m, 0, 1));
    EXPECT_TRUE(export_fails(m, 4, 1));
    // The removal overlapped the export of [0,0]: the session has faulted, so even the
    // still-mapped [5,9] cannot be exported any more.
    EXPECT_TRUE(export_fails(m, 5, 1));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample6) {
    // MAP [0,4]; UNMAP [0,9] removes it (the unmapped tail of the range is fine).
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    EXPECT_EQ(export_first(m, 0, 1), region(1000, 1, kRW));
    EXPECT_TRUE(export_fails(m, 9, 1));
    EXPECT_TRUE(remove_ok(m, 0, 9));
    EXPECT_TRUE(export_fails(m, 0, 1));
    EXPECT_TRUE(export_fails(m, 9, 1));
}

TEST(BasicMemoryMapper, MapUnmapSpecExample7) {
    // MAP [0,4] read-only; MAP [10,14] RW; UNMAP [0,14] removes both.
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kR);
    add(m, 10, 50, 4, kRW);
    EXPECT_EQ(export_first(m, 0, 1), region(1000, 1, kR));
    EXPECT_EQ(export_first(m, 3, 1), region(1003, 1, kR));
    EXPECT_TRUE(export_fails(m, 4, 1));
    EXPECT_EQ(export_first(m, 10, 1), region(50, 1, kRW));
    EXPECT_EQ(export_first(m, 13, 1), region(53, 1, kRW));
    EXPECT_TRUE(remove_ok(m, 0, 14));
    EXPECT_TRUE(export_fails(m, 0, 1));
    EXPECT_TRUE(export_fails(m, 3, 1));
    EXPECT_TRUE(export_fails(m, 4, 1));
    EXPECT_TRUE(export_fails(m, 10, 1));
    EXPECT_TRUE(export_fails(m, 13, 1));
}

// ---- test_remove_map ------------------------------------------------------------------------

TEST(BasicMemoryMapper, RemoveMap) {
    BasicMemoryMapper m(kMax);
    add(m, 1, 1000, 4, kR);  // [1,5)
    add(m, 5, 50, 4, kRW);   // [5,9)
    add(m, 9, 50, 4, kRW);   // [9,13)
    ASSERT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_overlaps(m, 0, 6));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_overlaps(m, 1, 5));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_overlaps(m, 1, 9));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_overlaps(m, 6, 4));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_overlaps(m, 6, 14));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_TRUE(remove_ok(m, 5, 4));
    EXPECT_EQ(m.size(), 2u);
    EXPECT_TRUE(remove_overlaps(m, 1, 9));
    EXPECT_EQ(m.size(), 2u);
    EXPECT_TRUE(remove_ok(m, 0, 15));
    EXPECT_EQ(m.size(), 0u);
}

TEST(BasicMemoryMapper, RemoveMapRejectsZeroSizeAndOverflow) {
    BasicMemoryMapper m(kMax);
    add(m, 0, 0, 4, kR);
    EXPECT_ERR(m.remove_map(Iova{0}, 0), EINVAL);
    EXPECT_ERR(m.remove_map(Iova{1}, kMax), EOVERFLOW);  // end == 2^64
    EXPECT_EQ(m.size(), 1u);
}

TEST(BasicMemoryMapper, RemoveMapReachingTheTopOfTheAddressSpace) {
    BasicMemoryMapper m(kMax);
    add(m, kMax - 8, 0, 8, kR);  // [2^64-9, 2^64-1)
    EXPECT_TRUE(remove_ok(m, kMax - 16, 16));
    EXPECT_TRUE(m.empty());
}

// ---- test_translate_len ---------------------------------------------------------------------

TEST(BasicMemoryMapper, TranslateLen) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    // [1, 5) -> [1000, 1004)
    add(m, 1, 1000, 4, kR);
    EXPECT_ERR(m.export_range(Iova{1}, 0), EINVAL);
    EXPECT_EQ(export_first(m, 1, 1), region(1000, 1, kR));
    EXPECT_EQ(export_first(m, 1, 2), region(1000, 2, kR));
    EXPECT_EQ(export_first(m, 1, 3), region(1000, 3, kR));
    EXPECT_EQ(export_first(m, 2, 1), region(1001, 1, kR));
    EXPECT_EQ(export_first(m, 2, 2), region(1001, 2, kR));
    EXPECT_TRUE(export_fails(m, 1, 5));
    // [1, 9) -> [1000, 1008)
    add(m, 5, 1004, 4, kR);
    // Spanned across 2 maps
    EXPECT_EQ(export_first(m, 2, 5), region(1001, 5, kR));
    EXPECT_EQ(export_first(m, 2, 6), region(1001, 6, kR));
    EXPECT_EQ(export_first(m, 2, 7), region(1001, 7, kR));
    EXPECT_TRUE(export_fails(m, 2, 8));
    EXPECT_TRUE(export_fails(m, 3, 10));
    // [1, 9) -> [1000, 1008), [11, 17) -> [1010, 1016)
    add(m, 11, 1010, 6, kR);
    // Discontiguous iova
    EXPECT_TRUE(export_fails(m, 3, 10));
    // [1, 17) -> [1000, 1016)
    add(m, 9, 1008, 2, kR);
    // Spanned across 4 maps
    EXPECT_EQ(export_first(m, 3, 10), region(1002, 10, kR));
    EXPECT_EQ(export_first(m, 1, 16), region(1000, 16, kR));
    EXPECT_TRUE(export_fails(m, 1, 17));
    EXPECT_TRUE(export_fails(m, 0, 16));
    // [0, 1) -> [5, 6), [1, 17) -> [1000, 1016)
    add(m, 0, 5, 1, kR);
    EXPECT_EQ(export_first(m, 0, 1), region(5, 1, kR));
    // Discontiguous gpa
    EXPECT_EQ(export_all(m, 0, 2), (std::vector{region(5, 1, kR), region(1000, 1, kR)}));
    EXPECT_EQ(export_all(m, 0, 16), (std::vector{region(5, 1, kR), region(1000, 15, kR)}));
    // [0, 1) -> [5, 6), [1, 17) -> [1000, 1016), [17, 19) -> [1016, 1018) <RW>
    add(m, 17, 1016, 2, kRW);
    // Contiguous iova and gpa, but different perm
    EXPECT_EQ(export_all(m, 1, 17), (std::vector{region(1000, 16, kR), region(1016, 1, kRW)}));
    EXPECT_EQ(export_all(m, 2, 16), (std::vector{region(1001, 15, kR), region(1016, 1, kRW)}));
    EXPECT_EQ(export_all(m, 2, 17), (std::vector{region(1001, 15, kR), region(1016, 2, kRW)}));
    EXPECT_TRUE(export_fails(m, 2, 500));
    EXPECT_TRUE(export_fails(m, 500, 5));
}

// ---- defaults, identity ---------------------------------------------------------------------

TEST(BasicMemoryMapper, GetMaskReturnsTheConstructorMask) {
    BasicMemoryMapper m(0x40201000);
    EXPECT_EQ(m.get_mask().value(), 0x40201000u);
    EXPECT_TRUE(m.supports_detach());
}

TEST(BasicMemoryMapper, IdsAreUniquePerInstance) {
    std::set<uint32_t> ids;
    for (int i = 0; i < 16; ++i) ids.insert(BasicMemoryMapper(kMax).id());
    EXPECT_EQ(ids.size(), 16u);
}

TEST(BasicMemoryMapper, IdsComeFromAnIncreasingCounter) {
    BasicMemoryMapper a(kMax);
    BasicMemoryMapper b(kMax);
    EXPECT_EQ(b.id(), a.id() + 1);
}

TEST(BasicMemoryMapper, VfioDmaMapIsNotSupported) {
    BasicMemoryMapper m(kMax);
    EXPECT_ERR(m.vfio_dma_map(Iova{0}, Hva{0x1000}, 0x1000, kRW), ENOTSUP);
}

// ---- export sessions and IOMMU faults -----------------------------------------------------------

TEST(BasicMemoryMapperExport, ExportRecordsTheRangeAndReleaseRemovesIt) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 16, kRW);
    ASSERT_OK(m.export_range(Iova{4}, 4));
    ASSERT_OK(m.export_range(Iova{4}, 4));  // duplicates are allowed
    EXPECT_EQ(m.exported_count(), 2u);
    EXPECT_OK(m.release(Iova{4}, 4));
    EXPECT_EQ(m.exported_count(), 1u);
    EXPECT_OK(m.release(Iova{4}, 4));
    EXPECT_EQ(m.exported_count(), 0u);
}

TEST(BasicMemoryMapperExport, RemovingUnexportedMemoryIsNoFault) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    add(m, 4, 2000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK_AND_ASSIGN(auto r, m.remove_map(Iova{4}, 4));
    EXPECT_TRUE(r.is_success());
    EXPECT_FALSE(r.has_fault_resolved());
    EXPECT_FALSE(signaled(fault));
}

TEST(BasicMemoryMapperExport, RemovingExportedMemorySignalsTheClient) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 8, kRW);
    ASSERT_OK(m.export_range(Iova{2}, 2));
    ASSERT_OK_AND_ASSIGN(auto r, m.remove_map(Iova{0}, 8));
    ASSERT_TRUE(r.is_success());
    EXPECT_TRUE(r.has_fault_resolved());
    EXPECT_TRUE(signaled(fault));
}

TEST(BasicMemoryMapperExport, ResolvedEventFiresOnlyAfterTheLastRelease) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 8, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 2));
    ASSERT_OK(m.export_range(Iova{4}, 2));
    ASSERT_OK_AND_ASSIGN(auto r, m.remove_map(Iova{0}, 8));
    ASSERT_TRUE(r.has_fault_resolved());
    const EventFd& resolved = r.fault_resolved();
    EXPECT_FALSE(signaled(resolved));
    ASSERT_OK(m.release(Iova{4}, 2));
    EXPECT_FALSE(signaled(resolved));
    ASSERT_OK(m.release(Iova{0}, 2));
    EXPECT_TRUE(resolved.wait_for(milliseconds(1000)).value());
}

TEST(BasicMemoryMapperExport, SecondFaultInASessionReturnsNoEvent) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    add(m, 4, 2000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 8));
    ASSERT_OK_AND_ASSIGN(auto first, m.remove_map(Iova{0}, 4));
    EXPECT_TRUE(first.has_fault_resolved());
    ASSERT_OK(fault.read());
    ASSERT_OK_AND_ASSIGN(auto second, m.remove_map(Iova{4}, 4));
    EXPECT_TRUE(second.is_success());
    EXPECT_FALSE(second.has_fault_resolved());
    EXPECT_FALSE(signaled(fault));  // the client is not signaled twice
}

TEST(BasicMemoryMapperExport, NoExportAfterAFault) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    add(m, 4, 2000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK(m.remove_map(Iova{0}, 4));
    EXPECT_ERR(m.export_range(Iova{4}, 4), EPIPE);
}

TEST(BasicMemoryMapperExport, ResetDomainWithExportsFaults) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    EventFd resolved = m.reset_domain();
    EXPECT_TRUE(m.empty());
    ASSERT_TRUE(resolved.valid());
    EXPECT_TRUE(signaled(fault));
    ASSERT_OK(m.release(Iova{0}, 4));
    EXPECT_TRUE(signaled(resolved));
}

TEST(BasicMemoryMapperExport, ResetDomainWithoutExportsIsNoFault) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    EXPECT_FALSE(m.reset_domain().valid());
    EXPECT_TRUE(m.empty());
    EXPECT_FALSE(signaled(fault));
}

TEST(BasicMemoryMapperExport, ResetDomainWithoutSessionClearsMaps) {
    BasicMemoryMapper m(kMax);
    add(m, 0, 1000, 4, kRW);
    EXPECT_FALSE(m.reset_domain().valid());
    EXPECT_TRUE(m.empty());
}

TEST(BasicMemoryMapperExport, NewSessionRefusedWhileExportsOutstanding) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    EXPECT_ERR(m.start_export_session(), EBUSY);
    ASSERT_OK(m.release(Iova{0}, 4));
    EXPECT_OK(m.start_export_session());
}

TEST(BasicMemoryMapperExport, NewSessionAfterAFaultCanExportAgainWithFreshEvents) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd old_fault, m.start_export_session());
    add(m, 0, 1000, 4, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK_AND_ASSIGN(auto r, m.remove_map(Iova{0}, 4));
    ASSERT_OK(m.release(Iova{0}, 4));
    ASSERT_OK_AND_ASSIGN(EventFd new_fault, m.start_export_session());
    EXPECT_FALSE(signaled(new_fault));
    add(m, 0, 3000, 4, kRW);
    EXPECT_EQ(export_first(m, 0, 4), region(3000, 4, kRW));
    ASSERT_OK_AND_ASSIGN(auto again, m.remove_map(Iova{0}, 4));
    EXPECT_TRUE(again.has_fault_resolved());  // a new session faults afresh
    EXPECT_TRUE(signaled(new_fault));
}

TEST(BasicMemoryMapperExport, ExportErrorOrder) {
    BasicMemoryMapper m(kMax);
    add(m, 0, 1000, 4, kRW);
    // 1. no session (even for arguments that are also invalid)
    EXPECT_ERR(m.export_range(Iova{0}, 0), ENOENT);
    ASSERT_OK(m.start_export_session());
    // 3. size 0 before overflow
    EXPECT_ERR(m.export_range(Iova{kMax}, 0), EINVAL);
    // 4. overflow before the coverage walk
    EXPECT_ERR(m.export_range(Iova{kMax}, 2), EOVERFLOW);
    // 5. gap
    EXPECT_ERR(m.export_range(Iova{2}, 4), EFAULT);
    // 2. faulted session, before size 0
    ASSERT_OK(m.export_range(Iova{0}, 1));
    ASSERT_OK(m.remove_map(Iova{0}, 4));
    EXPECT_ERR(m.export_range(Iova{0}, 0), EPIPE);
}

TEST(BasicMemoryMapperExport, ReleaseErrorOrder) {
    BasicMemoryMapper m(kMax);
    // overflow before the session check
    EXPECT_ERR(m.release(Iova{kMax}, 2), EOVERFLOW);
    // no session
    EXPECT_ERR(m.release(Iova{0}, 1), ENOENT);
    // an inclusive end of exactly 2^64-1 is representable: not an overflow
    EXPECT_ERR(m.release(Iova{kMax}, 1), ENOENT);
}

TEST(BasicMemoryMapperExport, ReleaseOfUnknownRangeWarnsAndSucceeds) {
    testing::LogCapture logs;
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 1000, 8, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    EXPECT_OK(m.release(Iova{0}, 2));  // not an exact match
    EXPECT_TRUE(logs.contains("WARN viommu: tried to release unknown range"));
    EXPECT_EQ(m.exported_count(), 1u);
}

TEST(BasicMemoryMapperExport, ReleaseOfZeroSizeIsAnUnknownRange) {
    testing::LogCapture logs;
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    EXPECT_OK(m.release(Iova{0}, 0));
    EXPECT_TRUE(logs.contains("tried to release unknown range"));
}

TEST(BasicMemoryMapperExport, ReleaseRemovesOneOfDuplicateExports) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 8, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK_AND_ASSIGN(auto r, m.remove_map(Iova{0}, 8));
    ASSERT_TRUE(r.has_fault_resolved());
    ASSERT_OK(m.release(Iova{0}, 4));
    EXPECT_FALSE(signaled(r.fault_resolved()));  // one export still outstanding
    ASSERT_OK(m.release(Iova{0}, 4));
    EXPECT_TRUE(signaled(r.fault_resolved()));
}

TEST(BasicMemoryMapperExport, ReleaseWithoutFaultDoesNotSignal) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK_AND_ASSIGN(EventFd fault, m.start_export_session());
    add(m, 0, 1000, 8, kRW);
    ASSERT_OK(m.export_range(Iova{0}, 4));
    ASSERT_OK(m.release(Iova{0}, 4));
    EXPECT_FALSE(signaled(fault));
}

TEST(BasicMemoryMapperExport, ExportReachingTheTopOfTheAddressSpace) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, kMax - 8, 0x1000, 8, kRW);  // ends at 2^64 - 1 (exclusive)
    EXPECT_EQ(export_first(m, kMax - 4, 4), region(0x1004, 4, kRW));
    EXPECT_OK(m.release(Iova{kMax - 4}, 4));
    EXPECT_EQ(m.exported_count(), 0u);
}

TEST(BasicMemoryMapperExport, ExportMergesOnlyContiguousGpaWithEqualProt) {
    BasicMemoryMapper m(kMax);
    ASSERT_OK(m.start_export_session());
    add(m, 0, 100, 4, kRW);
    add(m, 4, 104, 4, kRW);  // contiguous: merged
    add(m, 8, 200, 4, kRW);  // gpa jump: new region
    add(m, 12, 204, 4, kR);  // prot change: new region
    EXPECT_EQ(export_all(m, 1, 14), (std::vector{region(101, 7, kRW), region(200, 4, kRW), region(204, 3, kR)}));
}

}  // namespace
}  // namespace coiommu::viommu
