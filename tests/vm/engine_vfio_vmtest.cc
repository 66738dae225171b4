// The engine on a real IOMMU, end to end, inside the QEMU guest of scripts/vfio-vm-test.sh: a real
// coiommud (copied in with --with) serves a session; this test is the VMM and the guest. As a VMM
// it opens the edu device's VFIO group, sets up the container (type1v2) and hands a duplicate of
// the container fd to the daemon over the protocol (SetBackend vfio); as the guest it runs the
// CoIOMMU driver protocol (the load generator's coiommu strategy over a SocketLink). The engine
// pins on that real container, and the edu device's DMA is the oracle: a pattern DMA'd to a page
// the guest was told is PINNED must land in guest memory (the memfd), and one DMA'd to a page the
// engine has unpinned must be blocked by the emulated VT-d.
//
// Every case runs for both engine variants (fast, seed). Outside the guest every case skips.
// Timings under TCG are ~10x bare metal and each edu DMA takes ~100 ms of virtual time, so the
// cases use few DMAs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "engine/base/unique_fd.h"
#include "engine/dma/iommufd_backend.h"
#include "engine/dma/vfio_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/loadgen/guest_layout.h"
#include "engine/loadgen/socket_link.h"
#include "engine/loadgen/strategy.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"
#include "tests/vm/edu.h"

