// EngineVm: the real engine under a guest load, for the exporter's tests, fixture and benchmark.
//
// One emulated VM: memfd guest RAM with a guest DTT, a FakeBackend container (optionally with the
// kernel latency model), the CoiommuDevice, workers::Engine (any EngineConfig; default: variant
// fast, LRU unpinning every 100 ms) wired to it and ACTIVATEd through BAR0, and GuestDriver vCPU
// threads speaking the guest protocol through the device's real notify slots and trigger eventfds.
//
//   auto vm = EngineVm::create({}).value();
//   vm->start();                      // guest threads map/unmap until stop()
//   auto collector = std::make_shared<EngineCollector>([&] { return vm->stats(); }, vm->engine_info());
//   ... vm->stop();                   // joins the guest threads, stops the engine
//
// Load patterns (per load vCPU, each on its own gfn range):
//   Mixed  buffers of 1..max_pages pages (a quarter single-page) at random places, mostly in a
//          small hot range (re-mapped pages are often still pinned), sometimes in a larger cold
//          range (idle pages the LRU unpinner reclaims) or in a range all load vCPUs share
//          (concurrent requests for the same pages: "already pinned"); a balloon thread pins and
//          balloons its own range every balloon_every. Every metric of the engine moves.
//   Fresh  pages never pinned before, walked in order, max_pages per map: every map is a pin
//          request and DMA map (the engine flat out); when the range is used up the vCPU balloons
//          it back (one balloon request per wrap).
//
// Thread-safety: create/start/stop from one thread; the getters from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "engine/base/result.h"
#include "engine/device/device.h"
#include "engine/dma/fake_backend.h"
#include "engine/emulator/guest_driver.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/engine.h"
#include "exporter/engine_collector.h"

namespace coiommu::exporter::testing {

enum class LoadPattern : uint8_t { Mixed, Fresh };

struct EngineVmOptions {
    uint32_t load_vcpus = 2;
    LoadPattern pattern = LoadPattern::Mixed;
    uint64_t max_pages = 32;  // pages per guest DMA map, 1..1024
    // Mixed only: the balloon thread's period (0: no balloon thread).
    std::chrono::milliseconds balloon_every{300};
    // Guest pause while a buffer is mapped (0: flat out).
    std::chrono::microseconds hold{0};
    std::optional<dma::LatencyModel> latency = dma::LatencyModel::typical();
    workers::EngineConfig engine = default_engine_config();

    // variant fast, 1 worker, LRU every 100 ms with a generation threshold of 2.
    [[nodiscard]] static workers::EngineConfig default_engine_config();
};

class EngineVm {
public:
    // Errors: EINVAL for options out of range; whatever creating memory, DTT, device, engine or
    // driver returned; EIO when ACTIVATE did not take.
    [[nodiscard]] static Result<std::unique_ptr<EngineVm>> create(const EngineVmOptions& options);
    ~EngineVm();
    EngineVm(const EngineVm&) = delete;
    EngineVm& operator=(const EngineVm&) = delete;

    // Starts the guest threads. Once.
    void start();
    // Joins the guest threads and stops the engine (unmapping everything). Idempotent.
    void stop();

    [[nodiscard]] workers::Engine& engine() { return *engine_; }
    [[nodiscard]] telemetry::StatsSnapshot stats() const { return engine_->stats(); }
    // What the engine collector reports as coiommu_config_info / build.
    [[nodiscard]] EngineInfo engine_info() const;

    // Guest DMA maps completed / failed, and pages they covered (monotonic, relaxed).
    [[nodiscard]] uint64_t guest_maps() const { return maps_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint64_t guest_map_failures() const { return failures_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint64_t guest_pages_mapped() const { return pages_.load(std::memory_order_relaxed); }

private:
    EngineVm() = default;
    void load_loop(uint32_t vcpu);
    void balloon_loop(uint32_t vcpu);

    EngineVmOptions opts_;
    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<emulator::GuestDtt> dtt_;
    std::unique_ptr<dma::FakeBackend> backend_;
    std::unique_ptr<device::CoiommuDevice> device_;
    std::unique_ptr<workers::Engine> engine_;
    std::unique_ptr<emulator::GuestDriver> driver_;
    std::vector<emulator::VcpuDriver> vcpus_;
    std::vector<std::thread> threads_;
    std::atomic<bool> stop_{false};
    bool stopped_ = false;
    std::atomic<uint64_t> maps_{0};
    std::atomic<uint64_t> failures_{0};
    std::atomic<uint64_t> pages_{0};
};

}  // namespace coiommu::exporter::testing
