// Benchmark arrangements: a guest of 256 MiB (65536 gfns) with a 4-level DTT whose tables all
// exist (every data gfn marked once, then unmarked: map count 0), plus either
//  - PinDirect: the engine's pin path called on the benchmark thread (no threads, no protocol), or
//  - BenchVm:   the whole engine behind the device, the benchmark thread playing one vCPU.
// Fresh pages are pinned each iteration; when the data range is used up it is reset outside the
// timed region (teardown / balloon), so every timed request really maps.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/core/spec.h"
#include "engine/device/device.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/null_backend.h"
#include "engine/emulator/guest_driver.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/engine.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/unpinner.h"

namespace coiommu::bench {

inline constexpr uint16_t kBdf = 0x0018;
inline constexpr uint64_t kRamBytes = uint64_t{256} << 20;  // 65536 gfns
inline constexpr uint64_t kPoolPages = 256;                 // top of RAM
inline constexpr uint64_t kDataFirst = 0x100;
inline constexpr uint64_t kDataPages = 0xF000 - kDataFirst;  // gfns [0x100, 0xF000)
inline constexpr uint64_t kBatchGfn = 0xF800;                // batch buffers (4 pages per vCPU)
inline constexpr uint64_t kMaxBatch = 1024;

// The guest RAM + DTT shared by both arrangements (heap-held so the DTT's pointer to the memory
// survives moves).
class BenchGuest {
public:
    BenchGuest() {
        const RegionSpec ram{Gpa{0}, kRamBytes};
        mem_ = std::make_unique<GuestMemory>(GuestMemory::create({&ram, 1}).value());
        emulator::GuestDttConfig cfg;
        cfg.levels = 4;
        cfg.pool_base = Gpa{kRamBytes - kPoolPages * kPageSize};
        cfg.pool_pages = kPoolPages;
        cfg.ncpus = 4;
        dtt_ = emulator::GuestDtt::create(*mem_, cfg).value();
        for (uint64_t g = kDataFirst; g < kDataFirst + kDataPages; g += core::kDttLeafEntries / 2) {
            (void)dtt_->mark(Gfn{g});  // creates the leaf table
            (void)dtt_->unmark(Gfn{g});
        }
    }
    [[nodiscard]] const GuestMemory& mem() const { return *mem_; }
    [[nodiscard]] emulator::GuestDtt& dtt() { return *dtt_; }
    [[nodiscard]] Gpa root() const { return dtt_->dtt_root(); }
    [[nodiscard]] uint64_t levels() const { return dtt_->levels(); }
    [[nodiscard]] Result<core::DttWalker> walker() const { return core::DttWalker::create(*mem_, root(), levels()); }

private:
    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<emulator::GuestDtt> dtt_;
};

inline BenchGuest make_guest() { return BenchGuest(); }

enum class BackendKind { Null, Fake, FakeLatency, FakeBatchedPin };

inline std::unique_ptr<dma::DmaBackend> make_backend(BackendKind k) {
    dma::FakeConfig cfg;
    cfg.entry_limit = 1u << 20;
    switch (k) {
        case BackendKind::Null: return std::make_unique<dma::NullBackend>(1u << 20);
        case BackendKind::Fake: break;
        case BackendKind::FakeLatency: cfg.latency = dma::LatencyModel::typical(); break;
        case BackendKind::FakeBatchedPin: {
            // In one map call the kernel pins in 512-page batches, ≈0.2 µs per page (engine/README.md,
            // "VFIO cost model"); per-call cost as typical(). Unmap as typical().
            dma::LatencyModel m = dma::LatencyModel::typical();
            m.map_per_call = std::chrono::nanoseconds{1800};
            m.map_per_page = std::chrono::nanoseconds{200};
            cfg.latency = m;
            break;
        }
    }
    return std::make_unique<dma::FakeBackend>(cfg);
}

// The pin path alone, on the calling thread.
class PinDirect {
public:
    explicit PinDirect(BackendKind backend = BackendKind::Null,
                       workers::ExtentStoreKind store = workers::ExtentStoreKind::Flat,
                       workers::Coalesce coalesce = workers::Coalesce::On)
        : guest_(make_guest()),
          backend_(make_backend(backend)),
          table_(core::PinTable::create(guest_.mem().gfn_span()).value()),
          extents_(workers::ExtentMap::create(guest_.mem().gfn_span(), store).value()),
          handoff_(workers::ExtentHandoff::create(guest_.mem().gfn_span()).value()),
          endpoints_(std::vector<uint16_t>{kBdf}),
          stats_(1),
          env_{guest_.mem(),
               *backend_,
               table_,
               extents_,
               handoff_,
               endpoints_,
               stats_.gauges(),
               core::RequestLimits{kMaxBatch},
               coalesce,
               0,
               /*track_extents=*/false,
               {}} {
        arena_ = workers::VcpuArena::create(0, GuestAtomicU64(&slot_), -1, kMaxBatch, stats_.shard(0)).value();
        arena_->walker = guest_.walker().value();
        workers::UnpinEnv uenv{guest_.mem(),    *backend_,          table_, extents_, handoff_,
                               stats_.gauges(), stats_.add_shard(), 0};
        unpinner_ = workers::ExtentUnpinner::create(uenv, arena_->walker, {}, gate_).value();
    }