namespace coiommu::loadgen {
namespace {

using coiommu::testing::DaemonOptions;
using coiommu::testing::DaemonProcess;
using coiommu::testing::Edu;
using coiommu::testing::TempDir;
using namespace std::chrono_literals;

// 64 MiB of guest RAM from GPA 0: every IOVA (= GPA) is below edu's 28-bit DMA mask.
constexpr uint64_t kRamBytes = uint64_t{64} << 20;
constexpr uint32_t kLoadVcpus = 2;        // vCPUs 0, 1: background DMA map/unmap load
constexpr uint32_t kOracle = kLoadVcpus;  // vCPU 2: maps, lets edu DMA, checks, unmaps
constexpr uint32_t kVcpus = kLoadVcpus + 1;
constexpr uint32_t kBufferPages = 16;
constexpr uint16_t kEndpoint = 0x0018;

struct VmEnv {
    std::string group, bdf, coiommud;
    std::string cdev;  // the edu device's VFIO cdev: only on the guest kernel with iommufd
};

std::optional<VmEnv> vm_env() {
    const char* group = std::getenv("VFIO_GROUP");
    const char* bdf = std::getenv("VFIO_BDF");
    const char* bindir = std::getenv("VFIO_VM_BINDIR");
    if (group == nullptr || bdf == nullptr || bindir == nullptr) return std::nullopt;
    const char* cdev = std::getenv("VFIO_CDEV");
    return VmEnv{group, bdf, std::string(bindir) + "/coiommud", cdev != nullptr ? cdev : ""};
}

// What the VMM hands the daemon: a type1 container, or an iommufd with an IOAS.
enum class Iommu : uint8_t { Type1, Iommufd };

struct Case {
    std::string variant;  // fast, seed
    Iommu iommu = Iommu::Type1;
};

std::string case_name(const ::testing::TestParamInfo<Case>& p) {
    return p.param.variant + (p.param.iommu == Iommu::Type1 ? "_type1" : "_iommufd");
}

// DMAR write faults the guest kernel logged for `iova` so far ("DMAR: [DMA Write ...] Request device
// [..] fault addr 0x..."), read from /dev/kmsg (every record, non-blocking, from the start).
uint64_t dmar_write_faults(Iova iova) {
    UniqueFd kmsg(::open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (!kmsg) return 0;
    const std::string needle = fmt::format("fault addr {:#x}", raw(iova));
    uint64_t n = 0;
    std::array<char, 8192> rec{};
    for (;;) {
        const ssize_t got = ::read(kmsg.get(), rec.data(), rec.size() - 1);
        if (got < 0 && errno == EPIPE) continue;  // a record was overwritten: skip it
        if (got <= 0) break;                      // EAGAIN: no more records
        const std::string_view line(rec.data(), static_cast<size_t>(got));
        if (line.find("DMA Write") != std::string_view::npos && line.find(needle) != std::string_view::npos) ++n;
    }
    return n;
}

// The kernel rate-limits its DMAR fault messages (10 per 5 s, shared by every fault, several
// messages per fault), so a blocked DMA that follows another within 5 s may go unlogged. Each
// blocked DMA of this file waits until 5 s after the previous one.
std::chrono::steady_clock::time_point g_last_blocked_dma{};

void await_fault_log_budget() {
    std::this_thread::sleep_until(g_last_blocked_dma + 5200ms);
    g_last_blocked_dma = std::chrono::steady_clock::now();
}

// The fault is reported from the IOMMU's interrupt: wait for it a little.
bool dmar_fault_seen(Iova iova, uint64_t before) {
    for (int i = 0; i < 100; ++i) {
        if (dmar_write_faults(iova) > before) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

void report(const std::string& line) {
    std::printf("RESULT %s\n", line.c_str());
    std::fflush(stdout);
}

class EngineOnRealIommuVm : public ::testing::TestWithParam<Case> {
protected:
    void SetUp() override {
        auto env = vm_env();
        if (!env) GTEST_SKIP() << "VFIO_GROUP/VFIO_BDF/VFIO_VM_BINDIR not set: run inside scripts/vfio-vm-test.sh";
        env_ = *env;
        if (iommufd() && env_.cdev.empty()) {
            GTEST_SKIP() << "VFIO_CDEV not set: the iommufd cases run on the guest kernel with iommufd "
                            "(scripts/vfio-vm-test.sh --kernel iommufd)";
        }
        const std::array<RegionSpec, 1> ram{{{Gpa{0}, kRamBytes}}};
        ASSERT_OK_AND_ASSIGN(mem_, GuestMemory::create(ram));
        ASSERT_OK_AND_ASSIGN(auto layout, GuestLayout::compute(kRamBytes, kVcpus, kBufferPages));
        layout_ = layout;
    }

    void TearDown() override {
        vcpus_.clear();
        strategy_.reset();  // Close, when the session is still up
        if (::testing::Test::HasFailure()) std::fprintf(stderr, "%s", killed_logs_.c_str());
        if (daemon_ && ::testing::Test::HasFailure()) std::fprintf(stderr, "%s", daemon_->stderr_text().c_str());
    }

    // A daemon on `socket` (in its own directory unless the test keeps one for restarts).
    void start_daemon(const std::string& socket) {
        ::unlink(socket.c_str());  // a killed daemon's file: readiness waits for the new one
        ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommud-vm"));
        DaemonOptions o;
        o.program = env_.coiommud;
        o.socket = socket.empty() ? dir.path("coiommud.sock") : socket;
        o.args = {"--socket",          o.socket,
                  "--tracing",         "off",
                  "--metrics-address", "none",
                  "--backends",        "vfio,iommufd",
                  "--log-level",       reconnect_ == daemon::Reconnect::On ? "info" : "warn",
                  "--engine",          "variant=" + GetParam().variant + ",unpin_policy=lru,unpin_interval=100ms"};
        ASSERT_OK_AND_ASSIGN(auto d, DaemonProcess::start(std::move(dir), std::move(o)));
        daemon_.emplace(std::move(d));
    }

    // The daemon, then the VMM's container (the group of edu, type1v2), then the session. With
    // Reconnect::On the socket lives in a directory of the test's, so that a restarted daemon
    // binds the same path and the session resumes.
    void start_session(std::optional<uint64_t> entry_limit = std::nullopt,
                       daemon::Reconnect rc = daemon::Reconnect::Off) {
        reconnect_ = rc;
        std::string socket;
        if (rc == daemon::Reconnect::On) {
            ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommud-vm-sock"));
            sock_dir_.emplace(std::move(dir));
            socket = sock_dir_->path("coiommud.sock");
        }
        ASSERT_NO_FATAL_FAILURE(start_daemon(socket));

        if (iommufd()) {
            ASSERT_NO_FATAL_FAILURE(start_iommufd_vmm());
        } else {
            ASSERT_NO_FATAL_FAILURE(start_type1_vmm(entry_limit));
        }
        ASSERT_NO_FATAL_FAILURE(start_guest());
    }

    [[nodiscard]] bool iommufd() const { return GetParam().iommu == Iommu::Iommufd; }

    void start_type1_vmm(std::optional<uint64_t> entry_limit) {
        // The kernel samples dma_entry_limit when the container gets its IOMMU.
        std::optional<uint64_t> saved;
        if (entry_limit) {
            saved = dma::VfioBackend::module_entry_limit();
            ASSERT_TRUE(saved.has_value());
            ASSERT_OK(dma::VfioBackend::set_module_entry_limit(*entry_limit));
        }
        auto vmm = dma::VfioBackend::open_group(env_.group);
        if (saved) ASSERT_OK(dma::VfioBackend::set_module_entry_limit(*saved));
        ASSERT_OK(vmm);
        vmm_ = std::move(*vmm);
        ASSERT_OK_AND_ASSIGN(auto info, vmm_->query_info());
        ASSERT_TRUE(info.caps.dma_avail.has_value()) << "the 6.1 guest kernel reports DMA_AVAIL";
        initial_avail_ = *info.caps.dma_avail;
        ASSERT_OK_AND_ASSIGN(auto edu, Edu::open(vmm_->group_fd(), env_.bdf));
        edu_.emplace(std::move(edu));
    }

    // As QEMU >= 9.0 does: the device cdev bound to an iommufd, an IOAS, the device attached.
    void start_iommufd_vmm() {
        auto ioas = dma::IommufdBackend::open_device(env_.cdev);
        ASSERT_OK(ioas);
        ioas_ = std::move(*ioas);
        ASSERT_OK_AND_ASSIGN(auto edu, Edu::from_device(ioas_->device_fd()));
        edu_.emplace(std::move(edu));
    }

    void start_guest() {
        SocketLinkConfig sc;
        sc.socket_path = daemon_->socket();
        sc.vcpus = kVcpus;
        sc.endpoints = {kEndpoint};
        if (iommufd()) {
            sc.backend = RemoteBackend::Iommufd;
            sc.iommufd = ioas_->iommufd();
            sc.ioas_id = ioas_->ioas_id();
        } else {
            sc.backend = RemoteBackend::Vfio;
            sc.vfio_container_fd = vmm_->container_fd();
        }
        sc.reconnect = reconnect_;
        ASSERT_OK_AND_ASSIGN(auto link, SocketLink::create(mem_, sc));
        link_ = link.get();
        ASSERT_EQ(link_->backend_info().name, iommufd() ? "iommufd" : "vfio");
        StrategyEnv se;
        se.mem = &mem_;
        se.layout = &layout_;
        se.backend = iommufd() ? static_cast<dma::DmaBackend*>(ioas_.get()) : vmm_.get();
        se.vcpus = kVcpus;
        se.max_outstanding = 8;
        se.max_buffer_pages = kBufferPages;
        if (reconnect_ == daemon::Reconnect::On) se.timeout = 60s;  // a vCPU waits for the next daemon
        ASSERT_OK_AND_ASSIGN(strategy_, make_coiommu_strategy(se, std::move(link)));
        for (uint32_t v = 0; v < kVcpus; ++v) {
            ASSERT_OK_AND_ASSIGN(auto dma, strategy_->vcpu(v));
            vcpus_.push_back(std::move(dma));
        }
    }

    // Mappings the daemon holds now. type1: the DMA_AVAIL the VMM's container lost since setup;
    // iommufd has no such count: the daemon's own (its backend's) while the session is up.
    uint64_t container_entries() const {
        if (iommufd()) {
            auto s = link_->remote_stats();
            return s ? s->snapshot.gauges.dma_entries : ~uint64_t{0};
        }
        auto info = vmm_->query_info();
        if (!info || !info->caps.dma_avail) return ~uint64_t{0};
        return initial_avail_ - *info->caps.dma_avail;
    }

    // Whether the VMM's container or IOAS is as it was at setup, as far as the VMM can tell without
    // the daemon. type1: DMA_AVAIL is back; iommufd: none of `probes` (pages the daemon mapped)
    // is mapped any more (a map of each at its IOVA succeeds instead of EEXIST, and is undone).
    bool nothing_left(std::span<const Gfn> probes) {
        if (!iommufd()) return container_entries() == 0;
        for (Gfn g : probes) {
            const Iova iova{raw(g) << kPageShift};
            auto r =
                ioas_->map(iova, mem_.translate(Gpa{raw(iova)}, kPageSize).value(), kPageSize, dma::Prot::ReadWrite);
            if (!r || *r != dma::MapOutcome::Mapped) return false;
            if (!ioas_->unmap_exact(iova, kPageSize)) return false;
        }
        return true;
    }

    bool wait_for_nothing_left(std::span<const Gfn> probes, std::chrono::milliseconds limit) {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (!nothing_left(probes)) {
            if (std::chrono::steady_clock::now() >= end) return false;
            std::this_thread::sleep_for(20ms);
        }
        return true;
    }

    bool wait_for_entries(uint64_t want, std::chrono::milliseconds limit) const {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (container_entries() != want) {
            if (std::chrono::steady_clock::now() >= end) return false;
            std::this_thread::sleep_for(20ms);
        }
        return true;
    }

    std::optional<uint64_t> engine_pinned_pages() const {
        auto s = link_->remote_stats();
        if (!s) return std::nullopt;
        return s->snapshot.gauges.pinned_pages;
    }

    std::byte* page(Gfn g) const { return mem_.host_ptr(Gpa{raw(g) << kPageShift}, kPageSize).value(); }

    // Maps `buf` on `vcpu` as the guest driver does; the IOVA the device uses.
    std::optional<Iova> map(uint32_t vcpu, Buffer buf) {
        Iova iova{};
        const MapStatus st = vcpus_[vcpu]->map(buf, 0, &iova);
        if (!st.ok) return std::nullopt;
        return iova;
    }
    bool unmap(uint32_t vcpu, Buffer buf, Iova iova) { return !vcpus_[vcpu]->unmap(buf, iova).has_value(); }

    // Maps (and keeps) 8 buffers of 3 pages on vCPU 0; every page, or nothing on a failure.
    std::vector<Gfn> map_some() {
        std::vector<Gfn> pages;
        for (uint64_t b = 0; b < 8; ++b) {
            if (!map(0, Buffer{Gfn{b * 32}, 3})) return {};
            for (uint64_t i = 0; i < 3; ++i) pages.push_back(Gfn{b * 32 + i});
        }
        return pages;
    }

    // edu copies `src` (a guest page filled with a fresh pattern) into its buffer, then the
    // buffer to `dst_iova`. The source is mapped through the engine by the oracle vCPU first.
    // Returns the pattern's first byte, or nullopt when the source could not be read.
    std::optional<std::byte> load_pattern(Gfn src, uint32_t seed) {
        std::byte* p = page(src);
        for (uint32_t i = 0; i < Edu::kXfer; ++i) p[i] = static_cast<std::byte>((i * 131 + seed * 7 + 1) & 0xff);
        auto iova = map(kOracle, Buffer{src, 1});
        if (!iova) return std::nullopt;
        const bool read = edu_->ram_to_device(*iova);
        if (!unmap(kOracle, Buffer{src, 1}, *iova) || !read) return std::nullopt;
        return p[0];
    }
    bool lands(Gfn src, Gfn dst) const { return std::memcmp(page(src), page(dst), Edu::kXfer) == 0; }

    VmEnv env_;
    daemon::Reconnect reconnect_ = daemon::Reconnect::Off;
    std::optional<TempDir> sock_dir_;  // Reconnect::On: the socket's directory, outliving each daemon
    std::string killed_logs_;          // the stderr of each daemon a test killed, shown if it fails
    GuestMemory mem_;
    GuestLayout layout_;
    std::optional<DaemonProcess> daemon_;
    std::unique_ptr<dma::VfioBackend> vmm_;      // type1: the VMM's container (and group)
    std::unique_ptr<dma::IommufdBackend> ioas_;  // iommufd: the VMM's iommufd, IOAS and device
    std::optional<Edu> edu_;
    uint64_t initial_avail_ = 0;
    SocketLink* link_ = nullptr;  // owned by strategy_
    std::unique_ptr<Strategy> strategy_;
    std::vector<std::unique_ptr<VcpuDma>> vcpus_;
};

// Two vCPUs map and unmap random buffers while the oracle vCPU, at random moments, maps a random
// page, has edu DMA a fresh pattern into it and reads it back from guest memory.
TEST_P(EngineOnRealIommuVm, DeviceDmaLandsInEveryPageTheGuestWasToldIsPinned) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> load_maps{0}, load_failures{0};
    std::vector<std::thread> load;
    for (uint32_t v = 0; v < kLoadVcpus; ++v) {
        load.emplace_back([&, v] {
            std::mt19937_64 rng(v + 1);
            std::vector<std::pair<Buffer, Iova>> held;
            while (!stop.load()) {
                const auto pages = static_cast<uint32_t>(1 + rng() % kBufferPages);
                const Buffer b{Gfn{rng() % (layout_.data_pages - pages)}, pages};
                if (auto iova = map(v, b)) {
                    held.emplace_back(b, *iova);
                    ++load_maps;
                } else {
                    ++load_failures;
                }
                if (held.size() > 4) {
                    if (!unmap(v, held.front().first, held.front().second)) ++load_failures;
                    held.erase(held.begin());
                }
            }
            for (auto& [b, iova] : held) {
                if (!unmap(v, b, iova)) ++load_failures;
            }
        });
    }
    std::mt19937_64 rng(42);
    constexpr int kChecks = 12;
    int landed = 0;
    uint64_t max_entries = 0;
    for (int i = 0; i < kChecks; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 200));
        const Gfn src{rng() % layout_.data_pages};
        Gfn dst{rng() % layout_.data_pages};
        if (dst == src) dst = Gfn{(raw(src) + 1) % layout_.data_pages};
        ASSERT_TRUE(load_pattern(src, static_cast<uint32_t>(i)).has_value()) << "check " << i;
        auto iova = map(kOracle, Buffer{dst, 1});
        ASSERT_TRUE(iova.has_value()) << "check " << i << ": the guest could not map gfn " << raw(dst);
        std::memset(page(dst), 0, Edu::kXfer);
        ASSERT_TRUE(edu_->device_to_ram(*iova));
        max_entries = std::max(max_entries, container_entries());
        if (lands(src, dst)) ++landed;
        EXPECT_TRUE(unmap(kOracle, Buffer{dst, 1}, *iova));
    }
    stop.store(true);
    for (auto& t : load) t.join();
    report(GetParam().variant + (iommufd() ? " iommufd" : " type1") + ": " + std::to_string(landed) + "/" +
           std::to_string(kChecks) + " device DMAs landed in pinned pages; load maps " +
           std::to_string(load_maps.load()) + ", max container entries " + std::to_string(max_entries));
    EXPECT_EQ(landed, kChecks);
    EXPECT_GT(load_maps.load(), 0u);
    EXPECT_EQ(load_failures.load(), 0u);
    EXPECT_GT(max_entries, 0u) << "the engine mapped on the VMM's container";
}

// Issue #15: the daemon killed with SIGKILL ten times under load, each time restarted on the same
// socket and resumed by the VMM. A page the guest holds PINNED across a kill takes device DMA
// while no daemon runs (the container keeps the mapping) and after the resume; new maps go to the
// resumed engine; the load never sees a failure; Close leaves the container as it was.
TEST_P(EngineOnRealIommuVm, DeviceDmaLandsInPinnedPagesThroughTenDaemonKills) {
    ASSERT_NO_FATAL_FAILURE(start_session(std::nullopt, daemon::Reconnect::On));
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> load_maps{0}, load_failures{0};
    std::string first_failure;  // the load thread's, read after it is joined
    std::thread load([&] {
        std::mt19937_64 rng(7);
        std::vector<std::pair<Buffer, Iova>> held;
        auto failed = [&](std::string_view what, const Buffer& b, MapFailure f) {
            if (load_failures++ == 0) {
                first_failure = fmt::format("{} of gfn {:#x}+{}: {}", what, raw(b.first), b.pages,
                                            kMapFailureLabels[static_cast<std::size_t>(f)]);
            }
        };
        auto unmap_held = [&](const Buffer& b, Iova iova) {
            if (auto f = vcpus_[0]->unmap(b, iova)) failed("unmap", b, *f);
        };
        while (!stop.load()) {
            const auto pages = static_cast<uint32_t>(1 + rng() % kBufferPages);
            const Buffer b{Gfn{rng() % (layout_.data_pages - pages)}, pages};
            Iova iova{};
            const MapStatus st = vcpus_[0]->map(b, 0, &iova);
            if (st.ok) {
                held.emplace_back(b, iova);
                ++load_maps;
            } else {
                failed("map", b, st.failure);
            }
            if (held.size() > 4) {
                unmap_held(held.front().first, held.front().second);
                held.erase(held.begin());
            }
        }
        for (auto& [b, iova] : held) unmap_held(b, iova);
    });
    struct Joined {  // the load stops and is joined however the test body ends
        std::atomic<bool>& stop;
        std::thread& t;
        ~Joined() {
            stop.store(true);
            if (t.joinable()) t.join();
        }
    } joined{stop, load};
    std::mt19937_64 rng(15);
    constexpr int kKills = 10;
    int landed_dead = 0, landed_resumed = 0;
    for (int i = 0; i < kKills; ++i) {
        const Gfn src{rng() % layout_.data_pages};
        Gfn dst{rng() % layout_.data_pages};
        if (dst == src) dst = Gfn{(raw(src) + 1) % layout_.data_pages};
        ASSERT_TRUE(load_pattern(src, static_cast<uint32_t>(i)).has_value())
            << "kill " << i << ": " << (link_->lost() ? link_->lost_reason() : std::string("link up"));
        auto iova = map(kOracle, Buffer{dst, 1});  // PINNED: held across the kill
        ASSERT_TRUE(iova.has_value()) << "kill " << i;
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
        const std::string socket = daemon_->socket();
        ASSERT_OK(daemon_->signal(SIGKILL));
        ASSERT_TRUE(daemon_->wait_for_exit(10s));
        killed_logs_ += fmt::format("---- daemon {} (killed) ----\n{}", i, daemon_->stderr_text());
        daemon_.reset();
        std::memset(page(dst), 0, Edu::kXfer);
        ASSERT_TRUE(edu_->device_to_ram(*iova));  // no daemon at all now
        if (lands(src, dst)) ++landed_dead;
        ASSERT_NO_FATAL_FAILURE(start_daemon(socket));
        // Each kill must hit a resumed session: the client's watcher may still be in its backoff
        // sleep, and a kill before it reconnects folds two kills into one resume (seen: 9 of 10).
        const auto resumed_by = std::chrono::steady_clock::now() + 60s;
        while (link_->resumes() < static_cast<uint64_t>(i) + 1 && std::chrono::steady_clock::now() < resumed_by) {
            std::this_thread::sleep_for(10ms);
        }
        ASSERT_EQ(link_->resumes(), static_cast<uint64_t>(i) + 1) << "kill " << i << ": the VMM did not resume";
        std::memset(page(dst), 0, Edu::kXfer);
        ASSERT_TRUE(edu_->device_to_ram(*iova));
        if (lands(src, dst)) ++landed_resumed;
        EXPECT_TRUE(unmap(kOracle, Buffer{dst, 1}, *iova)) << "kill " << i;  // through the resumed daemon
    }
    stop.store(true);
    load.join();
    report(GetParam().variant + (iommufd() ? " iommufd" : " type1") + ": " + std::to_string(kKills) +
           " kill -9: device DMA landed in the held page " + std::to_string(landed_dead) + "/" +
           std::to_string(kKills) + " with no daemon, " + std::to_string(landed_resumed) + "/" +
           std::to_string(kKills) + " after the resume; " + std::to_string(link_->resumes()) + " resumes, load maps " +
           std::to_string(load_maps.load()) + ", failures " + std::to_string(load_failures.load()));
    EXPECT_EQ(landed_dead, kKills);
    EXPECT_EQ(landed_resumed, kKills);
    EXPECT_EQ(link_->resumes(), static_cast<uint64_t>(kKills));
    EXPECT_GT(load_maps.load(), 0u);
    EXPECT_EQ(load_failures.load(), 0u) << "first: " << first_failure;
    const auto probes = map_some();
    ASSERT_FALSE(probes.empty());
    link_->shutdown();
    ASSERT_TRUE(link_->close_info().has_value());
    EXPECT_EQ(link_->close_info()->dma_entries_after, 0u);
    EXPECT_TRUE(nothing_left(probes)) << "the resumed engine unmapped everything at Close";
}

// After a balloon request took a page back, the IOMMU must drop the device's write to it.
TEST_P(EngineOnRealIommuVm, DmaToAPageTheBalloonTookBackIsBlocked) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const Gfn src{100}, dst{200}, control{300};
    auto iova = map(kOracle, Buffer{dst, 1});
    ASSERT_TRUE(iova.has_value());
    ASSERT_TRUE(unmap(kOracle, Buffer{dst, 1}, *iova));
    const workers::GfnRange range{dst, 1};
    ASSERT_OK_AND_ASSIGN(auto result, strategy_->balloon(std::span(&range, 1)));
    ASSERT_EQ(result, telemetry::BalloonResult::Success);

