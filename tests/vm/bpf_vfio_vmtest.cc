// The vfio_dma BPF program against real VFIO: runs inside the QEMU guest of
// scripts/vfio-vm-test.sh (Debian 6.1 kernel with BTF, emulated VT-d, QEMU `edu` bound to
// vfio-pci; VFIO_GROUP in the environment). Outside that guest every case skips.
//
// The host integration tests (tests/integration/bpf/vfio_dma_test.cc) can only issue the DMA
// ioctls on /dev/null (ENOTTY), and only in tracepoint mode (the host refuses fentry). Here they
// hit a real type1v2 container, so the histograms hold real kernel VFIO map/unmap latencies and
// the result classes come from the real kernel; every case runs in both modes: fentry/fexit on
// vfio_iommu_type1_ioctl (this kernel allows tracing programs and the module has BTF) and the
// syscall tracepoints. In fentry mode the tracer must start in fentry mode: no fallback here.
//
// Inside the guest BPF must work: a tracer that cannot start FAILS the case with libbpf's reason
// (the harness rejects skips). Latencies are TCG numbers: functional, not performance
// (TCG inflates kernel code ~10x: engine/README.md, "Real VFIO in a QEMU guest").
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf/loader/vfio_dma_tracer.h"
#include "engine/base/unique_fd.h"
#include "engine/dma/vfio_backend.h"
#include "engine/guest/guest_memory.h"
#include "tests/testing/expect.h"

namespace coiommu::bpf {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dma::MapOutcome;
using dma::Prot;
using dma::VfioBackend;

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMemBytes = 24 * kMiB;  // room for the 16 MiB map at offset 1 MiB
// IOVAs at 4 GiB: above the 32-bit MSI window (0xfee00000 is reserved) and inside VT-d's 39 bits.
constexpr uint64_t kIovaBase = uint64_t{1} << 32;
constexpr uint64_t kBigIovaOffset = 64 * kMiB;  // clear of the small mappings
// A real VFIO map pins pages and writes IOMMU page tables: microseconds even on bare metal, more
// under TCG. A mean below this means the program measured something else (or in the wrong unit).
constexpr uint64_t kMinPlausibleNs = 500;
constexpr uint64_t kMaxPlausibleNs = 1'000'000'000;

Iova iova_at(uint64_t delta) { return Iova{kIovaBase + delta}; }

void report(const std::string& line) {
    std::printf("RESULT %s\n", line.c_str());
    std::fflush(stdout);
}

// One line: count, mean, the slot holding the median, then "slotK(lo,hi]ns=N" per non-empty slot.
std::string describe(const Log2Hist& h) {
    std::string out;
    uint64_t seen = 0;
    int median_slot = -1;
    for (size_t k = 0; k < kHistSlots; ++k) {
        if (h.slots[k] == 0) continue;
        seen += h.slots[k];
        if (median_slot < 0 && 2 * seen >= h.total()) median_slot = static_cast<int>(k);
        char part[96];
        std::snprintf(part, sizeof(part), " slot%zu(%llu,%llu]ns=%llu", k,
                      static_cast<unsigned long long>(Log2Hist::lower_bound(k)),
                      static_cast<unsigned long long>(Log2Hist::upper_bound(k)),
                      static_cast<unsigned long long>(h.slots[k]));
        out += part;
    }
    char head[160];
    std::snprintf(head, sizeof(head), "count=%llu mean_ns=%.0f median_slot=%d(<=%lluns)",
                  static_cast<unsigned long long>(h.count),
                  h.count == 0 ? 0.0 : static_cast<double>(h.sum) / static_cast<double>(h.count), median_slot,
                  median_slot < 0
                      ? 0ull
                      : static_cast<unsigned long long>(Log2Hist::upper_bound(static_cast<size_t>(median_slot))));
    return head + out;
}

// Collects slow events until `want` arrived or ~5 s passed (TCG is slow).
std::vector<SlowEvent> collect_events(VfioDmaTracer& tracer, size_t want) {
    std::vector<SlowEvent> events;
    const auto deadline = Clock::now() + 5s;
    while (events.size() < want && Clock::now() < deadline) {
        auto n = tracer.poll_slow_events(50ms, [&](const SlowEvent& ev) { events.push_back(ev); });
        if (!n) {
            ADD_FAILURE() << "poll_slow_events: " << n.error().message();
            break;
        }
    }
    return events;
}

// Each case: a fresh type1v2 container on the group (a group belongs to one container at a
// time; the other vm suites open theirs per case too) over warm memfd "guest RAM". The parameter
// is the tracer's mode.
class BpfVfioVm : public ::testing::TestWithParam<VfioDmaMode> {
protected:
    void SetUp() override {
        const char* group = std::getenv("VFIO_GROUP");
        if (group == nullptr) GTEST_SKIP() << "VFIO_GROUP not set: run inside the guest of scripts/vfio-vm-test.sh";
        ASSERT_OK_AND_ASSIGN(backend_, VfioBackend::open_group(group));
        const std::array<RegionSpec, 1> ram{{{Gpa{0}, kMemBytes}}};
        ASSERT_OK_AND_ASSIGN(mem_, GuestMemory::create(ram));
        // Touch every page so map latencies are VFIO's, not first-touch faults'.
        std::memset(mem_.host_ptr(Gpa{0}, kMemBytes).value(), 1, kMemBytes);
    }

