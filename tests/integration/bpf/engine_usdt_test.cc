// engine.bpf.c against the engine's USDT ABI (engine/telemetry/probes.h), driven by
// usdt_fixture: each probe fires with arguments the test chose, so counts, histogram slots and
// sums are exact.
#include "bpf/loader/engine_tracer.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/integration/bpf/bpf_test_util.h"
#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using testing::FixtureProcess;

constexpr const char* kFixture = COIOMMU_USDT_FIXTURE;
constexpr size_t kSingle = 0;
constexpr size_t kBatch = 1;
constexpr size_t kMap = 0;
constexpr size_t kUnmap = 1;

// A fixture process with the engine tracer attached to its pid.
struct Attached {
    FixtureProcess fixture;
    EngineTracer tracer;
};

Result<Attached> attach_to_fixture(EngineDmaProbes dma = EngineDmaProbes::No) {
    auto fixture = FixtureProcess::spawn(kFixture);
    if (!fixture) return coiommu::unexpected(fixture.error());
    auto tracer = EngineTracer::attach(EngineTarget{kFixture, fixture->pid(), dma});
    if (!tracer) return coiommu::unexpected(tracer.error());
    return Attached{std::move(*fixture), std::move(*tracer)};
}

TEST(EngineTracer, AttachesTheBatchedRequestProbeAndThePerScanProbeByDefault) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    EXPECT_EQ(a.tracer.attached_probes(), (std::vector<std::string>{"requests", "unpin_scan"}));
    ASSERT_OK_AND_ASSIGN(auto programs, a.tracer.programs());
    ASSERT_EQ(programs.size(), 4u);
    for (const auto& p : programs) {
        EXPECT_EQ(p.attached, p.program == "eng_requests" || p.program == "eng_unpin_scan") << p.program;
        EXPECT_EQ(p.attach, "usdt");
    }
}

TEST(EngineTracer, AttachesTheBatchedDmaProbeWhenAsked) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    EXPECT_EQ(a.tracer.attached_probes(), (std::vector<std::string>{"requests", "unpin_scan", "dma_calls"}));
    ASSERT_OK_AND_ASSIGN(auto programs, a.tracer.programs());
    ASSERT_EQ(programs.size(), 5u);
    for (const auto& p : programs) {
        // The per-call programs stay detached: the engine reports every call in a batch as well.
        EXPECT_EQ(p.attached, p.program != "eng_dma_map" && p.program != "eng_dma_unmap") << p.program;
    }
}

TEST(EngineTracer, DmaProbesAreNotCountedUnlessAttached) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("dma_map 5 4096 0 700"));
    ASSERT_OK(a.fixture.command("requests 1 0 1 0 900"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[kMap].total(), 0u);
    EXPECT_EQ(snap.requests[kSingle].ok, 1u);
}

TEST(EngineTracer, RequestCountsEqualTheProbesFired) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("requests 10 0 1 0 3000"));     // 10 single requests, 1 page, ok
    ASSERT_OK(a.fixture.command("requests 4 1 64 -12 20000"));  // 4 batches of 64 pages, -ENOMEM

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.requests[kSingle].ok, 10u);
    EXPECT_EQ(snap.requests[kSingle].failed, 0u);
    EXPECT_EQ(snap.requests[kBatch].ok, 0u);
    EXPECT_EQ(snap.requests[kBatch].failed, 4u);
    EXPECT_EQ(snap.request_latency_ns[kSingle].count, 10u);
    EXPECT_EQ(snap.request_latency_ns[kBatch].count, 4u);
}

TEST(EngineTracer, ManyBatchesOfRecordsAreAllCounted) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("requests 1000 1 8 0 5000"));  // 15 full batches and one of 40

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.requests[kBatch].ok, 1000u);
    EXPECT_EQ(snap.request_pages[kBatch].sum, 8000u);
    EXPECT_EQ(snap.request_latency_ns[kBatch].sum, 5'000'000u);
    EXPECT_EQ(snap.bad_batch, 0u);
}

TEST(EngineTracer, BatchClaimingMoreThanTheLimitCountsTheRestAsLost) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("batch_count 100"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.requests[kSingle].ok, 64u);
    EXPECT_EQ(snap.bad_batch, 36u);
}