    ASSERT_TRUE(load_pattern(src, 1).has_value());
    std::memset(page(dst), 0xee, Edu::kXfer);
    const uint64_t faults = dmar_write_faults(*iova);
    await_fault_log_budget();
    ASSERT_TRUE(edu_->device_to_ram(*iova));  // edu completes; VT-d drops the write (DMAR fault)
    EXPECT_TRUE(dmar_fault_seen(*iova, faults)) << "no DMAR write fault logged for the unpinned IOVA";
    auto ctl = map(kOracle, Buffer{control, 1});
    ASSERT_TRUE(ctl.has_value());
    ASSERT_TRUE(edu_->device_to_ram(*ctl));
    EXPECT_TRUE(lands(src, control)) << "control: the device held the pattern";
    EXPECT_EQ(page(dst)[0], std::byte{0xee}) << "DMA reached a page the balloon took back";
    EXPECT_EQ(page(dst)[Edu::kXfer - 1], std::byte{0xee});
    EXPECT_TRUE(unmap(kOracle, Buffer{control, 1}, *ctl));
}

// After the LRU unpinned an idle page, the IOMMU must drop the device's write to it.
TEST_P(EngineOnRealIommuVm, DmaToAPageTheLruUnpinnedIsBlocked) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const Gfn src{100}, dst{200};
    ASSERT_TRUE(load_pattern(src, 2).has_value());  // src is unmapped again: idle like dst
    auto iova = map(kOracle, Buffer{dst, 1});
    ASSERT_TRUE(iova.has_value());
    ASSERT_TRUE(unmap(kOracle, Buffer{dst, 1}, *iova));
    // The LRU (100 ms ticks, a second chance for ACCESSED pages) unpins both idle pages.
    ASSERT_TRUE(wait_for_entries(0, 10s)) << container_entries() << " entries still mapped";
    EXPECT_EQ(engine_pinned_pages(), std::optional<uint64_t>(0));

