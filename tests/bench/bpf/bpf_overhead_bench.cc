// Added cost of the BPF programs, measured in one run:
//   - per VFIO_IOMMU_MAP_DMA ioctl on /dev/null (fails with ENOTTY after the full syscall path):
//     untraced, traced by vfio_dma (tgid filter = this process), traced but filtered out (another
//     tgid), and an unrelated ioctl (FIONREAD) while vfio_dma is attached. vfio_dma runs in
//     tracepoint mode here, whatever the kernel allows: these are the costs every ioctl on the host
//     pays for the syscall tracepoints, and fentry mode would never see an ioctl on /dev/null;
//   - the same unrelated ioctl with empty programs on those two tracepoints (syscall_floor.bpf.c):
//     the kernel's price of the hook alone, which no program logic can go below;
//   - per DMA call recorded in a DmaTraceBatch (one `dma_calls` hit per 64 records, what
//     --engine-dma attaches; the per-call dma_map probe is never attached): untraced vs traced;
//   - per served request recorded in a RequestTraceBatch (one `requests` hit per 64 records):
//     untraced vs traced by engine.
// Needs root or CAP_BPF+CAP_PERFMON; otherwise the traced cases report the reason as an error.
//
//   build/<dir>/tests/bench/bpf/bpf_overhead_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <optional>
#include <string>

#include "syscall_floor.skel.h"

#include "bpf/loader/engine_tracer.h"
#include "bpf/loader/vfio_dma_tracer.h"
#include "engine/base/log.h"
#include "engine/base/unique_fd.h"
#include "engine/telemetry/probes.h"
#include "engine/telemetry/request_trace.h"