    // Starts the tracer for this process. Inside the guest BPF is required: a failure here is a
    // test failure carrying libbpf's reason, plus the prerequisites that were missing.
    std::optional<VfioDmaTracer> start_tracer(std::optional<std::chrono::nanoseconds> slow = std::nullopt) {
        VfioDmaOptions opts;
        opts.target_tgid = static_cast<uint32_t>(::getpid());
        opts.slow_threshold = slow;
        opts.mode = GetParam();
        auto tracer = VfioDmaTracer::start(opts);
        if (!tracer) {
            explain_start_failure(opts);
            ADD_FAILURE() << "BPF unavailable inside the VFIO guest: " << tracer.error().message()
                          << " [/sys/kernel/btf/vmlinux "
                          << (::access("/sys/kernel/btf/vmlinux", R_OK) == 0 ? "present" : "MISSING")
                          << ", /sys/kernel/tracing/events "
                          << (::access("/sys/kernel/tracing/events", R_OK) == 0 ? "present" : "MISSING") << "]";
            return std::nullopt;
        }
        EXPECT_EQ(tracer->mode(), GetParam()) << tracer->mode_detail();
        return std::move(*tracer);
    }

    // The loader passes libbpf's output through CLOG_DEBUG only, cut to 1 KiB a message, and the
    // verifier's reason is at the END of a long log: retry once per process with libbpf's
    // warnings (which carry the whole verifier log) going straight to stderr.
    __attribute__((format(printf, 2, 0))) static int print_libbpf_warnings(enum libbpf_print_level level,
                                                                           const char* format, va_list args) {
        if (level != LIBBPF_WARN) return 0;
        return std::vfprintf(stderr, format, args);
    }
    static void explain_start_failure(const VfioDmaOptions& opts) {
        static bool explained = false;
        if (explained) return;
        explained = true;
        const libbpf_print_fn_t saved = libbpf_set_print(print_libbpf_warnings);
        std::fprintf(stderr, "---- libbpf warnings of a second start attempt ----\n");
        (void)VfioDmaTracer::start(opts);
        std::fprintf(stderr, "---- end of libbpf warnings ----\n");
        libbpf_set_print(saved);
    }

    Hva hva(uint64_t off, uint64_t len = kPage) const { return mem_.translate(Gpa{off}, len).value(); }