    std::memset(page(dst), 0xee, Edu::kXfer);
    const uint64_t faults = dmar_write_faults(*iova);
    await_fault_log_budget();
    ASSERT_TRUE(edu_->device_to_ram(*iova));
    EXPECT_TRUE(dmar_fault_seen(*iova, faults)) << "no DMAR write fault logged for the unpinned IOVA";
    EXPECT_EQ(page(dst)[0], std::byte{0xee}) << "DMA reached a page the LRU unpinned";
    EXPECT_EQ(page(dst)[Edu::kXfer - 1], std::byte{0xee});
}

// Teardown in its three forms leaves the VMM's container (or IOAS) as it was at setup.
TEST_P(EngineOnRealIommuVm, CloseLeavesTheContainerAsItWas) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const auto pages = map_some();
    ASSERT_FALSE(pages.empty());
    ASSERT_GT(container_entries(), 0u);
    link_->shutdown();
    ASSERT_TRUE(link_->close_info().has_value());
    EXPECT_EQ(link_->close_info()->dma_entries_after, 0u);
    EXPECT_TRUE(nothing_left(pages));
}

TEST_P(EngineOnRealIommuVm, SigtermLeavesTheContainerAsItWas) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const auto pages = map_some();
    ASSERT_FALSE(pages.empty());
    ASSERT_GT(container_entries(), 0u);
    EXPECT_EQ(daemon_->terminate(), std::optional<int>(0));
    EXPECT_TRUE(nothing_left(pages));
}

