#include "engine/daemon/emulated_vm.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/device/device.h"
#include "engine/telemetry/clock.h"

namespace coiommu::daemon {
namespace {

constexpr std::string_view kLog = "vm";
constexpr uint64_t kChunkPages = 256;  // 1 MiB: the balloon's unit, and no buffer straddles two
constexpr uint64_t kDttLevels = 4;

uint64_t now_ns() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
}

}  // namespace

struct EmulatedVm::Shared {
    explicit Shared(uint64_t chunks) : claims(chunks) {}
    // Per chunk: > 0 vCPU buffers in it, 0 free, -1 inflated by the balloon.
    std::vector<std::atomic<int32_t>> claims;
    std::atomic<uint64_t> maps{0}, map_failures{0}, unmaps{0}, unmap_failures{0}, pages_mapped{0};
    std::atomic<uint64_t> checks{0}, violations{0}, check_errors{0};
    std::atomic<uint64_t> balloon_success{0}, balloon_failed{0}, balloon_errors{0};
    std::atomic<uint64_t> notifications{0};
    std::atomic<uint64_t> stream_ops{0};  // stream buffers so far: the stream's position
    telemetry::LogLinearHistogram map_latency;
    telemetry::LogLinearHistogram pin_map_latency;  // maps that sent a pin request

    bool claim(uint64_t chunk) {
        int32_t v = claims[chunk].load(std::memory_order_relaxed);
        while (v >= 0) {
            if (claims[chunk].compare_exchange_weak(v, v + 1, std::memory_order_acquire)) return true;
        }
        return false;
    }
    void release(uint64_t chunk) { claims[chunk].fetch_sub(1, std::memory_order_release); }
};

EmulatedVm::EmulatedVm(const EmulatedVmOptions& o) : opts_(o) {}

EmulatedVm::~EmulatedVm() {
    stop();
    if (!closed_ && client_) (void)client_->close();
}

Result<EmulatedVm::Layout> EmulatedVm::plan_layout(const EmulatedVmOptions& o) {
    if (o.vcpus == 0 || o.vcpus > core::kMaxVcpus || o.ram_bytes < (uint64_t{64} << 20) ||
        o.ram_bytes % kPageSize != 0 || o.max_buffer_pages == 0 || o.max_buffer_pages > kChunkPages ||
        o.outstanding == 0 || o.endpoints.empty()) {
        return make_error(EINVAL, "emulated VM: bad options");
    }
    // [data chunks][one PinPageInfo page per vCPU][DTT page pool].
    Layout l;
    const uint64_t ram_pages = o.ram_bytes >> kPageShift;
    const uint64_t batch_bytes = 16 + 8 * uint64_t{o.max_buffer_pages};
    l.batch_stride = (batch_bytes + kPageSize - 1) & ~(kPageSize - 1);
    l.pool_pages = ram_pages / 1024 + 64;
    const uint64_t reserved = l.pool_pages + o.vcpus * (l.batch_stride >> kPageShift);
    l.data_chunks = (ram_pages - reserved) / kChunkPages;
    if (l.data_chunks < 2) return make_error(EINVAL, "emulated VM: RAM too small");
    l.batch_base = Gpa{l.data_chunks * kChunkPages * kPageSize};
    l.pool_base = offset(l.batch_base, o.vcpus * l.batch_stride);
    return l;
}