    GuestMemory mem_;  // declared first: destroyed after the container that maps it
    std::unique_ptr<VfioBackend> backend_;
};

TEST_P(BpfVfioVm, RealMapsAndUnmapsAreCountedWithTheirBytesAndLatency) {
    constexpr uint64_t kMaps = 64;
    constexpr uint64_t kPagesPerUnmap = 4;  // one v2 unmap removes 4 whole 4 KiB mappings
    constexpr uint64_t kUnmaps = kMaps / kPagesPerUnmap;
    auto tracer = start_tracer();
    ASSERT_TRUE(tracer.has_value());

    uint64_t mapped = 0;
    const auto t0 = Clock::now();
    for (uint64_t i = 0; i < kMaps; ++i) {
        auto r = backend_->map(iova_at(i * kPage), hva(i * kPage), kPage, Prot::ReadWrite);
        mapped += (r && *r == MapOutcome::Mapped) ? 1 : 0;
    }
    const auto t1 = Clock::now();
    uint64_t unmapped = 0;
    for (uint64_t i = 0; i < kUnmaps; ++i) {
        unmapped += backend_->unmap(iova_at(i * kPagesPerUnmap * kPage), kPagesPerUnmap * kPage).value_or(0);
    }
    const auto t2 = Clock::now();
    ASSERT_EQ(mapped, kMaps);
    ASSERT_EQ(unmapped, kMaps * kPage);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer->snapshot());
    const Log2Hist& map_lat = snap.latency(VfioOp::VfioMap);
    const Log2Hist& unmap_lat = snap.latency(VfioOp::VfioUnmap);
    EXPECT_EQ(map_lat.count, kMaps);
    EXPECT_EQ(map_lat.total(), kMaps);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).of(ResultClass::Ok), kMaps);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).total(), kMaps);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioMap).bytes, kMaps * kPage);
    EXPECT_EQ(unmap_lat.count, kUnmaps);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).of(ResultClass::Ok), kUnmaps);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).bytes, kUnmaps * kPagesPerUnmap * kPage);
    EXPECT_EQ(snap.drops.inflight_full + snap.drops.read_fault + snap.drops.ringbuf_full, 0u);

    // Plausible: microseconds per call, and the in-kernel time fits inside the wall time of the
    // loops that issued the calls.
    const auto map_wall = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    const auto unmap_wall =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t2 - t1).count());
    ASSERT_GT(map_lat.count, 0u);
    ASSERT_GT(unmap_lat.count, 0u);
    EXPECT_GE(map_lat.sum / map_lat.count, kMinPlausibleNs);
    EXPECT_LE(map_lat.sum / map_lat.count, kMaxPlausibleNs);
    EXPECT_GE(unmap_lat.sum / unmap_lat.count, kMinPlausibleNs);
    EXPECT_LE(map_lat.sum, map_wall);
    EXPECT_LE(unmap_lat.sum, unmap_wall);
    EXPECT_GE(map_lat.sum, map_wall / 10) << "BPF saw under 10% of the wall time of the map loop";

    char line[200];
    std::snprintf(line, sizeof(line),
                  "bpf_vfio_map4k_mean_ns=%llu bpf_vfio_unmap16k_mean_ns=%llu wall_map4k_ns=%llu wall_unmap16k_ns=%llu",
                  static_cast<unsigned long long>(map_lat.sum / map_lat.count),
                  static_cast<unsigned long long>(unmap_lat.sum / unmap_lat.count),
                  static_cast<unsigned long long>(map_wall / kMaps),
                  static_cast<unsigned long long>(unmap_wall / kUnmaps));
    report(line);
    report("bpf_vfio_map4k_hist " + describe(map_lat));
    report("bpf_vfio_unmap16k_hist " + describe(unmap_lat));
}

