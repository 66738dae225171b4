// A whole emulated VM for engine tests: 32 MiB of memfd guest RAM with a guest DTT, a FakeBackend
// container, the CoiommuDevice (endpoint kBdf, N vCPUs), the Engine wired to it, and a GuestDriver
// with one VcpuDriver per vCPU speaking the guest protocol through the device's real memfds and
// eventfds. ACTIVATE goes through BAR0 like the guest driver's probe.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "engine/core/spec.h"
#include "engine/device/device.h"
#include "engine/dma/fake_backend.h"
#include "engine/emulator/guest_driver.h"
#include "engine/workers/engine.h"
#include "engine/workers/fast_engine.h"
#include "engine/workers/seed_pinner.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu::workers::test {

inline constexpr uint16_t kEndpoint = 0x0018;
inline constexpr uint64_t kVmRamBytes = uint64_t{32} << 20;  // 8192 gfns
inline constexpr uint64_t kVmPoolPages = 256;                // DTT pool: gfns 0x1F00..0x1FFF
inline constexpr uint64_t kBatchAreaGfn = 0x1C00;            // 4 pages per vCPU below the pool
inline constexpr uint64_t kBatchCapacity = 1000;             // gfns per batch request
inline constexpr Gfn kVmData{0x100};

[[nodiscard]] inline Gfn vm_gfn(uint64_t i) { return Gfn{raw(kVmData) + i}; }
[[nodiscard]] inline std::vector<Gfn> vm_range(uint64_t first, uint64_t n) {
    std::vector<Gfn> g;
    for (uint64_t i = 0; i < n; ++i) g.push_back(vm_gfn(first + i));
    return g;
}

// Test engine defaults: short spin, LRU on but driven by run_unpin_tick() (no timer).
[[nodiscard]] inline EngineConfig test_config(Variant v = Variant::Fast) {
    EngineConfig cfg;
    cfg.variant = v;
    cfg.workers = 1;  // the hand-off path; inline (0) and pools (2) are tested explicitly
    cfg.spin_budget = std::chrono::microseconds(20);
    cfg.max_batch_pages = kBatchCapacity;
    cfg.unpin_policy = UnpinPolicy::Lru;
    cfg.unpin_interval = std::chrono::nanoseconds(0);
    cfg.unpin_gen_threshold = 3;
    return cfg;
}

struct VmOptions {
    EngineConfig cfg = test_config();
    uint32_t vcpus = 2;
    uint64_t ram_bytes = kVmRamBytes;  // one region from gpa 0 (a sparse memfd: only touched pages cost)
    dma::FakeConfig fake{};
    bool activate = true;
    bool trap_triggers = false;  // trigger through device.mmio_write instead of the eventfd
    // Map the notifymap memfd a second time for the guest (as a real guest's BAR2) instead of
    // sharing the device's mapping (TSan cannot follow atomics across two mappings).
    bool guest_maps_notifymap = false;
    std::chrono::milliseconds guest_timeout{10'000};
};

class EmulatedVm {
public:
    explicit EmulatedVm(VmOptions o = {}) : opts_(std::move(o)) {
        builder_ = std::make_unique<testing::DttBuilder>(testing::must(
            testing::DttBuilder::create({4, opts_.ram_bytes, kVmPoolPages, opts_.vcpus}), "guest RAM and DTT"));
        backend_ = std::make_unique<dma::FakeBackend>(opts_.fake);
        device_ =
            testing::must(device::CoiommuDevice::create(device::DeviceConfig{{kEndpoint}, opts_.vcpus}), "device");
        engine_ = testing::must(Engine::create(opts_.cfg, device_deps(*device_, builder_->mem(), *backend_)), "engine");
        device_->set_engine(engine_.get());
        emulator::GuestDriverConfig gcfg;
        gcfg.mem = &builder_->mem();
        gcfg.dtt = &builder_->dtt();
        gcfg.notifymap_fd = device_->notifymap_fd();
        if (!opts_.guest_maps_notifymap) gcfg.notify_slots = device_->notify_slots();
        for (uint32_t i = 0; i < opts_.vcpus; ++i) gcfg.trigger_fds.push_back(device_->trigger_fd(i));
        if (opts_.trap_triggers) {
            gcfg.trap_trigger = [dev = device_.get()](uint32_t vcpu) {
                const std::byte one{1};
                dev->mmio_write(core::kRegTriggerBase + vcpu, {&one, 1});
            };
        }
        gcfg.timeout = opts_.guest_timeout;
        driver_ = testing::must(emulator::GuestDriver::create(std::move(gcfg)), "guest driver");
        for (uint32_t i = 0; i < opts_.vcpus; ++i) {
            const Gpa batch{(kBatchAreaGfn + 4 * i) << kPageShift};
            vcpus_.push_back(testing::must(driver_->vcpu({i, kEndpoint, batch, kBatchCapacity}), "guest vCPU"));
        }
        if (opts_.activate) activate();
    }
    ~EmulatedVm() {
        if (engine_) engine_->stop();
        if (device_) device_->set_engine(nullptr);
    }