// The VMM's part: memory, topology, backend, triggers, as a VMM hands them to the daemon.
Status EmulatedVm::connect_vmm() {
    const EmulatedVmOptions& o = opts_;
    COIOMMU_ASSIGN_OR_RETURN(client_, Client::connect(o.socket_path, o.name));
    Client& c = *client_;
    COIOMMU_TRY(c.set_memory(mem_));
    COIOMMU_ASSIGN_OR_RETURN(dev_, c.set_topology(o.vcpus, o.endpoints));
    COIOMMU_ASSIGN_OR_RETURN(backend_, o.backend == proto::BackendKind::Null
                                           ? c.set_backend_null(o.entry_limit)
                                           : c.set_backend_fake(FakeBackendSpec{o.latency, o.entry_limit}));
    for (uint32_t i = 0; i < o.vcpus; ++i) {
        COIOMMU_ASSIGN_OR_RETURN(auto ev, EventFd::create(Blocking::No), "trigger eventfd");
        trigger_fds_.push_back(ev.fd());
        triggers_.push_back(std::move(ev));
    }
    COIOMMU_ASSIGN_OR_RETURN(const bool running, c.set_triggers(trigger_fds_));
    if (!running) return make_error(EPROTO, "SetTriggers: the daemon is not running the engine");
    return ok();
}

// The guest's part: the PCI fixup reads the topology BAR, the probe builds the DTT and programs
// BAR0, then each vCPU gets its driver context.
Result<std::vector<emulator::VcpuDriver>> EmulatedVm::probe_guest(const Layout& l) {
    const EmulatedVmOptions& o = opts_;
    COIOMMU_ASSIGN_OR_RETURN(const auto endpoints, device::read_topology(dev_.topologymap.get()),
                             "guest: topology BAR");
    if (endpoints.empty()) return make_error(ENODEV, "guest: the topology BAR lists no endpoint");
    emulator::GuestDttConfig dcfg;
    dcfg.levels = kDttLevels;
    dcfg.pool_base = l.pool_base;
    dcfg.pool_pages = l.pool_pages;
    dcfg.ncpus = o.vcpus;
    COIOMMU_ASSIGN_OR_RETURN(dtt_, emulator::GuestDtt::create(mem_, dcfg), "guest: DTT");
    emulator::GuestDriverConfig gcfg;
    gcfg.mem = &mem_;
    gcfg.dtt = dtt_.get();
    gcfg.notifymap_fd = dev_.notifymap.get();
    gcfg.trigger_fds = trigger_fds_;
    COIOMMU_ASSIGN_OR_RETURN(driver_, emulator::GuestDriver::create(std::move(gcfg)), "guest: driver");
    COIOMMU_TRY(activate_device());
    std::vector<emulator::VcpuDriver> vcpus;
    for (uint32_t i = 0; i < o.vcpus; ++i) {
        emulator::VcpuConfig vc;
        vc.vcpu = i;
        vc.bdf = endpoints[i % endpoints.size()];
        vc.batch_gpa = offset(l.batch_base, i * l.batch_stride);
        vc.batch_capacity = o.max_buffer_pages;
        COIOMMU_ASSIGN_OR_RETURN(auto v, driver_->vcpu(vc), "guest: vCPU {}", i);
        vcpus.push_back(std::move(v));
    }
    return vcpus;
}

// BAR0: DTT root, level, ACTIVATE; the daemon's statistics say whether the device took it.
Status EmulatedVm::activate_device() {
    Client& c = *client_;
    auto write_reg = [&c](uint64_t off, uint64_t value) {
        std::byte bytes[sizeof value];
        std::memcpy(bytes, &value, sizeof value);
        return c.mmio_write(off, bytes);
    };
    COIOMMU_TRY(write_reg(core::kRegDttRoot, raw(dtt_->dtt_root())));
    COIOMMU_TRY(write_reg(core::kRegDttLevel, dtt_->levels()));
    COIOMMU_TRY(write_reg(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)));
    COIOMMU_ASSIGN_OR_RETURN(const auto stats, c.stats());
    if (stats.head.active == 0) return make_error(EIO, "guest: the device refused ACTIVATE (see the daemon's log)");
    return ok();
}