    // Serves a batch of `n` gfns [first, first+n) written at the batch buffer.
    void write_batch(uint64_t first, uint64_t n) {
        core::PinPageInfo info{};
        info.bdf = kBdf;
        info.nr_pages = n;
        (void)guest_.mem().write_obj(batch_gpa(), info);
        auto* list = reinterpret_cast<uint64_t*>(guest_.mem().host_ptr(offset(batch_gpa(), 16), n * 8).value());
        for (uint64_t i = 0; i < n; ++i) list[i] = first + i;
    }
    workers::ServeReport serve(uint64_t value) {
        slot_ = value;
        return workers::serve_request(env_, *arena_, value, 0, trace_);
    }
    static Gpa batch_gpa() { return Gpa{kBatchGfn << kPageShift}; }
    // Unmaps everything (not timed by callers).
    void reset() { (void)unpinner_->teardown(); }

    [[nodiscard]] BenchGuest& guest() { return guest_; }
    [[nodiscard]] dma::DmaBackend& backend() { return *backend_; }

private:
    BenchGuest guest_;
    std::unique_ptr<dma::DmaBackend> backend_;
    core::PinTable table_;
    workers::ExtentMap extents_;
    workers::ExtentHandoff handoff_;
    core::EndpointSet endpoints_;
    telemetry::StatsRegistry stats_;
    workers::PinEnv env_;
    uint64_t slot_ = 0;
    std::unique_ptr<workers::VcpuArena> arena_;
    telemetry::RequestTraceBatch trace_{0};
    workers::ParkGate gate_;
    std::unique_ptr<workers::ExtentUnpinner> unpinner_;
};

// The whole engine behind the device; the benchmark thread is vCPU 0.
class BenchVm {
public:
    BenchVm(workers::EngineConfig cfg, BackendKind backend, uint32_t vcpus = 1)
        : guest_(make_guest()), backend_(make_backend(backend)) {
        cfg.max_batch_pages = kMaxBatch;
        device_ = device::CoiommuDevice::create(device::DeviceConfig{{kBdf}, vcpus}).value();
        engine_ = workers::Engine::create(cfg, workers::device_deps(*device_, guest_.mem(), *backend_)).value();
        device_->set_engine(engine_.get());
        emulator::GuestDriverConfig g;
        g.mem = &guest_.mem();
        g.dtt = &guest_.dtt();
        g.notifymap_fd = device_->notifymap_fd();
        for (uint32_t i = 0; i < vcpus; ++i) g.trigger_fds.push_back(device_->trigger_fd(i));
        driver_ = emulator::GuestDriver::create(std::move(g)).value();
        for (uint32_t i = 0; i < vcpus; ++i) {
            vcpus_.push_back(driver_->vcpu({i, kBdf, Gpa{(kBatchGfn + 4 * i) << kPageShift}, kMaxBatch}).value());
        }
        write(core::kRegDttRoot, raw(guest_.root()));
        write(core::kRegDttLevel, guest_.levels());
        write(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate));
    }
    ~BenchVm() {
        engine_->stop();
        device_->set_engine(nullptr);
    }
    void write(uint64_t off, uint64_t v) {
        std::array<std::byte, 8> b{};
        std::memcpy(b.data(), &v, 8);
        device_->mmio_write(off, b);
    }
    // Sends a pin request for [first, first+n) from `vcpu` and waits for completion (the guest
    // protocol minus the DTT marking, which is guest-side cost).
    bool request(uint32_t vcpu, uint64_t first, uint64_t n) {
        gfns_.resize(n);
        for (uint64_t i = 0; i < n; ++i) gfns_[i] = Gfn{first + i};
        return vcpus_[vcpu].request_pins(kBdf, gfns_).has_value();
    }
    // Unpins every data page (balloon, force): not timed by callers.
    void reset() {
        const GfnRange r{Gfn{kDataFirst}, kDataPages};
        (void)engine_->balloon_unpin({&r, 1});
    }
    [[nodiscard]] workers::Engine& engine() { return *engine_; }
    [[nodiscard]] dma::DmaBackend& backend() { return *backend_; }
    [[nodiscard]] BenchGuest& guest() { return guest_; }

private:
    BenchGuest guest_;
    std::unique_ptr<dma::DmaBackend> backend_;
    std::unique_ptr<device::CoiommuDevice> device_;
    std::unique_ptr<workers::Engine> engine_;
    std::unique_ptr<emulator::GuestDriver> driver_;
    std::vector<emulator::VcpuDriver> vcpus_;
    std::vector<Gfn> gfns_;
};

// Walks the data range in `step`-page strides; calls reset() (untimed) when it wraps.
class Cursor {
public:
    explicit Cursor(uint64_t step) : step_(step) {}
    template <class Reset>
    uint64_t next(benchmark::State& state, Reset&& reset) {
        if (pos_ + step_ > kDataPages) {
            state.PauseTiming();
            reset();
            state.ResumeTiming();
            pos_ = 0;
        }
        const uint64_t first = kDataFirst + pos_;
        pos_ += step_;
        return first;
    }

private:
    uint64_t step_;
    uint64_t pos_ = 0;
};

}  // namespace coiommu::bench
