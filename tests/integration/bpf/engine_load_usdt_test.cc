// engine.bpf.c attached to the real engine, here in this process, under an emulated guest load
// (tests/unit/exporter/engine_vm.h: guest vCPU threads speaking the CoIOMMU driver protocol
// through the device's notify slots, a balloon thread, LRU unpinning, the fake VFIO container
// with its latency model). After the load stops, what the probes counted must equal what the
// engine's own statistics say: every request, page, latency, DMA call and scan.
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "bpf/loader/engine_tracer.h"
#include "tests/integration/bpf/bpf_test_util.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/engine_vm.h"

namespace coiommu::bpf {
namespace {

using exporter::testing::EngineVm;
using exporter::testing::EngineVmOptions;
using exporter::testing::LoadPattern;
using telemetry::DmaOp;
using telemetry::RequestKind;
using telemetry::ScanKind;

struct TracedRun {
    telemetry::StatsSnapshot engine;
    EngineSnapshot traced;
};

// Attaches to this process, runs the Mixed load for `duration`, stops the engine (its teardown
// unmaps everything, which fires probes too), then reads both sides. `workers` 0: the intake
// serves inline (its own trace batch); else that many pin workers (one batch each).
Result<TracedRun> traced_run(EngineDmaProbes dma, std::chrono::milliseconds duration, uint32_t workers = 1) {
    auto target = EngineTarget::parse(std::to_string(::getpid()));
    if (!target) return coiommu::unexpected(target.error());
    target->dma = dma;
    auto tracer = EngineTracer::attach(*target);
    if (!tracer) return coiommu::unexpected(tracer.error());

    EngineVmOptions o;
    o.pattern = LoadPattern::Mixed;
    o.engine.unpin_interval = std::chrono::milliseconds(50);
    o.balloon_every = std::chrono::milliseconds(100);
    o.engine.workers = workers;
    auto vm = EngineVm::create(o);
    if (!vm) return coiommu::unexpected(vm.error());
    (*vm)->start();
    std::this_thread::sleep_for(duration);
    (*vm)->stop();

    auto snap = tracer->snapshot();
    if (!snap) return coiommu::unexpected(snap.error());
    return TracedRun{(*vm)->stats(), *snap};
}

TEST(EngineTracerOnTheEngine, RequestsPagesAndLatenciesEqualTheEnginesOwnCounts) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(const TracedRun run, traced_run(EngineDmaProbes::No, std::chrono::milliseconds(800)));
    const auto& e = run.engine.totals;
    const auto& t = run.traced;

    ASSERT_GT(e.requests[RequestKind::Single], 50u) << "the load sent too few single requests to compare";
    ASSERT_GT(e.requests[RequestKind::Batch], 50u) << "the load sent too few batch requests to compare";
    uint64_t failed = 0, pages = 0;
    for (const RequestKind k : {RequestKind::Single, RequestKind::Batch}) {
        const auto i = static_cast<size_t>(k);
        EXPECT_EQ(t.requests[i].total(), e.requests[k]) << "kind " << i;
        EXPECT_EQ(t.request_latency_ns[i].count, e.request_latency_ns[k].count()) << "kind " << i;
        // The probe carries the very value the engine observed: the sums agree to the nanosecond.
        EXPECT_EQ(t.request_latency_ns[i].sum, e.request_latency_ns[k].sum) << "kind " << i;
        failed += t.requests[i].failed;
        pages += t.request_pages[i].sum;
    }
    EXPECT_EQ(failed, e.requests_failed);
    EXPECT_EQ(pages, e.pages_requested);
    EXPECT_EQ(t.bad_kind, 0u);
}

TEST(EngineTracerOnTheEngine, UnpinScansEqualTheEnginesOwnCounts) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(const TracedRun run, traced_run(EngineDmaProbes::No, std::chrono::milliseconds(800)));
    const auto& e = run.engine.totals;
    const auto& t = run.traced;

    ASSERT_GT(e.unpin_scans[ScanKind::Lru], 3u);
    ASSERT_GT(e.unpin_scans[ScanKind::Balloon], 0u);
    for (const ScanKind k : {ScanKind::Lru, ScanKind::Balloon}) {
        const auto i = static_cast<size_t>(k);
        EXPECT_EQ(t.scans[i].scans, e.unpin_scans[k]) << "kind " << i;
        EXPECT_EQ(t.scan_duration_ns[i].sum, e.unpin_scan_duration_ns[k].sum) << "kind " << i;
    }
    // Scans unpinned pages; teardown unpins the rest without a scan.
    const uint64_t by_scans = t.scans[0].unpinned + t.scans[1].unpinned;
    EXPECT_GT(by_scans, 0u);
    EXPECT_LE(by_scans, e.pages_unpinned);
}

// The DMA call records come in batches from three kinds of thread: the serving thread's request
// batch carries its maps, the unpinner's own batch its unmaps (flushed per scan), and teardown's
// the final unmaps. After the stop every one of them must have been handed over.
void expect_dma_calls_equal(const TracedRun& run) {
    const auto& e = run.engine.totals;
    const auto& t = run.traced;

    ASSERT_GT(e.dma_calls[DmaOp::Map], 50u);
    ASSERT_GT(e.dma_calls[DmaOp::Unmap], 50u);
    for (const DmaOp op : {DmaOp::Map, DmaOp::Unmap}) {
        const auto i = static_cast<size_t>(op);
        EXPECT_EQ(t.dma_calls[i].total(), e.dma_calls[op]) << "op " << i;
        EXPECT_EQ(t.dma_latency_ns[i].sum, e.dma_call_latency_ns[op].sum) << "op " << i;
    }
    // The fake container refuses nothing here, so every call succeeded and its bytes count.
    EXPECT_EQ(t.dma_calls[0].failed + t.dma_calls[1].failed, 0u);
    EXPECT_EQ(t.dma_calls[0].bytes, e.dma_bytes[DmaOp::Map]);
    EXPECT_EQ(t.dma_calls[1].bytes, e.dma_bytes[DmaOp::Unmap]);
    EXPECT_EQ(t.bad_batch + t.bad_kind, 0u);
}

TEST(EngineTracerOnTheEngine, DmaCallsEqualTheEnginesOwnCountsWhenThoseRecordsAreRead) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(const TracedRun run, traced_run(EngineDmaProbes::Yes, std::chrono::milliseconds(800)));
    expect_dma_calls_equal(run);
}

TEST(EngineTracerOnTheEngine, DmaCallsOfAnIntakeServingInlineEqualTheEnginesOwnCounts) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(const TracedRun run,
                         traced_run(EngineDmaProbes::Yes, std::chrono::milliseconds(800), /*workers=*/0));
    expect_dma_calls_equal(run);
}

TEST(EngineTracerOnTheEngine, WithoutDmaRecordsNoDmaCallIsCounted) {
    COIOMMU_REQUIRE_BPF();
    ASSERT_OK_AND_ASSIGN(const TracedRun run, traced_run(EngineDmaProbes::No, std::chrono::milliseconds(300)));

    ASSERT_GT(run.engine.totals.dma_calls[DmaOp::Map], 0u);
    EXPECT_EQ(run.traced.dma_calls[0].total() + run.traced.dma_calls[1].total(), 0u);
}

}  // namespace
}  // namespace coiommu::bpf
