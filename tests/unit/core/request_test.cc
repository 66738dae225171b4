#include "engine/core/request.h"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "tests/testing/log_capture.h"
#include "tests/unit/core/pin_fixture.h"

namespace coiommu::core::test {
namespace {

constexpr uint16_t kBdf = 0x0018;       // 00:03.0, the passthrough device
constexpr uint16_t kOtherBdf = 0x0020;  // 00:04.0, not a CoIOMMU endpoint
constexpr Gpa kBatchGpa{0x200000};      // where the guest kzalloc'd its PinPageInfo (data area)

EndpointSet endpoints() {
    EndpointSet s;
    s.add(kBdf);
    return s;
}

uint64_t single(Gfn gfn, uint16_t bdf) { return (raw(gfn) << kSingleGfnShift) | bdf; }
uint64_t batch(Gpa header) { return raw(header) | kPinPagesInBatch; }

// Writes a PinPageInfo and its gfn list at `at`, as the guest driver does.
void write_batch(const GuestMemory& mem, Gpa at, uint16_t bdf, uint64_t nr_pages, const std::vector<Gfn>& gfns) {
    PinPageInfo info{};
    info.bdf = bdf;
    info.nr_pages = nr_pages;
    ASSERT_OK(mem.write_obj(at, info));
    for (size_t k = 0; k < gfns.size(); ++k) {
        ASSERT_OK(mem.write_obj<uint64_t>(offset(at, sizeof(PinPageInfo) + 8 * k), raw(gfns[k])));
    }
}

// ---- EndpointSet ---------------------------------------------------------------------------

TEST(EndpointSet, ContainsOnlyWhatWasAdded) {
    EndpointSet s;
    s.add(kBdf);
    EXPECT_TRUE(s.contains(kBdf));
    EXPECT_FALSE(s.contains(kOtherBdf));
}

TEST(EndpointSet, HighestBdfFits) {
    const std::array<uint16_t, 1> bdfs{0xFFFF};
    EndpointSet s(bdfs);
    EXPECT_TRUE(s.contains(0xFFFF));
    EXPECT_FALSE(s.contains(0xFFFE));
}

TEST(EndpointSet, SizeCountsDistinctEndpoints) {
    const std::array<uint16_t, 3> bdfs{kBdf, kOtherBdf, kBdf};
    EXPECT_EQ(EndpointSet(bdfs).size(), 2u);
}

// ---- decode_request ------------------------------------------------------------------------

TEST(DecodeRequest, SingleCarriesGfnAndBdf) {
    PinFixture f;
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(single(Gfn{0xABCDE}, kBdf), f.mem(), endpoints(), {}));
    EXPECT_EQ(req.kind, DecodedRequest::Kind::Single);
    EXPECT_EQ(req.gfn, Gfn{0xABCDE});
    EXPECT_EQ(req.bdf, kBdf);
    EXPECT_EQ(req.nr_pages, 1u);
}

TEST(DecodeRequest, BatchPointsAfterTheHeader) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 3, {kGfnA, kGfnB, kGfnC});

    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    EXPECT_EQ(req.kind, DecodedRequest::Kind::Batch);
    EXPECT_EQ(req.bdf, kBdf);
    EXPECT_EQ(req.list_gpa, offset(kBatchGpa, 16));
    EXPECT_EQ(req.nr_pages, 3u);
}

TEST(DecodeRequest, EmptySlotIsASpuriousTrigger) {
    PinFixture f;
    const std::array<uint16_t, 1> bdf_zero{0};  // even when bdf 0 is an endpoint
    EXPECT_ERR(decode_request(0, f.mem(), EndpointSet(bdf_zero), {}), EINVAL);
}

TEST(DecodeRequest, SingleFromAnUnknownBdfIsRefused) {
    PinFixture f;
    auto r = decode_request(single(kGfnA, kOtherBdf), f.mem(), endpoints(), {});
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EPERM);
    EXPECT_NE(r.error().context.find("pin page for unexpected bdf"), std::string::npos);
}

TEST(DecodeRequest, BatchFromAnUnknownBdfIsRefused) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kOtherBdf, 1, {kGfnA});
    EXPECT_ERR(decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}), EPERM);
}