Result<std::unique_ptr<EmulatedVm>> EmulatedVm::start(const EmulatedVmOptions& o) {
    COIOMMU_ASSIGN_OR_RETURN(const Layout layout, plan_layout(o));
    std::unique_ptr<EmulatedVm> vm(new EmulatedVm(o));
    vm->data_chunks_ = layout.data_chunks;
    const RegionSpec region{Gpa{0}, o.ram_bytes};
    COIOMMU_ASSIGN_OR_RETURN(vm->mem_, GuestMemory::create(std::span<const RegionSpec>(&region, 1)), "guest RAM");
    vm->shared_ = std::make_unique<Shared>(vm->data_chunks_);
    COIOMMU_TRY(vm->connect_vmm());
    COIOMMU_ASSIGN_OR_RETURN(auto vcpus, vm->probe_guest(layout));
    for (uint32_t i = 0; i < o.vcpus; ++i) {
        vm->threads_.emplace_back(
            [p = vm.get(), i, d = std::move(vcpus[i])]() mutable { p->vcpu_loop(i, std::move(d)); });
    }
    if (o.balloon_interval.count() > 0) vm->threads_.emplace_back([p = vm.get()] { p->balloon_loop(); });
    CLOG_INFO(kLog, "'{}': {} vCPUs, {} MiB, session {} on {}", o.name, o.vcpus, o.ram_bytes >> 20,
              vm->client_->hello_info().session_id, o.socket_path);
    return vm;
}

void EmulatedVm::vcpu_loop(uint32_t index, emulator::VcpuDriver drv) {
    struct Held {
        std::vector<Gfn> gfns;
        uint64_t chunk = 0;
    };
    Shared& sh = *shared_;
    std::mt19937_64 rng(opts_.seed * 1'000'003 + index);
    const uint64_t hot = std::max<uint64_t>(1, data_chunks_ / 8);
    const uint64_t cold = data_chunks_ - hot;
    constexpr uint64_t kStreamOpsPerChunk = 500;
    std::deque<Held> held;
    using Clock = std::chrono::steady_clock;
    const auto started = Clock::now();
    uint64_t ops = 0;
    auto unmap_front = [&] {
        Held& h = held.front();
        if (drv.unmap(h.gfns)) {
            sh.unmaps.fetch_add(1, std::memory_order_relaxed);
        } else {
            sh.unmap_failures.fetch_add(1, std::memory_order_relaxed);
        }
        sh.release(h.chunk);
        held.pop_front();
    };
    while (!stop_.load(std::memory_order_relaxed)) {
        if (opts_.rate_per_vcpu != 0 && ++ops % 32 == 0) {
            const auto due = started + std::chrono::microseconds(ops * 1'000'000 / opts_.rate_per_vcpu);
            if (due > Clock::now()) std::this_thread::sleep_until(due);
        }
        uint64_t chunk = 0;
        if (cold == 0 || rng() % 10 < 8) {
            chunk = rng() % hot;
        } else {
            const uint64_t pos = sh.stream_ops.fetch_add(1, std::memory_order_relaxed) / kStreamOpsPerChunk;
            chunk = hot + (pos + rng() % 4) % cold;
        }
        if (!sh.claim(chunk)) continue;  // inflated by the balloon right now
        const uint64_t n = 1 + rng() % opts_.max_buffer_pages;
        const uint64_t first = chunk * kChunkPages + rng() % (kChunkPages - n + 1);
        Held h;
        h.chunk = chunk;
        for (uint64_t k = 0; k < n; ++k) h.gfns.push_back(Gfn{first + k});
        const uint64_t t0 = now_ns();
        auto r = drv.map(h.gfns);
        const uint64_t latency = now_ns() - t0;
        sh.map_latency.observe(latency);
        if (r && r->notified) sh.pin_map_latency.observe(latency);
        if (!r) {
            sh.map_failures.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "vCPU {}: DMA map of {} pages failed: {}", index, n, r.error().message());
            sh.release(chunk);
            continue;
        }
        sh.maps.fetch_add(1, std::memory_order_relaxed);
        sh.pages_mapped.fetch_add(n, std::memory_order_relaxed);
        if (opts_.check_invariant == CheckInvariant::Yes) {
            auto mapped = client_->query_mapped(Iova{first << kPageShift}, n << kPageShift);
            if (!mapped) {
                sh.check_errors.fetch_add(1, std::memory_order_relaxed);
            } else {
                sh.checks.fetch_add(1, std::memory_order_relaxed);
                if (!*mapped) {
                    sh.violations.fetch_add(1, std::memory_order_relaxed);
                    CLOG_ERROR(kLog, "vCPU {}: INVARIANT: gfns {:#x}+{} are PINNED but not mapped", index, first, n);
                }
            }
        }
        held.push_back(std::move(h));
        if (held.size() > opts_.outstanding) unmap_front();
    }
    while (!held.empty()) unmap_front();
    sh.notifications.fetch_add(drv.notifications(), std::memory_order_relaxed);
}

