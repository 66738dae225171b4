// The kernel-side view of the engine's DMA calls, inside the QEMU guest of scripts/vfio-vm-test.sh
// (emulated VT-d, edu bound to vfio-pci, VFIO_GROUP in the environment; outside it every case
// skips). Each layer counts the same map and unmap work on the real type1 container:
//   engine    the engine's own statistics (dma_calls / dma_bytes of the pin path and unpinner)
//   backend   VfioBackend's counters (one per MAP_DMA / UNMAP_DMA ioctl it issued)
//   vfio_dma  the ioctl view (fentry on vfio_iommu_type1_ioctl, or the syscall tracepoints:
//             every case runs in both modes)
//   vk        fentry/fexit inside type1 (VfioKernTracer), on whichever functions the kernel did
//             not inline: vfio_dma_do_map/_do_unmap (one per ioctl), vfio_pin_pages_remote (one
//             per physically contiguous run a map pins), vfio_remove_dma (one per mapping torn
//             down, by an unmap or at close)
//   iommu     the IOMMU core's iommu:map / iommu:unmap tracepoints (IommuCoreTracer), one per
//             iommu_map()/iommu_unmap() call
// They agree on the bytes of every map and of every explicit unmap; the per-ioctl layers also on
// the calls. type1 maps each contiguous run with one iommu_map(), so vk's pin runs and iommu:map
// agree call for call. When a container is closed with mappings still live, type1 unmaps them in
// the closing task without any ioctl: vfio_remove_dma and iommu:unmap see all of those bytes, the
// ioctl layers (and do_unmap) nothing.
//
// The engine is the fast pin path (serve_request + ExtentUnpinner) on this thread, as in
// p7_vmtest.cc. Each case prints RESULT lines with every layer's numbers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bpf/loader/iommu_core_tracer.h"
#include "bpf/loader/vfio_dma_tracer.h"
#include "bpf/loader/vfio_kern_tracer.h"
#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/dma/vfio_backend.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/unpinner.h"
#include "tests/testing/expect.h"
#include "tests/vm/pin_path.h"

