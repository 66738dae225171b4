// coiommu-engine-load-exporter: the real engine under a guest load, exported, for the live
// Prometheus test of the dashboards (engine_live_test.sh) and for trying the dashboards by hand.
//
//   - workers::Engine (variant fast, FakeBackend with the kernel latency model, LRU unpinning every
//     100 ms) behind the CoiommuDevice, driven by GuestDriver vCPU threads mapping and unmapping
//     buffers, and a balloon request every 300 ms (tests/unit/exporter/engine_vm.h, Mixed load);
//   - when this process may load BPF (and unless --no-bpf): bpf::Tracing with the vfio_dma
//     program on this process in tracepoint mode, the engine USDT program on this binary and pid,
//     and run-time stats; a thread takes the slow events off the ring buffer;
//   - a side thread issuing VFIO_IOMMU_MAP_DMA/UNMAP_DMA and iommufd IOAS_MAP/UNMAP ioctls on
//     /dev/null: they fail with ENOTTY, but the syscall tracepoints fire, so the kernel-view panels
//     have data on a host without VFIO (the engine itself uses the fake backend, no ioctls). Hence
//     Tracepoint mode, not Auto: where fentry attaches (tracing programs allowed, VFIO loaded) it
//     hooks only the VFIO and iommufd ioctl handlers, which an ioctl on /dev/null never reaches,
//     and the kernel-view panels would stay empty;
//   - EngineCollector (the one VM named "load-vm") + ProcessCollector (+ BpfCollector) at --address,
//     and a ServerCollector reporting what coiommud would for this one VM: one session accepted,
//     nothing resumed, ended, failed or refused (so the daemon panels and alerts have their series).
//
// Prints "listening HOST:PORT" on stdout once serving, then "bpf attached" or "bpf off: <why>",
// and runs until SIGINT/SIGTERM or --duration.
//
// usage: coiommu-engine-load-exporter [--address 127.0.0.1:0] [--duration SECONDS] [--no-bpf]
//                                     [--slow-ns N] [--ioctl-hz N] [--vcpus N]
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "engine/base/log.h"
#include "engine/base/unique_fd.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#include "exporter/server_collector.h"
#include "tests/unit/exporter/engine_vm.h"
#ifdef COIOMMU_ENGINE_LOAD_BPF
#include "bpf/loader/privileges.h"
#include "bpf/loader/tracing.h"
#include "bpf/metrics/bpf_collector.h"
#include "bpf/metrics/bpf_tracing_source.h"
#endif

namespace {

using namespace coiommu;
using namespace std::chrono_literals;

constexpr std::string_view kVmName = "load-vm";  // the `vm` label of the engine's series

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Args {
    std::string address = "127.0.0.1:0";
    long duration_s = 0;  // 0: until a signal
    bool bpf = true;
    // Every traced ioctl on /dev/null takes well under a microsecond: a 1 ns threshold makes each
    // one a slow event, so the slow-event panels have data (a production threshold is ~1 ms).
    long slow_ns = 1;
    long ioctl_hz = 200;
    uint32_t vcpus = 2;
};

int usage() {
    std::fprintf(stderr,
                 "usage: coiommu-engine-load-exporter [--address HOST:PORT] [--duration SECONDS] [--no-bpf]\n"
                 "                                    [--slow-ns N] [--ioctl-hz N] [--vcpus N]\n");
    return 2;
}

bool parse(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--no-bpf") {
            a.bpf = false;
            continue;
        }
        if (i + 1 >= argc) return false;
        const char* v = argv[++i];
        if (arg == "--address") {
            a.address = v;
        } else if (arg == "--duration") {
            a.duration_s = std::strtol(v, nullptr, 10);
        } else if (arg == "--slow-ns") {
            a.slow_ns = std::strtol(v, nullptr, 10);
        } else if (arg == "--ioctl-hz") {
            a.ioctl_hz = std::strtol(v, nullptr, 10);
        } else if (arg == "--vcpus") {
            a.vcpus = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
        } else {
            return false;
        }
    }
    return a.ioctl_hz > 0 && a.slow_ns >= 0;
}

// iommufd uAPI structs (linux/iommufd.h is not in every linux-libc-dev).
struct IoasMap {
    uint32_t size, flags, ioas_id, reserved;
    uint64_t user_va, length, iova;
};
struct IoasUnmap {
    uint32_t size, ioas_id;
    uint64_t iova, length;
};
constexpr unsigned long kIoasMap = 0x3b85;    // IOMMU_IOAS_MAP: _IO(';', 0x85)
constexpr unsigned long kIoasUnmap = 0x3b86;  // IOMMU_IOAS_UNMAP