void EmulatedVm::balloon_loop() {
    Shared& sh = *shared_;
    std::mt19937_64 rng(opts_.seed * 7 + 3);
    const auto nap = [&](std::chrono::milliseconds d) {
        const auto until = std::chrono::steady_clock::now() + d;
        while (!stop_.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    };
    while (!stop_.load(std::memory_order_relaxed)) {
        nap(opts_.balloon_interval);
        if (stop_.load(std::memory_order_relaxed)) break;
        const uint64_t chunk = rng() % data_chunks_;
        int32_t expected = 0;
        if (!sh.claims[chunk].compare_exchange_strong(expected, -1, std::memory_order_acquire)) continue;
        const GfnRange range{Gfn{chunk * kChunkPages}, kChunkPages};
        auto r = client_->balloon_unpin(std::span<const GfnRange>(&range, 1));
        if (!r) {
            sh.balloon_errors.fetch_add(1, std::memory_order_relaxed);
            CLOG_WARN_RL(kLog, "balloon: {}", r.error().message());
        } else if (*r == telemetry::BalloonResult::Success) {
            sh.balloon_success.fetch_add(1, std::memory_order_relaxed);
        } else {
            sh.balloon_failed.fetch_add(1, std::memory_order_relaxed);
        }
        nap(opts_.balloon_interval / 2);
        sh.claims[chunk].store(0, std::memory_order_release);  // deflate: the guest uses it again
    }
}

void EmulatedVm::stop() {
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : threads_) {
        if (t.joinable()) t.join();
    }
    threads_.clear();
}

Result<CloseInfo> EmulatedVm::close() {
    stop();
    if (closed_) return make_error(EALREADY, "emulated VM: already closed");
    closed_ = true;
    return client_->close();
}

VmCounters EmulatedVm::counters() const {
    const Shared& sh = *shared_;
    VmCounters c;
    c.maps = sh.maps.load(std::memory_order_relaxed);
    c.map_failures = sh.map_failures.load(std::memory_order_relaxed);
    c.unmaps = sh.unmaps.load(std::memory_order_relaxed);
    c.unmap_failures = sh.unmap_failures.load(std::memory_order_relaxed);
    c.pages_mapped = sh.pages_mapped.load(std::memory_order_relaxed);
    c.notifications = sh.notifications.load(std::memory_order_relaxed);
    c.invariant_checks = sh.checks.load(std::memory_order_relaxed);
    c.invariant_violations = sh.violations.load(std::memory_order_relaxed);
    c.check_errors = sh.check_errors.load(std::memory_order_relaxed);
    c.balloon_success = sh.balloon_success.load(std::memory_order_relaxed);
    c.balloon_failed = sh.balloon_failed.load(std::memory_order_relaxed);
    c.balloon_errors = sh.balloon_errors.load(std::memory_order_relaxed);
    c.map_latency_ns = sh.map_latency.snapshot();
    c.pin_map_latency_ns = sh.pin_map_latency.snapshot();
    return c;
}

}  // namespace coiommu::daemon