namespace coiommu::workers {
namespace {

using bpf::IommuCoreTracer;
using bpf::IommuOp;
using bpf::KernHook;
using bpf::VfioDmaMode;
using bpf::VfioDmaTracer;
using bpf::VfioKernTracer;
using bpf::VfioOp;
using coiommu::testing::PinPath;
using coiommu::testing::PinPathLayout;
using telemetry::DmaOp;

constexpr uint64_t kRamBytes = uint64_t{16} << 20;  // 4096 gfns from GPA 0 (IOVA = GPA)
constexpr uint64_t kBatchGfn = 0x800;               // the PinPageInfo buffer

// The workload, in three request shapes:
//   4 batch requests of 64 contiguous pages, each coalesced into one DMA call   4 calls, 256 pages
//   1 batch request of 16 pages two gfns apart: nothing to coalesce            16 calls,  16 pages
//   8 single-page requests                                                       8 calls,   8 pages
constexpr uint64_t kRuns = 4, kRunPages = 64, kRunFirst = 0x100, kRunStride = 0x80;
constexpr uint64_t kSparsePages = 16, kSparseFirst = 0x400;
constexpr uint64_t kSingles = 8, kSingleFirst = 0x500, kSingleStride = 3;
constexpr uint64_t kDmaCalls = kRuns + kSparsePages + kSingles;           // 28
constexpr uint64_t kPages = kRuns * kRunPages + kSparsePages + kSingles;  // 280
constexpr uint64_t kBytes = kPages * kPageSize;                           // 1120 KiB

std::vector<Gfn> workload_gfns() {
    std::vector<Gfn> out;
    for (uint64_t r = 0; r < kRuns; ++r) {
        for (uint64_t i = 0; i < kRunPages; ++i) out.push_back(Gfn{kRunFirst + r * kRunStride + i});
    }
    for (uint64_t i = 0; i < kSparsePages; ++i) out.push_back(Gfn{kSparseFirst + 2 * i});
    for (uint64_t i = 0; i < kSingles; ++i) out.push_back(Gfn{kSingleFirst + kSingleStride * i});
    return out;
}

// The served pages lie in [kMarkFirst, kMarkEnd): the DTT has their leaf tables.
constexpr uint64_t kMarkFirst = kRunFirst, kMarkEnd = kSingleFirst + kSingleStride * kSingles;
const PinPathLayout kLayout{kRamBytes, kMarkFirst, kMarkEnd - kMarkFirst, kBatchGfn};

// The whole workload above through the engine's pin path; false when a request left a page unpinned.
bool pin_workload(PinPath& path) {
    const std::vector<Gfn> all = workload_gfns();
    const std::span<const Gfn> gfns(all);
    bool ok = true;
    for (uint64_t r = 0; r < kRuns; ++r) ok &= path.batch(gfns.subspan(r * kRunPages, kRunPages));
    ok &= path.batch(gfns.subspan(kRuns * kRunPages, kSparsePages));
    for (const Gfn g : gfns.subspan(kRuns * kRunPages + kSparsePages)) ok &= path.single(g);
    return ok;
}

struct Count {
    uint64_t calls = 0;
    uint64_t bytes = 0;
    Count operator-(const Count& o) const { return {calls - o.calls, bytes - o.bytes}; }
};

// One op (map or unmap) as each layer counts it. vk_call is vfio_dma_do_map/_do_unmap,
// vk_inner vfio_pin_pages_remote (map) or vfio_remove_dma (unmap); both 0 where not hooked.
struct OpView {
    Count engine, backend, vfio_dma, vk_call, vk_inner, iommu;
    uint64_t iommu_short = 0;  // iommu unmaps that removed less than asked
    OpView operator-(const OpView& o) const {
        return {engine - o.engine,     backend - o.backend, vfio_dma - o.vfio_dma,      vk_call - o.vk_call,
                vk_inner - o.vk_inner, iommu - o.iommu,     iommu_short - o.iommu_short};
    }
};

struct Views {
    OpView map, unmap;
    Views operator-(const Views& o) const { return {map - o.map, unmap - o.unmap}; }
};

void report(const std::string& line) {
    std::printf("RESULT %s\n", line.c_str());
    std::fflush(stdout);
}

class BpfKernelViewVm : public ::testing::TestWithParam<VfioDmaMode> {
protected:
    void SetUp() override {
        group_ = std::getenv("VFIO_GROUP");
        if (group_ == nullptr) GTEST_SKIP() << "VFIO_GROUP not set: run inside the guest of scripts/vfio-vm-test.sh";
    }

    void open_container() {
        ASSERT_OK_AND_ASSIGN(backend_, dma::VfioBackend::open_group(group_));
        ASSERT_OK_AND_ASSIGN(path_, PinPath::create(*backend_, kLayout));
    }
    // Destroys the container without an unmap: the group is detached, then the container closed.
    // The backend's last counters are kept for read_views().
    void close_container() {
        last_backend_ = backend_view();
        backend_.reset();
    }

    // vfio_dma (this process, the case's mode), vk, the IOMMU core: all three must start here.
    void start_tracers() {
        bpf::VfioDmaOptions opts;
        opts.target_tgid = static_cast<uint32_t>(::getpid());
        opts.mode = GetParam();
        ASSERT_OK_AND_ASSIGN(auto vfio, VfioDmaTracer::start(opts));
        ASSERT_EQ(vfio.mode(), GetParam()) << vfio.mode_detail();
        vfio_.emplace(std::move(vfio));
        ASSERT_OK_AND_ASSIGN(auto kern, VfioKernTracer::start());
        kern_.emplace(std::move(kern));
        // Both kernels the suite runs on inline do_map/do_unmap but keep the inner two.
        ASSERT_TRUE(kern_->hooked(KernHook::PinPagesRemote)) << kern_->detail();
        ASSERT_TRUE(kern_->hooked(KernHook::RemoveDma)) << kern_->detail();
        ASSERT_OK_AND_ASSIGN(auto core, IommuCoreTracer::start());
        core_.emplace(std::move(core));
        static bool said = false;
        if (!std::exchange(said, true)) report("kernel_view vk " + kern_->detail());
    }
    [[nodiscard]] bool hooked(KernHook h) const { return kern_->hooked(h); }

    [[nodiscard]] std::pair<Count, Count> backend_view() const {
        if (!backend_) return last_backend_;
        const dma::BackendCounters& c = backend_->counters();
        return {{c.map_calls.load(), c.bytes_mapped.load()}, {c.unmap_calls.load(), c.bytes_unmapped.load()}};
    }