TEST(EngineTracer, UnreadableBatchIsCountedLostNotMisread) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("batch_unreadable 5"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.requests[kSingle].total() + snap.requests[kBatch].total(), 0u);
    EXPECT_EQ(snap.bad_batch, 5u);
}

TEST(EngineTracer, RequestLatencyIsTheValueTheEngineRecorded) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("requests 3 0 1 0 4096"));  // slot 12, exactly
    ASSERT_OK(a.fixture.command("requests 2 0 1 0 4097"));  // slot 13

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    const Log2Hist& lat = snap.request_latency_ns[kSingle];
    EXPECT_EQ(lat.slots[12], 3u);
    EXPECT_EQ(lat.slots[13], 2u);
    EXPECT_EQ(lat.sum, 3 * 4096 + 2 * 4097u);
}

TEST(EngineTracer, PagesPerRequestLandInCeilLog2Slots) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("requests 3 1 64 0 1"));  // 64 pages -> slot 6
    ASSERT_OK(a.fixture.command("requests 2 1 65 0 1"));  // 65 pages -> slot 7
    ASSERT_OK(a.fixture.command("requests 1 1 1 0 1"));   // 1 page   -> slot 0

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    const Log2Hist& pages = snap.request_pages[kBatch];
    EXPECT_EQ(pages.slots[6], 3u);
    EXPECT_EQ(pages.slots[7], 2u);
    EXPECT_EQ(pages.slots[0], 1u);
    EXPECT_EQ(pages.sum, 3 * 64 + 2 * 65 + 1u);
    EXPECT_EQ(pages.count, 6u);
}

TEST(EngineTracer, DmaLatencyBucketsMatchTheUserSpaceSlotFunction) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));
    // Bucket seams: v lands in slot ceil(log2(v)), so 1024 is in slot 10 and 1025 in slot 11.
    const uint64_t latencies[] = {0, 1, 2, 3, 4, 5, 1000, 1024, 1025, uint64_t{1} << 38, uint64_t{1} << 45};

    Log2Hist expected;
    for (uint64_t ns : latencies) {
        ASSERT_OK(a.fixture.command("dma_map 1 4096 0 " + std::to_string(ns)));
        expected.slots[Log2Hist::slot_of(ns)]++;
        expected.sum += ns;
        expected.count++;
    }

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_latency_ns[kMap].slots, expected.slots);
    EXPECT_EQ(snap.dma_latency_ns[kMap].sum, expected.sum);
    EXPECT_EQ(snap.dma_latency_ns[kMap].slots[10], 2u);             // 1000 and 1024
    EXPECT_EQ(snap.dma_latency_ns[kMap].slots[kOverflowSlot], 1u);  // 2^45 overflows
}

TEST(EngineTracer, DmaCallsSplitByResultWithBytes) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    ASSERT_OK(a.fixture.command("dma_map 5 4096 0 700"));
    ASSERT_OK(a.fixture.command("dma_map 2 4096 -28 900"));  // -ENOSPC
    ASSERT_OK(a.fixture.command("dma_unmap 3 8192 0 500"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[kMap].ok, 5u);
    EXPECT_EQ(snap.dma_calls[kMap].failed, 2u);
    EXPECT_EQ(snap.dma_calls[kMap].bytes, 7 * 4096u);
    EXPECT_EQ(snap.dma_calls[kUnmap].ok, 3u);
    EXPECT_EQ(snap.dma_calls[kUnmap].bytes, 3 * 8192u);
    EXPECT_EQ(snap.dma_latency_ns[kUnmap].sum, 1500u);
}

TEST(EngineTracer, ManyDmaBatchesAreAllCountedOnce) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    ASSERT_OK(a.fixture.command("dma_map 1000 8192 0 600"));  // 15 full batches and one of 40
    ASSERT_OK(a.fixture.command("dma_unmap 70 4096 -22 900"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[kMap].ok, 1000u);
    EXPECT_EQ(snap.dma_calls[kMap].bytes, 1000 * 8192u);
    EXPECT_EQ(snap.dma_latency_ns[kMap].sum, 600'000u);
    EXPECT_EQ(snap.dma_calls[kUnmap].failed, 70u);
    EXPECT_EQ(snap.dma_latency_ns[kUnmap].count, 70u);
    EXPECT_EQ(snap.bad_batch + snap.bad_kind, 0u);
}

TEST(EngineTracer, DmaBatchClaimingMoreThanTheLimitCountsTheRestAsLost) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    ASSERT_OK(a.fixture.command("dma_batch_count 70"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[kMap].ok, 64u);
    EXPECT_EQ(snap.bad_batch, 6u);
}

TEST(EngineTracer, UnreadableDmaBatchIsCountedLostNotMisread) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    ASSERT_OK(a.fixture.command("dma_batch_unreadable 9"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[kMap].total() + snap.dma_calls[kUnmap].total(), 0u);
    EXPECT_EQ(snap.bad_batch, 9u);
}

TEST(EngineTracer, DmaRecordWithUnknownOpIsDroppedAndCounted) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture(EngineDmaProbes::Yes));

    ASSERT_OK(a.fixture.command("dma_bad_op 3"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.bad_kind, 3u);
    EXPECT_EQ(snap.dma_calls[kMap].total() + snap.dma_calls[kUnmap].total(), 0u);
}