TEST_P(BpfVfioVm, SecondMapOfTheSameIovaIsClassifiedEexist) {
    auto tracer = start_tracer();
    ASSERT_TRUE(tracer.has_value());

    ASSERT_OK_AND_ASSIGN(auto first, backend_->map(iova_at(0), hva(0), kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto second, backend_->map(iova_at(0), hva(kPage), kPage, Prot::ReadWrite));
    ASSERT_EQ(first, MapOutcome::Mapped);
    ASSERT_EQ(second, MapOutcome::AlreadyMapped);  // the kernel's EEXIST

    ASSERT_OK_AND_ASSIGN(auto snap, tracer->snapshot());
    const VfioCalls& calls = snap.calls_of(VfioOp::VfioMap);
    EXPECT_EQ(calls.of(ResultClass::Ok), 1u);
    EXPECT_EQ(calls.of(ResultClass::Eexist), 1u);
    EXPECT_EQ(calls.total(), 2u);
    EXPECT_EQ(snap.latency(VfioOp::VfioMap).count, 2u);
}

TEST_P(BpfVfioVm, LargeMapLandsInAHigherLatencySlotThanA4KiBMap) {
    constexpr uint64_t kBig = 16 * kMiB;  // pins 4096 pages: ~100x the work of one page
    auto tracer = start_tracer();
    ASSERT_TRUE(tracer.has_value());
    // The first map of a container also allocates its IOMMU page tables (~10x a warm map):
    // take it out of the comparison.
    ASSERT_OK(backend_->map(iova_at(0), hva(0), kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto warmed, tracer->snapshot());
    ASSERT_OK(backend_->map(iova_at(kPage), hva(kPage), kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto after_small, tracer->snapshot());

    ASSERT_OK_AND_ASSIGN(auto outcome, backend_->map(iova_at(kBigIovaOffset), hva(kMiB, kBig), kBig, Prot::ReadWrite));
    ASSERT_EQ(outcome, MapOutcome::Mapped);
    ASSERT_OK_AND_ASSIGN(auto after_big, tracer->snapshot());

    const auto small = after_small.delta_since(warmed);
    const auto big = after_big.delta_since(after_small);
    const Log2Hist& small_lat = small.latency(VfioOp::VfioMap);
    const Log2Hist& big_lat = big.latency(VfioOp::VfioMap);
    ASSERT_EQ(small_lat.count, 1u);
    ASSERT_EQ(big_lat.count, 1u);
    EXPECT_EQ(big.calls_of(VfioOp::VfioMap).bytes, kBig);
    EXPECT_GT(big_lat.highest_slot(), small_lat.highest_slot())
        << "4 KiB map " << small_lat.sum << " ns, 16 MiB map " << big_lat.sum << " ns";
    char line[160];
    std::snprintf(line, sizeof(line), "bpf_vfio_map4k_warm_ns=%llu bpf_vfio_map16m_ns=%llu",
                  static_cast<unsigned long long>(small_lat.sum), static_cast<unsigned long long>(big_lat.sum));
    report(line);
}

TEST_P(BpfVfioVm, SlowEventsCarryTheRealCallsIovaSizeAndReturn) {
    auto tracer = start_tracer(1ns);  // every real call takes longer than 1 ns
    ASSERT_TRUE(tracer.has_value());

    ASSERT_OK(backend_->map(iova_at(kMiB), hva(0, 2 * kPage), 2 * kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto again, backend_->map(iova_at(kMiB), hva(0), kPage, Prot::ReadWrite));
    ASSERT_EQ(again, MapOutcome::AlreadyMapped);
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(iova_at(kMiB), 2 * kPage));
    ASSERT_EQ(bytes, 2 * kPage);

    auto events = collect_events(*tracer, 3);
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].op, VfioOp::VfioMap);
    EXPECT_EQ(events[0].iova, kIovaBase + kMiB);
    EXPECT_EQ(events[0].size, 2 * kPage);
    EXPECT_EQ(events[0].ret, 0);
    EXPECT_EQ(events[0].pid, static_cast<uint32_t>(::getpid()));
    EXPECT_GE(events[0].latency_ns, kMinPlausibleNs);
    EXPECT_EQ(events[1].op, VfioOp::VfioMap);
    EXPECT_EQ(events[1].size, kPage);
    EXPECT_EQ(events[1].ret, -EEXIST);
    EXPECT_EQ(events[2].op, VfioOp::VfioUnmap);
    EXPECT_EQ(events[2].iova, kIovaBase + kMiB);
    EXPECT_EQ(events[2].size, 2 * kPage);
    EXPECT_EQ(events[2].ret, 0);
}

// fentry mode sees the container's own DMA calls and nothing else: the same command on a non-VFIO
// descriptor never reaches the type1 handler, whereas the tracepoints count it (ENOTTY: other).
TEST_P(BpfVfioVm, TheSameCommandOnANonVfioFdIsSeenOnlyByTheTracepoints) {
    auto tracer = start_tracer();
    ASSERT_TRUE(tracer.has_value());
    const UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    vfio_iommu_type1_dma_map bogus{};
    bogus.argsz = sizeof(bogus);
    bogus.size = kPage;

    ASSERT_OK(backend_->map(iova_at(0), hva(0, 3 * kPage), 3 * kPage, Prot::ReadWrite));
    ASSERT_NE(::ioctl(null_fd.get(), VFIO_IOMMU_MAP_DMA, &bogus), 0);  // ENOTTY
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(iova_at(0), 3 * kPage));
    ASSERT_EQ(bytes, 3 * kPage);

    ASSERT_OK_AND_ASSIGN(auto snap, tracer->snapshot());
    const VfioCalls& maps = snap.calls_of(VfioOp::VfioMap);
    const bool fentry = GetParam() == VfioDmaMode::Fentry;
    EXPECT_EQ(maps.of(ResultClass::Ok), 1u);
    EXPECT_EQ(maps.of(ResultClass::Other), fentry ? 0u : 1u);
    EXPECT_EQ(maps.bytes, fentry ? 3 * kPage : 4 * kPage);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).of(ResultClass::Ok), 1u);
    EXPECT_EQ(snap.calls_of(VfioOp::VfioUnmap).bytes, 3 * kPage);
    EXPECT_EQ(tracer->calls_in_flight(), 0u);
    EXPECT_EQ(snap.inflight_entries, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, BpfVfioVm, ::testing::Values(VfioDmaMode::Fentry, VfioDmaMode::Tracepoint),
                         [](const ::testing::TestParamInfo<VfioDmaMode>& p) {
                             return std::string(mode_name(p.param));
                         });