TEST(DecodeRequest, BatchHeaderOutsideRamIsEfault) {
    PinFixture f;
    EXPECT_ERR(decode_request(batch(f.mem().end()), f.mem(), endpoints(), {}), EFAULT);
}

TEST(DecodeRequest, BatchHeaderStraddlingTheEndOfRamIsEfault) {
    PinFixture f;
    EXPECT_ERR(decode_request(batch(Gpa{raw(f.mem().end()) - 8}), f.mem(), endpoints(), {}), EFAULT);
}

TEST(DecodeRequest, GfnListCrossingTheEndOfRamIsEfault) {
    PinFixture f;
    // The header fits in the last page, its two gfns would not.
    const Gpa at{raw(f.mem().end()) - 24};
    write_batch(f.mem(), at, kBdf, 2, {});
    EXPECT_ERR(decode_request(batch(at), f.mem(), endpoints(), {}), EFAULT);
}

TEST(DecodeRequest, HugeNrPagesIsRejectedWithoutLooping) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, uint64_t{1} << 63, {});
    EXPECT_ERR(decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}), EFAULT);
}

TEST(DecodeRequest, NrPagesWhoseByteCountWrapsIsRejected) {
    PinFixture f;
    // 2^61 * 8 == 2^64 wraps to 0 bytes: a naive check would accept it.
    write_batch(f.mem(), kBatchGpa, kBdf, uint64_t{1} << 61, {});
    EXPECT_ERR(decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}), EFAULT);
}

TEST(DecodeRequest, NrPagesAboveTheConfiguredMaximumIsE2big) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 5, {});
    EXPECT_ERR(decode_request(batch(kBatchGpa), f.mem(), endpoints(), RequestLimits{.max_batch_pages = 4}), E2BIG);
}

TEST(DecodeRequest, NrPagesAtTheMaximumIsAccepted) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 4, {});
    EXPECT_OK(decode_request(batch(kBatchGpa), f.mem(), endpoints(), RequestLimits{.max_batch_pages = 4}));
}

TEST(DecodeRequest, EmptyBatchIsValid) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 0, {});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));
    EXPECT_EQ(req.nr_pages, 0u);
}

TEST(DecodeRequest, EmptyBatchInTheLastBytesOfRamIsValid) {
    PinFixture f;
    const Gpa at{raw(f.mem().end()) - 16};
    write_batch(f.mem(), at, kBdf, 0, {});
    EXPECT_OK(decode_request(batch(at), f.mem(), endpoints(), {}));
}

TEST(DecodeRequest, HeaderIsReadOnce) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 2, {kGfnA, kGfnC});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    write_batch(f.mem(), kBatchGpa, kBdf, uint64_t{1} << 40, {});  // the guest rewrites it

    EXPECT_EQ(req.nr_pages, 2u);
}

// ---- process_request -----------------------------------------------------------------------

TEST(ProcessRequest, SinglePinsThePage) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(single(kGfnA, kBdf), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_FALSE(report.first_error.has_value());
    EXPECT_EQ(report.pinned, 1u);
    EXPECT_TRUE(report.all_pinned(req));
    EXPECT_TRUE(f.guest().pinned(kGfnA));
}

