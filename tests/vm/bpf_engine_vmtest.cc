// The engine USDT program under the guest's kernel (Debian 12's 6.1, the oldest kernel we
// support): its verifier must accept engine.bpf.c (bpf_loop, the batch copies) and its uprobes must
// deliver the batched request and DMA call records. This test binary is its own USDT target: it
// fires the engine's probes through the engine's RequestTraceBatch and DmaTraceBatch. Outside the QEMU guest it skips,
// like every tests/vm case (the host runs the same checks in tests/integration/bpf).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "bpf/loader/engine_tracer.h"
#include "engine/telemetry/request_trace.h"
#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using telemetry::RequestKind;

TEST(BpfEngineVm, BatchedRequestRecordsAreCountedUnderTheGuestKernel) {
    if (std::getenv("VFIO_GROUP") == nullptr) GTEST_SKIP() << "not inside the QEMU VFIO guest (no VFIO_GROUP)";
    ASSERT_OK_AND_ASSIGN(auto target, EngineTarget::parse(std::to_string(::getpid())));
    ASSERT_OK_AND_ASSIGN(auto tracer, EngineTracer::attach(target));
    ASSERT_EQ(tracer.attached_probes(), (std::vector<std::string>{"requests", "unpin_scan"}));

    {
        telemetry::RequestTraceBatch batch(1);
        for (uint64_t i = 0; i < 100; ++i) batch.add(RequestKind::Batch, 16, i % 10 == 0 ? -12 : 0, 2000, 0);
    }  // 64 flushed when full, 36 on destruction
    COIOMMU_PROBE_UNPIN_SCAN(1u, 0u, 50u, 20u, 7000u);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.requests[1].ok, 90u);
    EXPECT_EQ(snap.requests[1].failed, 10u);
    EXPECT_EQ(snap.request_pages[1].sum, 1600u);
    EXPECT_EQ(snap.request_latency_ns[1].sum, 200'000u);
    EXPECT_EQ(snap.scans[0].scans, 1u);
    EXPECT_EQ(snap.scans[0].unpinned, 20u);
    EXPECT_EQ(snap.bad_batch + snap.bad_kind, 0u);
}

TEST(BpfEngineVm, BatchedDmaCallRecordsAreCountedUnderTheGuestKernel) {
    if (std::getenv("VFIO_GROUP") == nullptr) GTEST_SKIP() << "not inside the QEMU VFIO guest (no VFIO_GROUP)";
    ASSERT_OK_AND_ASSIGN(auto target, EngineTarget::parse(std::to_string(::getpid())));
    target.dma = EngineDmaProbes::Yes;
    ASSERT_OK_AND_ASSIGN(auto tracer, EngineTracer::attach(target));
    ASSERT_EQ(tracer.attached_probes(), (std::vector<std::string>{"requests", "unpin_scan", "dma_calls"}));

    {
        telemetry::RequestTraceBatch batch(1);
        for (uint64_t i = 0; i < 100; ++i) {
            batch.dma().add(telemetry::DmaRecordOp::Map, i << 12, 8192, i % 4 == 0 ? -28 : 0, 3000, 0);
        }
        telemetry::DmaTraceBatch unmaps(1);
        for (uint64_t i = 0; i < 10; ++i) unmaps.add(telemetry::DmaRecordOp::Unmap, i << 12, 4096, 0, 5000, 0);
    }  // 64 flushed when full, the rest on destruction

    ASSERT_OK_AND_ASSIGN(auto snap, tracer.snapshot());
    EXPECT_EQ(snap.dma_calls[0].ok, 75u);
    EXPECT_EQ(snap.dma_calls[0].failed, 25u);
    EXPECT_EQ(snap.dma_calls[0].bytes, 100 * 8192u);
    EXPECT_EQ(snap.dma_latency_ns[0].sum, 300'000u);
    EXPECT_EQ(snap.dma_calls[1].ok, 10u);
    EXPECT_EQ(snap.dma_calls[1].bytes, 10 * 4096u);
    EXPECT_EQ(snap.bad_batch + snap.bad_kind, 0u);
}

}  // namespace
}  // namespace coiommu::bpf