TEST(EngineTracer, UnpinScansAreCountedWithDurations) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("scan 2 0 100 40 5000"));  // lru
    ASSERT_OK(a.fixture.command("scan 1 1 10 10 300"));    // balloon

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.scans[0].scans, 2u);
    EXPECT_EQ(snap.scans[0].examined, 200u);
    EXPECT_EQ(snap.scans[0].unpinned, 80u);
    EXPECT_EQ(snap.scans[1].scans, 1u);
    EXPECT_EQ(snap.scan_duration_ns[0].sum, 10000u);
    EXPECT_EQ(snap.scan_duration_ns[0].slots[Log2Hist::slot_of(5000)], 2u);
}

TEST(EngineTracer, UnknownKindIsDroppedAndCounted) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());

    ASSERT_OK(a.fixture.command("requests 1 7 1 0 1"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.bad_kind, 1u);  // the record (request_start/request_done are not attached)
    EXPECT_EQ(snap.requests[kSingle].total() + snap.requests[kBatch].total(), 0u);
}

TEST(EngineTracer, AttachByBinaryPathSeesEveryProcessRunningIt) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto tracer, EngineTracer::attach(EngineTarget{kFixture, -1}));
    ASSERT_OK_AND_ASSIGN(auto first, FixtureProcess::spawn(kFixture));
    ASSERT_OK_AND_ASSIGN(auto second, FixtureProcess::spawn(kFixture));

    ASSERT_OK(first.command("requests 2 0 1 0 1"));
    ASSERT_OK(second.command("requests 3 0 1 0 1"));

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    // Other tests may run the fixture concurrently: at least these two processes' requests.
    EXPECT_GE(snap.requests[kSingle].ok, 5u);
}

TEST(EngineTracer, PidAttachIgnoresOtherProcessesOfTheSameBinary) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(auto a, attach_to_fixture());
    ASSERT_OK_AND_ASSIGN(auto other, FixtureProcess::spawn(kFixture));

    ASSERT_OK(other.command("requests 6 0 1 0 1"));
    ASSERT_OK(a.fixture.command("requests 1 0 1 0 1"));

    ASSERT_OK_AND_ASSIGN(auto snap, a.tracer.snapshot());
    EXPECT_EQ(snap.requests[kSingle].ok, 1u);
}

TEST(EngineTarget, NumericArgumentIsAPidWithItsExecutable) {
    ASSERT_OK_AND_ASSIGN(auto fixture, FixtureProcess::spawn(kFixture));

    ASSERT_OK_AND_ASSIGN(auto target, EngineTarget::parse(std::to_string(fixture.pid())));
    EXPECT_EQ(target.pid, fixture.pid());
    EXPECT_EQ(target.binary, kFixture);
}

TEST(EngineTarget, PathArgumentMeansEveryProcess) {
    ASSERT_OK_AND_ASSIGN(auto target, EngineTarget::parse(kFixture));
    EXPECT_EQ(target.pid, -1);
    EXPECT_EQ(target.binary, kFixture);
}

TEST(EngineTarget, MissingBinaryIsEnoent) { EXPECT_ERR(EngineTarget::parse("/nonexistent/coiommu-engined"), ENOENT); }

TEST(EngineTracer, BinaryWithoutProbesIsEnoent) {
    COIOMMU_REQUIRE_BPF();
    EXPECT_ERR(EngineTracer::attach(EngineTarget{"/bin/true", -1}), ENOENT);
}

}  // namespace
}  // namespace coiommu::bpf