TEST(ProcessRequest, SingleWithAnAbsentDttReportsTheError) {
    PinFixture f;
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(single(kGfnA, kBdf), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    ASSERT_TRUE(report.first_error.has_value());
    EXPECT_EQ(report.first_error->code, ENOENT);
    EXPECT_FALSE(report.all_pinned(req));
}

TEST(ProcessRequest, BatchPinsEveryListedPage) {
    PinFixture f;
    for (Gfn g : {kGfnA, kGfnB, kGfnC}) ASSERT_OK(f.guest().mark(g));
    write_batch(f.mem(), kBatchGpa, kBdf, 3, {kGfnA, kGfnB, kGfnC});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_EQ(report.pinned, 3u);
    EXPECT_TRUE(report.all_pinned(req));
    EXPECT_EQ(f.backend().live_entries(), 3u);
}

TEST(ProcessRequest, BatchCountsPagesAlreadyPinned) {
    PinFixture f;
    for (Gfn g : {kGfnA, kGfnB}) ASSERT_OK(f.guest().mark(g));
    ASSERT_OK(f.pin(kGfnA));
    write_batch(f.mem(), kBatchGpa, kBdf, 2, {kGfnA, kGfnB});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_EQ(report.already_pinned, 1u);
    EXPECT_EQ(report.pinned, 1u);
}

TEST(ProcessRequest, BatchStopsAtTheFirstBadGfn) {
    PinFixture f;
    const Gfn absent{0x800};  // no DTT path for it
    for (Gfn g : {kGfnA, kGfnC}) ASSERT_OK(f.guest().mark(g));
    write_batch(f.mem(), kBatchGpa, kBdf, 3, {kGfnA, absent, kGfnC});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    ASSERT_TRUE(report.first_error.has_value());
    EXPECT_EQ(report.first_error->code, ENOENT);
    EXPECT_NE(report.first_error->context.find("batch gfn 1 of 3"), std::string::npos);
    EXPECT_EQ(report.pages_done, 1u);
    EXPECT_TRUE(f.guest().pinned(kGfnA));
    EXPECT_FALSE(f.guest().pinned(kGfnC));
    EXPECT_FALSE(f.backend().is_mapped(iova_of(kGfnC), kPageSize));
}

TEST(ProcessRequest, BatchGoesOnAfterAMapFailure) {
    PinFixture f;
    for (Gfn g : {kGfnA, kGfnC}) ASSERT_OK(f.guest().mark(g));
    write_batch(f.mem(), kBatchGpa, kBdf, 2, {kGfnA, kGfnC});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));
    f.backend().fail_nth(dma::Op::Map, 1, ENOMEM);
    testing::LogCapture logs;

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_FALSE(report.first_error.has_value());
    EXPECT_EQ(report.map_failed, 1u);
    EXPECT_EQ(report.pinned, 1u);
    EXPECT_FALSE(report.all_pinned(req));
    EXPECT_TRUE(f.guest().pinned(kGfnC));
}

TEST(ProcessRequest, BatchCountsNoSpace) {
    PinFixture f(limited_container(1));
    for (Gfn g : {kGfnA, kGfnC}) ASSERT_OK(f.guest().mark(g));
    write_batch(f.mem(), kBatchGpa, kBdf, 2, {kGfnA, kGfnC});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));
    testing::LogCapture logs;

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_EQ(report.pinned, 1u);
    EXPECT_EQ(report.no_space, 1u);
    EXPECT_FALSE(f.guest().pinned(kGfnC));
}

TEST(ProcessRequest, EmptyBatchDoesNothing) {
    PinFixture f;
    write_batch(f.mem(), kBatchGpa, kBdf, 0, {});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_EQ(report.pages_done, 0u);
    EXPECT_TRUE(report.all_pinned(req));
    EXPECT_EQ(f.map_calls(), 0u);
}

TEST(ProcessRequest, GfnsAreReadWhenProcessed) {
    PinFixture f;
    for (Gfn g : {kGfnA, kGfnC}) ASSERT_OK(f.guest().mark(g));
    write_batch(f.mem(), kBatchGpa, kBdf, 1, {kGfnA});
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(batch(kBatchGpa), f.mem(), endpoints(), {}));
    write_batch(f.mem(), kBatchGpa, kBdf, 1, {kGfnC});  // the guest changes the list

    auto report = process_request(f.ctx(), f.walker(), req);

    EXPECT_EQ(report.pinned, 1u);
    EXPECT_TRUE(f.guest().pinned(kGfnC));
    EXPECT_FALSE(f.guest().pinned(kGfnA));
}

TEST(ProcessRequest, EachRequestStartsWithAFreshCursor) {
    PinFixture f;
    ASSERT_OK(f.guest().mark(kGfnA));
    ASSERT_OK(f.guest().mark(kGfnB));
    ASSERT_OK(f.walker().leaf(kGfnA));        // the caller's walker caches kGfnA's leaf page
    ASSERT_OK(f.dtt().drop_table(kGfnB, 1));  // the guest's shrinker frees that page
    ASSERT_OK_AND_ASSIGN(auto req, decode_request(single(kGfnB, kBdf), f.mem(), endpoints(), {}));

    auto report = process_request(f.ctx(), f.walker(), req);

    ASSERT_TRUE(report.first_error.has_value());
    EXPECT_EQ(report.first_error->code, ENOENT);
}

}  // namespace
}  // namespace coiommu::core::test