TEST_P(EngineOnRealIommuVm, VmmDisconnectLeavesTheContainerAsItWas) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const auto pages = map_some();
    ASSERT_FALSE(pages.empty());
    ASSERT_GT(container_entries(), 0u);
    link_->disconnect();
    EXPECT_TRUE(wait_for_nothing_left(pages, 5s)) << "mappings left after the VMM went away";
}

// With the container's entry limit lowered, pins past it fail with ENOSPC: the guest sees PINNED
// clear (its map fails), the engine counts the failure, nothing is mapped past the limit. type1
// only: iommufd has no entry limit (its capacity cases are in iommufd_vmtest.cc).
class EntryLimitOnType1Vm : public EngineOnRealIommuVm {};

TEST_P(EntryLimitOnType1Vm, PinsPastALoweredEntryLimitFailCleanly) {
    constexpr uint64_t kLimit = 20;
    ASSERT_NO_FATAL_FAILURE(start_session(kLimit));
    uint64_t mapped = 0, refused = 0;
    for (uint64_t i = 0; i < kLimit + 10; ++i) {
        if (map(0, Buffer{Gfn{i * 2}, 1})) {
            ++mapped;
        } else {
            ++refused;
        }
    }
    EXPECT_EQ(mapped, kLimit);
    EXPECT_EQ(refused, 10u);
    EXPECT_EQ(container_entries(), kLimit);
    ASSERT_OK_AND_ASSIGN(auto stats, link_->remote_stats());
    EXPECT_EQ(stats.snapshot.totals.pin_failures[telemetry::PinFailureReason::NoSpace], 10u);
    EXPECT_EQ(stats.snapshot.gauges.pinned_pages, kLimit);
}