    // Every layer's totals now; nullopt (and a failure) when a map cannot be read.
    [[nodiscard]] std::optional<Views> read_views() const {
        auto vfio = vfio_->snapshot();
        auto kern = kern_->snapshot();
        auto core = core_->snapshot();
        if (!vfio || !kern || !core) {
            ADD_FAILURE() << "snapshot: "
                          << (!vfio ? vfio.error().message()
                                    : (!kern ? kern.error().message() : core.error().message()));
            return std::nullopt;
        }
        Views v;
        const telemetry::ShardTotals t = path_->totals();
        v.map.engine = {t.dma_calls[DmaOp::Map], t.dma_bytes[DmaOp::Map]};
        v.unmap.engine = {t.dma_calls[DmaOp::Unmap], t.dma_bytes[DmaOp::Unmap]};
        std::tie(v.map.backend, v.unmap.backend) = backend_view();
        const auto& vm = vfio->calls_of(VfioOp::VfioMap);
        const auto& vu = vfio->calls_of(VfioOp::VfioUnmap);
        v.map.vfio_dma = {vm.total(), vm.bytes};
        v.unmap.vfio_dma = {vu.total(), vu.bytes};
        auto k = [&](KernHook h) { return Count{kern->calls_of(h).total(), kern->calls_of(h).bytes}; };
        v.map.vk_call = k(KernHook::DoMap);
        v.unmap.vk_call = k(KernHook::DoUnmap);
        v.map.vk_inner = k(KernHook::PinPagesRemote);
        v.unmap.vk_inner = k(KernHook::RemoveDma);
        const auto& im = core->calls_of(IommuOp::Map);
        const auto& iu = core->calls_of(IommuOp::Unmap);
        v.map.iommu = {im.calls, im.bytes};
        v.unmap.iommu = {iu.calls, iu.bytes};
        v.unmap.iommu_short = iu.short_calls;
        return v;
    }

    // RESULT kernel_view <phase> <op> mode=... engine=calls/bytes ... iommu=calls/bytes
    void report_op(const std::string& phase, DmaOp op, const OpView& o) const {
        const bool map = op == DmaOp::Map;
        auto c = [](const Count& x) { return fmt::format("{}/{}", x.calls, x.bytes); };
        const KernHook call = map ? KernHook::DoMap : KernHook::DoUnmap;
        const KernHook inner = map ? KernHook::PinPagesRemote : KernHook::RemoveDma;
        report(
            fmt::format("kernel_view {} {} mode={} engine={} backend={} vfio_dma={} vk.{}={} vk.{}={} iommu={}{} "
                        "(calls/bytes)",
                        phase, map ? "map" : "unmap", bpf::mode_name(GetParam()), c(o.engine), c(o.backend),
                        c(o.vfio_dma), bpf::kern_hook_name(call), hooked(call) ? c(o.vk_call) : "n/a",
                        bpf::kern_hook_name(inner), hooked(inner) ? c(o.vk_inner) : "n/a", c(o.iommu),
                        o.iommu_short != 0 ? fmt::format(" iommu_short={}", o.iommu_short) : ""));
    }

    // Engine-issued work: the per-ioctl layers agree on calls and bytes, the inner ones on bytes.
    void expect_layers_agree(DmaOp op, const OpView& o) const {
        const bool map = op == DmaOp::Map;
        EXPECT_EQ(o.backend.calls, o.engine.calls);
        EXPECT_EQ(o.backend.bytes, o.engine.bytes);
        EXPECT_EQ(o.vfio_dma.calls, o.engine.calls);
        EXPECT_EQ(o.vfio_dma.bytes, o.engine.bytes);
        if (hooked(map ? KernHook::DoMap : KernHook::DoUnmap)) {
            EXPECT_EQ(o.vk_call.calls, o.engine.calls);
            EXPECT_EQ(o.vk_call.bytes, o.engine.bytes);
        }
        EXPECT_EQ(o.vk_inner.bytes, o.engine.bytes);
        if (map) {
            EXPECT_GE(o.vk_inner.calls, o.engine.calls) << "at least one pinned run per map";
            EXPECT_EQ(o.iommu.calls, o.vk_inner.calls) << "one iommu_map() per pinned run (one domain)";
        } else {
            EXPECT_EQ(o.vk_inner.calls, o.engine.calls) << "one mapping removed per unmap of an extent";
        }
        EXPECT_EQ(o.iommu.bytes, o.engine.bytes);
        EXPECT_GE(o.iommu.calls, o.engine.calls);
    }