// VFIO/iommufd map and unmap ioctls on a non-VFIO fd, `hz` rounds per second (see the top comment).
void ioctl_loop(long hz, const std::atomic<bool>& stop) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!fd) return;
    const auto period = std::chrono::nanoseconds(1'000'000'000 / hz);
    auto next = std::chrono::steady_clock::now();
    uint64_t i = 0;
    while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t iova = 0x100000 + (i % 256) * 0x1000;
        const uint64_t size = 0x1000 << (i % 4);
        vfio_iommu_type1_dma_map map{};
        map.argsz = sizeof(map);
        map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
        map.vaddr = 0x7f0000000000ull;
        map.iova = iova;
        map.size = size;
        (void)::ioctl(fd.get(), VFIO_IOMMU_MAP_DMA, &map);  // ENOTTY: /dev/null is not a container
        vfio_iommu_type1_dma_unmap unmap{};
        unmap.argsz = sizeof(unmap);
        unmap.iova = iova;
        unmap.size = size;
        (void)::ioctl(fd.get(), VFIO_IOMMU_UNMAP_DMA, &unmap);
        IoasMap imap{sizeof(IoasMap), 7, 1, 0, 0x7f0000000000ull, size, iova};
        (void)::ioctl(fd.get(), kIoasMap, &imap);
        IoasUnmap iunmap{sizeof(IoasUnmap), 1, iova, size};
        (void)::ioctl(fd.get(), kIoasUnmap, &iunmap);
        ++i;
        next += period;
        std::this_thread::sleep_until(next);
    }
}

}  // namespace

int main(int argc, char** argv) {
    Args args;
    if (!parse(argc, argv, args)) return usage();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);

    exporter::testing::EngineVmOptions vm_opts;
    vm_opts.load_vcpus = args.vcpus;
    vm_opts.hold = 50us;  // a guest holds its DMA buffers a little; keeps two cores from saturating
    auto vm = exporter::testing::EngineVm::create(vm_opts);
    if (!vm) {
        std::fprintf(stderr, "engine vm: %s\n", vm.error().message().c_str());
        return 1;
    }
    auto set = std::make_shared<exporter::CollectorSet>();
    auto added = set->add("engine", std::make_shared<exporter::EngineCollector>(
                                        [&vm] { return (*vm)->stats(); }, (*vm)->engine_info(), std::string(kVmName)));
    if (added) added = set->add("process", std::make_shared<exporter::ProcessCollector>());
    if (added) {
        added = set->add("server", std::make_shared<exporter::ServerCollector>([] {
                             exporter::ServerStats s;
                             s.accepted = 1;
                             return s;
                         }));
    }
    if (!added) {
        std::fprintf(stderr, "%s\n", added.error().message().c_str());
        return 1;
    }

    std::atomic<bool> stop_threads{false};
    std::string bpf_status = "off: built without the BPF loader";
#ifdef COIOMMU_ENGINE_LOAD_BPF
    std::optional<bpf::Tracing> tracing;
    exporter::SlowEventCounter slow_events;
    std::thread slow_poller;
    bpf::TracingOptions topts;
    if (!args.bpf) {
        bpf_status = "off: --no-bpf";
    } else if (auto priv = bpf::check_bpf_privileges(); !priv) {
        bpf_status = "off: " + priv.error().message();
    } else {
        topts.vfio_dma.target_tgid = static_cast<uint32_t>(::getpid());
        topts.vfio_dma.slow_threshold = std::chrono::nanoseconds(args.slow_ns);
        topts.vfio_dma.mode = bpf::VfioDmaMode::Tracepoint;  // the /dev/null ioctls (top comment)
        topts.run_time = bpf::CollectRunTime::Yes;
        auto target = bpf::EngineTarget::parse(std::to_string(::getpid()));
        if (target) topts.engine = *target;
        auto started = bpf::Tracing::start(topts);
        if (!started) {
            bpf_status = "off: " + started.error().message();
        } else {
            tracing.emplace(std::move(*started));
            added = set->add("bpf", std::make_shared<exporter::BpfCollector>(exporter::tracing_source(
                                        *tracing, &slow_events, topts.vfio_dma.slow_threshold)));
            if (!added) {
                std::fprintf(stderr, "%s\n", added.error().message().c_str());
                return 1;
            }
            bpf_status = "attached";
            slow_poller = std::thread([&] {
                const auto count = [&slow_events](const bpf::SlowEvent&) { slow_events.add(); };
                while (!stop_threads.load(std::memory_order_relaxed)) {
                    (void)tracing->vfio_dma().poll_slow_events(100ms, count);
                }
            });
        }
    }
#endif

    std::optional<exporter::Exposer> exposer;
    if (auto started = exporter::Exposer::start({.address = args.address}); started) {
        exposer.emplace(std::move(*started));
    } else {
        std::fprintf(stderr, "%s\n", started.error().message().c_str());
        return 1;
    }
    if (auto st = exposer->register_collectable(set); !st) {
        std::fprintf(stderr, "%s\n", st.error().message().c_str());
        return 1;
    }
    (*vm)->start();
    std::thread ioctls([&] { ioctl_loop(args.ioctl_hz, stop_threads); });
    std::printf("listening %s\nbpf %s\n", exposer->address().c_str(), bpf_status.c_str());
    std::fflush(stdout);

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.duration_s);
    while (g_stop == 0 && (args.duration_s == 0 || std::chrono::steady_clock::now() < deadline)) {
        std::this_thread::sleep_for(100ms);
    }

    // Stop serving first (the collectors read the vm and the tracer), then the load, then BPF.
    exposer.reset();
    stop_threads.store(true, std::memory_order_relaxed);
    ioctls.join();
#ifdef COIOMMU_ENGINE_LOAD_BPF
    if (slow_poller.joinable()) slow_poller.join();
#endif
    (*vm)->stop();
    std::printf("stopped: %lu guest maps, %lu failures\n", static_cast<unsigned long>((*vm)->guest_maps()),
                static_cast<unsigned long>((*vm)->guest_map_failures()));
    return 0;
}