INSTANTIATE_TEST_SUITE_P(Type1, EngineOnRealIommuVm,
                         ::testing::Values(Case{"fast", Iommu::Type1}, Case{"seed", Iommu::Type1}), case_name);
INSTANTIATE_TEST_SUITE_P(Type1, EntryLimitOnType1Vm,
                         ::testing::Values(Case{"fast", Iommu::Type1}, Case{"seed", Iommu::Type1}), case_name);
INSTANTIATE_TEST_SUITE_P(Iommufd, EngineOnRealIommuVm,
                         ::testing::Values(Case{"fast", Iommu::Iommufd}, Case{"seed", Iommu::Iommufd}), case_name);

// ---- coalesced extents (the fast engine) ----------------------------------------------------------

class ExtentsOnRealIommuVm : public EngineOnRealIommuVm {};

// A contiguous 16-page request is one type1 mapping; device DMA reaches each of its pages.
TEST_P(ExtentsOnRealIommuVm, AContiguousBatchIsOneMapping) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const Buffer b{Gfn{64}, 16};
    auto iova = map(0, b);
    ASSERT_TRUE(iova.has_value());
    EXPECT_EQ(container_entries(), 1u);
    ASSERT_TRUE(load_pattern(Gfn{10}, 3).has_value());
    ASSERT_TRUE(edu_->device_to_ram(offset(*iova, 15 * kPageSize)));
    EXPECT_TRUE(lands(Gfn{10}, Gfn{64 + 15}));
    EXPECT_TRUE(unmap(0, b, *iova));
}