namespace coiommu::bpf {
namespace {

UniqueFd dev_null() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

void map_ioctl_loop(benchmark::State& state, int fd) {
    vfio_iommu_type1_dma_map map{};
    map.argsz = sizeof(map);
    map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    map.vaddr = 0x7f0000000000ull;
    map.iova = 0x100000;
    map.size = 4096;
    for (auto _ : state) {
        benchmark::DoNotOptimize(::ioctl(fd, VFIO_IOMMU_MAP_DMA, &map));
    }
    state.SetItemsProcessed(state.iterations());
}

// Starts vfio_dma for `tgid` on the syscall tracepoints, or records why it could not. Not Auto:
// where fentry attaches, the ioctls below reach no VFIO handler and nothing would be traced.
std::optional<VfioDmaTracer> start_tracer(benchmark::State& state, uint32_t tgid) {
    VfioDmaOptions opts;
    opts.target_tgid = tgid;
    opts.mode = VfioDmaMode::Tracepoint;
    auto tracer = VfioDmaTracer::start(opts);
    if (!tracer) {
        state.SkipWithError(tracer.error().message().c_str());
        return std::nullopt;
    }
    return std::move(*tracer);
}

void BM_MapDmaIoctl_Untraced(benchmark::State& state) {
    auto fd = dev_null();
    map_ioctl_loop(state, fd.get());
}

void BM_MapDmaIoctl_Traced(benchmark::State& state) {
    auto tracer = start_tracer(state, static_cast<uint32_t>(::getpid()));
    if (!tracer) return;
    auto fd = dev_null();
    map_ioctl_loop(state, fd.get());
    auto snap = tracer->snapshot();
    if (snap) state.counters["traced_calls"] = static_cast<double>(snap->latency(VfioOp::VfioMap).count);
}

void BM_MapDmaIoctl_TracedOtherTgid(benchmark::State& state) {
    auto tracer = start_tracer(state, 1);  // init: this process is filtered out in sys_enter
    if (!tracer) return;
    auto fd = dev_null();
    map_ioctl_loop(state, fd.get());
}

void fionread_loop(benchmark::State& state) {
    auto fd = dev_null();
    int avail = 0;
    for (auto _ : state) benchmark::DoNotOptimize(::ioctl(fd.get(), FIONREAD, &avail));
    state.SetItemsProcessed(state.iterations());
}

void BM_OtherIoctl_Untraced(benchmark::State& state) { fionread_loop(state); }

void BM_OtherIoctl_Traced(benchmark::State& state) {
    auto tracer = start_tracer(state, static_cast<uint32_t>(::getpid()));
    if (!tracer) return;
    fionread_loop(state);
}

struct FloorSkelDeleter {
    void operator()(syscall_floor_bpf* s) const { syscall_floor_bpf__destroy(s); }
};

void BM_OtherIoctl_EmptyTracepoints(benchmark::State& state) {
    std::unique_ptr<syscall_floor_bpf, FloorSkelDeleter> skel(syscall_floor_bpf__open_and_load());
    if (!skel) {
        const int err = errno;
        state.SkipWithError(("syscall_floor: load: errno " + std::to_string(err)).c_str());
        return;
    }
    if (const int err = syscall_floor_bpf__attach(skel.get()); err != 0) {
        state.SkipWithError(("syscall_floor: attach: errno " + std::to_string(-err)).c_str());
        return;
    }
    fionread_loop(state);
}

[[gnu::noinline]] void dma_record_loop(benchmark::State& state) {
    telemetry::DmaTraceBatch batch(1);
    uint64_t i = 0;
    for (auto _ : state) {
        batch.add(telemetry::DmaRecordOp::Map, i, 4096, 0, 700, i);
        benchmark::DoNotOptimize(++i);
    }
    batch.flush();
    state.SetItemsProcessed(state.iterations());
}

void BM_DmaRecord_Untraced(benchmark::State& state) { dma_record_loop(state); }

// Attaches the engine program (with the batched DMA call program) to this process, or records why
// not.
std::optional<EngineTracer> attach_engine(benchmark::State& state) {
    auto target = EngineTarget::parse(std::to_string(::getpid()));
    if (!target) {
        state.SkipWithError(target.error().message().c_str());
        return std::nullopt;
    }
    target->dma = EngineDmaProbes::Yes;
    auto tracer = EngineTracer::attach(*target);
    if (!tracer) {
        state.SkipWithError(tracer.error().message().c_str());
        return std::nullopt;
    }
    return std::move(*tracer);
}

void BM_DmaRecord_Traced(benchmark::State& state) {
    auto tracer = attach_engine(state);
    if (!tracer) return;
    dma_record_loop(state);
    auto snap = tracer->snapshot();
    if (snap) state.counters["traced_hits"] = static_cast<double>(snap->dma_calls[0].ok);
}

[[gnu::noinline]] void record_loop(benchmark::State& state) {
    telemetry::RequestTraceBatch batch(1);
    uint64_t i = 0;
    for (auto _ : state) {
        batch.add(telemetry::RequestKind::Single, 1, 0, 700, i);
        benchmark::DoNotOptimize(++i);
    }
    batch.flush();
    state.SetItemsProcessed(state.iterations());
}

void BM_RequestRecord_Untraced(benchmark::State& state) { record_loop(state); }

void BM_RequestRecord_Traced(benchmark::State& state) {
    auto tracer = attach_engine(state);
    if (!tracer) return;
    record_loop(state);
    auto snap = tracer->snapshot();
    if (snap) state.counters["traced_requests"] = static_cast<double>(snap->requests[0].ok);
}

BENCHMARK(BM_MapDmaIoctl_Untraced);
BENCHMARK(BM_MapDmaIoctl_Traced);
BENCHMARK(BM_MapDmaIoctl_TracedOtherTgid);
BENCHMARK(BM_OtherIoctl_Untraced);
BENCHMARK(BM_OtherIoctl_Traced);
BENCHMARK(BM_OtherIoctl_EmptyTracepoints);
BENCHMARK(BM_DmaRecord_Untraced);
BENCHMARK(BM_DmaRecord_Traced);
BENCHMARK(BM_RequestRecord_Untraced);
BENCHMARK(BM_RequestRecord_Traced);

}  // namespace
}  // namespace coiommu::bpf

int main(int argc, char** argv) {
    coiommu::log::set_level(coiommu::log::Level::Error);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