// What coiommud and coiommu-trace get by default on this kernel: fentry on the type1 handler
// (6.1 has no iommufd), reported as such by the mode, the detail line and the program list.
TEST(BpfVfioVmAuto, AutoModePicksFentryOnTheGuestKernel) {
    if (std::getenv("VFIO_GROUP") == nullptr) GTEST_SKIP() << "VFIO_GROUP not set: run inside the QEMU guest";
    VfioDmaOptions opts;
    opts.target_tgid = static_cast<uint32_t>(::getpid());

    ASSERT_OK_AND_ASSIGN(auto tracer, VfioDmaTracer::start(opts));

    EXPECT_EQ(tracer.mode(), VfioDmaMode::Fentry) << tracer.mode_detail();
    EXPECT_EQ(tracer.mode_detail().rfind("fentry on vfio_iommu_type1_ioctl", 0), 0u) << tracer.mode_detail();
    report("bpf_vfio_dma_mode " + tracer.mode_detail());
    ASSERT_OK_AND_ASSIGN(auto programs, tracer.programs());
    std::vector<std::string> names;
    for (const auto& p : programs) {
        names.push_back(p.program);
        EXPECT_EQ(p.attach, "fentry") << p.program;
        EXPECT_TRUE(p.attached) << p.program;
    }
    EXPECT_NE(std::find(names.begin(), names.end(), "vfio_t1_enter"), names.end());
    EXPECT_NE(std::find(names.begin(), names.end(), "vfio_t1_exit"), names.end());
}

}  // namespace
}  // namespace coiommu::bpf