// Ballooning one page of an extent whose other page is still mapped by the guest is refused by
// the engine (an unmap that bisects a type1 mapping would fail with EINVAL in the kernel); once
// the guest lets go, the extent is unmapped whole and DMA to any of its pages is blocked.
TEST_P(ExtentsOnRealIommuVm, AnExtentIsUnpinnedWholeOrNotAtAll) {
    ASSERT_NO_FATAL_FAILURE(start_session());
    const Buffer whole{Gfn{64}, 16};
    const Buffer member{Gfn{72}, 1};
    auto iova = map(0, whole);
    ASSERT_TRUE(iova.has_value());
    auto member_iova = map(1, member);  // already PINNED: no request, map count 2
    ASSERT_TRUE(member_iova.has_value());
    ASSERT_TRUE(unmap(0, whole, *iova));
    ASSERT_EQ(container_entries(), 1u);

    const workers::GfnRange first{Gfn{64}, 1};
    ASSERT_OK_AND_ASSIGN(auto busy, strategy_->balloon(std::span(&first, 1)));
    EXPECT_EQ(busy, telemetry::BalloonResult::Failed) << "gfn 72 of the extent is still mapped by the guest";
    EXPECT_EQ(container_entries(), 1u);

    ASSERT_TRUE(unmap(1, member, *member_iova));
    ASSERT_OK_AND_ASSIGN(auto done, strategy_->balloon(std::span(&first, 1)));
    EXPECT_EQ(done, telemetry::BalloonResult::Success);
    EXPECT_EQ(container_entries(), 0u) << "the extent went as one mapping";

    ASSERT_TRUE(load_pattern(Gfn{10}, 4).has_value());
    std::memset(page(Gfn{64 + 12}), 0xee, Edu::kXfer);
    const Iova member12 = offset(*iova, 12 * kPageSize);
    const uint64_t faults = dmar_write_faults(member12);
    await_fault_log_budget();
    ASSERT_TRUE(edu_->device_to_ram(member12));
    EXPECT_TRUE(dmar_fault_seen(member12, faults)) << "no DMAR write fault logged for the unmapped extent";
    EXPECT_EQ(page(Gfn{64 + 12})[0], std::byte{0xee}) << "DMA reached a page of the unmapped extent";
}

INSTANTIATE_TEST_SUITE_P(Fast, ExtentsOnRealIommuVm,
                         ::testing::Values(Case{"fast", Iommu::Type1}, Case{"fast", Iommu::Iommufd}), case_name);

}  // namespace
}  // namespace coiommu::loadgen