    // The guest driver's probe: dtt_root, dtt_level, ACTIVATE (+ read-back).
    void activate(Gpa root = Gpa{0}, uint64_t level = 0) {
        write_reg(core::kRegDttRoot, raw(root) != 0 ? raw(root) : raw(builder_->root()));
        write_reg(core::kRegDttLevel, level != 0 ? level : builder_->levels());
        command(core::Command::Activate);
    }
    void write_reg(uint64_t off, uint64_t v) {
        std::array<std::byte, 8> b{};
        std::memcpy(b.data(), &v, 8);
        device_->mmio_write(off, b);
    }
    void command(core::Command c) { write_reg(core::kRegCmd, static_cast<uint64_t>(c)); }

    [[nodiscard]] Result<emulator::MapReport> map(uint32_t vcpu, std::span<const Gfn> g) { return vcpus_[vcpu].map(g); }
    [[nodiscard]] Result<emulator::MapReport> map_range(uint32_t vcpu, uint64_t first, uint64_t n) {
        const auto g = vm_range(first, n);
        return vcpus_[vcpu].map(g);
    }
    void unmap_range(uint32_t vcpu, uint64_t first, uint64_t n) {
        const auto g = vm_range(first, n);
        EXPECT_OK(vcpus_[vcpu].unmap(g));
    }
    // Clears ACCESSED (as one second-chance scan would) so a tick can unpin idle pages at once.
    void clear_accessed(uint64_t first, uint64_t n) {
        for (Gfn g : vm_range(first, n)) {
            const uint32_t e = builder_->entry(g).value_or(0);
            EXPECT_OK(builder_->set_entry(g, e & ~core::kDtteAccessed));
        }
    }

    [[nodiscard]] bool pinned(Gfn g) const { return builder_->pinned(g); }
    [[nodiscard]] bool mapped(Gfn g) const { return backend_->is_mapped(Iova{raw(g) << kPageShift}, kPageSize); }
    [[nodiscard]] uint64_t map_calls() const { return backend_->counters().map_calls.load(); }
    [[nodiscard]] uint64_t live_entries_queries() const { return backend_->live_entries_queries(); }
    [[nodiscard]] uint64_t unmap_calls() const { return backend_->counters().unmap_calls.load(); }
    [[nodiscard]] uint64_t mapped_pages() const {
        uint64_t n = 0;
        for (const auto& m : backend_->mappings()) n += m.size / kPageSize;
        return n;
    }
    [[nodiscard]] telemetry::StatsSnapshot stats() const { return engine_->stats(); }

    // Polls `pred` for up to `timeout`.
    static bool eventually(const std::function<bool()>& pred,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (pred()) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return pred();
    }

    [[nodiscard]] testing::DttBuilder& guest() { return *builder_; }
    [[nodiscard]] dma::FakeBackend& backend() { return *backend_; }
    [[nodiscard]] device::CoiommuDevice& device() { return *device_; }
    [[nodiscard]] Engine& engine() { return *engine_; }
    [[nodiscard]] emulator::VcpuDriver& vcpu(uint32_t i) { return vcpus_[i]; }
    [[nodiscard]] FastEngine* fast() { return dynamic_cast<FastEngine*>(&engine_->variant()); }
    [[nodiscard]] SeedPinner* seed() { return dynamic_cast<SeedPinner*>(&engine_->variant()); }

private:
    VmOptions opts_;
    std::unique_ptr<testing::DttBuilder> builder_;
    std::unique_ptr<dma::FakeBackend> backend_;
    std::unique_ptr<device::CoiommuDevice> device_;
    std::unique_ptr<Engine> engine_;
    std::unique_ptr<emulator::GuestDriver> driver_;
    std::vector<emulator::VcpuDriver> vcpus_;
};

[[nodiscard]] inline VmOptions vm_options(EngineConfig cfg, uint32_t vcpus = 2) {
    VmOptions o;
    o.cfg = cfg;
    o.vcpus = vcpus;
    return o;
}

}  // namespace coiommu::workers::test