    const char* group_ = nullptr;
    std::optional<VfioDmaTracer> vfio_;
    std::optional<VfioKernTracer> kern_;
    std::optional<IommuCoreTracer> core_;
    std::pair<Count, Count> last_backend_;
    std::unique_ptr<dma::VfioBackend> backend_;
    std::unique_ptr<PinPath> path_;  // declared last: destroyed first, never used after close
};

TEST_P(BpfKernelViewVm, EveryLayerCountsTheEnginesMapsAndTheirBytes) {
    ASSERT_NO_FATAL_FAILURE(open_container());
    ASSERT_NO_FATAL_FAILURE(start_tracers());
    const std::optional<Views> before = read_views();
    ASSERT_TRUE(before.has_value());

    ASSERT_TRUE(pin_workload(*path_));

    const std::optional<Views> after = read_views();
    ASSERT_TRUE(after.has_value());
    const Views d = *after - *before;
    report_op("pin", DmaOp::Map, d.map);
    EXPECT_EQ(d.map.engine.calls, kDmaCalls);
    EXPECT_EQ(d.map.engine.bytes, kBytes);
    expect_layers_agree(DmaOp::Map, d.map);
    EXPECT_EQ(d.unmap.iommu.calls, 0u) << "a successful MAP_DMA unmaps nothing";
    EXPECT_EQ(d.unmap.vk_inner.calls, 0u);
    EXPECT_EQ(d.unmap.vfio_dma.calls, 0u);
}

TEST_P(BpfKernelViewVm, ClosingTheContainerUnmapsWhatNoIoctlLayerSees) {
    ASSERT_NO_FATAL_FAILURE(open_container());
    ASSERT_NO_FATAL_FAILURE(start_tracers());
    ASSERT_TRUE(pin_workload(*path_));
    const std::optional<Views> pinned = read_views();
    ASSERT_TRUE(pinned.has_value());

    close_container();  // mappings live: type1 unmaps them when the group detaches

    const std::optional<Views> closed = read_views();
    ASSERT_TRUE(closed.has_value());
    const Views d = *closed - *pinned;
    report_op("close-with-mappings", DmaOp::Unmap, d.unmap);
    report(
        fmt::format("kernel_view close-with-mappings {} mappings of {} pages: vfio_remove_dma calls={} "
                    "iommu_unmap calls={} (pinned as {} runs)",
                    kDmaCalls, kPages, d.unmap.vk_inner.calls, d.unmap.iommu.calls, pinned->map.vk_inner.calls));
    // The type1-internal and IOMMU-core layers see every mapping and byte go.
    EXPECT_EQ(d.unmap.vk_inner.calls, kDmaCalls) << "one vfio_remove_dma per live mapping";
    EXPECT_EQ(d.unmap.vk_inner.bytes, kBytes);
    EXPECT_EQ(d.unmap.iommu.bytes, kBytes) << "every mapped byte is unmapped at close";
    EXPECT_EQ(d.unmap.iommu_short, 0u);
    EXPECT_EQ(d.unmap.iommu.calls, pinned->map.vk_inner.calls) << "type1 unmaps by contiguous run, as it pinned";
    // None of it passes through an ioctl or the engine.
    EXPECT_EQ(d.unmap.engine.calls, 0u);
    EXPECT_EQ(d.unmap.backend.calls, 0u);
    EXPECT_EQ(d.unmap.vfio_dma.calls, 0u);
    EXPECT_EQ(d.unmap.vk_call.calls, 0u);
    EXPECT_EQ(d.map.iommu.calls, 0u);
}

TEST_P(BpfKernelViewVm, ExplicitUnmapsAreSeenByEveryLayerAndCloseFindsNothingLeft) {
    ASSERT_NO_FATAL_FAILURE(open_container());
    ASSERT_NO_FATAL_FAILURE(start_tracers());
    ASSERT_TRUE(pin_workload(*path_));
    const std::optional<Views> pinned = read_views();
    ASSERT_TRUE(pinned.has_value());

    ASSERT_EQ(path_->reset(), kPages);

    const std::optional<Views> unmapped = read_views();
    ASSERT_TRUE(unmapped.has_value());
    const Views d = *unmapped - *pinned;
    report_op("explicit", DmaOp::Unmap, d.unmap);
    report(fmt::format("kernel_view explicit {} mappings of {} pages: iommu_unmap calls={} (pinned as {} runs)",
                       kDmaCalls, kPages, d.unmap.iommu.calls, pinned->map.vk_inner.calls));
    EXPECT_EQ(d.unmap.engine.calls, kDmaCalls) << "one call per extent";
    EXPECT_EQ(d.unmap.engine.bytes, kBytes);
    expect_layers_agree(DmaOp::Unmap, d.unmap);
    EXPECT_EQ(d.unmap.iommu.calls, pinned->map.vk_inner.calls) << "type1 unmaps by contiguous run, as it pinned";
    EXPECT_EQ(d.unmap.iommu_short, 0u);

    close_container();

    const std::optional<Views> closed = read_views();
    ASSERT_TRUE(closed.has_value());
    const Views c = *closed - *unmapped;
    report_op("close-empty", DmaOp::Unmap, c.unmap);
    EXPECT_EQ(c.unmap.vk_inner.calls, 0u) << "nothing was left to unmap";
    EXPECT_EQ(c.unmap.iommu.bytes, 0u);
    EXPECT_EQ(c.map.iommu.calls, 0u);
}

// Attaching a group is no DMA ioctl either: whatever the kernel maps on its own while doing so it
// unmaps again (6.1's type1 probes the new domain's superpage behaviour: one two-page iommu_map()
// and two one-page iommu_unmap()s).
TEST_P(BpfKernelViewVm, AttachingTheGroupLeavesNothingMappedAndNoIoctlSeesIt) {
    ASSERT_NO_FATAL_FAILURE(start_tracers());
    // No path yet: read the IOMMU core and the ioctl view directly.
    ASSERT_OK_AND_ASSIGN(const auto core0, core_->snapshot());
    ASSERT_OK_AND_ASSIGN(const auto vfio0, vfio_->snapshot());
    ASSERT_OK_AND_ASSIGN(const auto kern0, kern_->snapshot());

    ASSERT_OK_AND_ASSIGN(backend_, dma::VfioBackend::open_group(group_));

    ASSERT_OK_AND_ASSIGN(const auto core1, core_->snapshot());
    ASSERT_OK_AND_ASSIGN(const auto vfio1, vfio_->snapshot());
    ASSERT_OK_AND_ASSIGN(const auto kern1, kern_->snapshot());
    const auto core = core1.delta_since(core0);
    const auto vfio = vfio1.delta_since(vfio0);
    const auto kern = kern1.delta_since(kern0);
    const auto& m = core.calls_of(IommuOp::Map);
    const auto& u = core.calls_of(IommuOp::Unmap);
    report(fmt::format("kernel_view attach mode={} iommu_map={}/{} iommu_unmap={}/{} (calls/bytes) vfio_dma_calls={}",
                       bpf::mode_name(GetParam()), m.calls, m.bytes, u.calls, u.bytes,
                       vfio.calls_of(VfioOp::VfioMap).total() + vfio.calls_of(VfioOp::VfioUnmap).total()));
    EXPECT_EQ(u.bytes, m.bytes) << "the attach left a mapping behind";
    EXPECT_EQ(vfio.calls_of(VfioOp::VfioMap).total(), 0u);
    EXPECT_EQ(vfio.calls_of(VfioOp::VfioUnmap).total(), 0u);
    EXPECT_EQ(backend_->counters().map_calls.load(), 0u);
    EXPECT_EQ(kern.calls_of(KernHook::PinPagesRemote).total(), 0u) << "no user memory is pinned";
    EXPECT_EQ(kern.calls_of(KernHook::RemoveDma).total(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, BpfKernelViewVm, ::testing::Values(VfioDmaMode::Fentry, VfioDmaMode::Tracepoint),
                         [](const ::testing::TestParamInfo<VfioDmaMode>& p) {
                             return std::string(bpf::mode_name(p.param));
                         });

}  // namespace
}  // namespace coiommu::workers
