#include "tests/unit/exporter/engine_vm.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <random>
#include <span>
#include <string>

#include "engine/core/spec.h"

namespace coiommu::exporter::testing {
namespace {

constexpr uint16_t kBdf = 0x0018;
constexpr uint64_t kRamBytes = uint64_t{64} << 20;  // 16384 gfns
constexpr uint64_t kPoolPages = 512;                // DTT tables: gfns 0x3E00..0x3FFF
constexpr uint64_t kBatchAreaGfn = 0x3C00;          // 4 pages of PinPageInfo per vCPU
constexpr uint64_t kBatchCapacity = 1024;           // 16 + 8 * 1024 bytes <= 4 pages
constexpr uint64_t kBalloonFirst = 0x100;           // the balloon thread's range
constexpr uint64_t kBalloonPages = 256;
constexpr uint64_t kSharedFirst = kBalloonFirst + kBalloonPages;  // Mixed: every load vCPU maps here
constexpr uint64_t kSharedPages = 64;
constexpr uint64_t kLoadFirst = kSharedFirst + kSharedPages;
constexpr uint64_t kRangePages = 1536;  // per load vCPU
constexpr uint64_t kHotPages = 256;     // Mixed: the start of the range is hot
constexpr uint32_t kMaxLoadVcpus = 8;   // kLoadFirst + 8 * kRangePages <= kBatchAreaGfn
static_assert(kLoadFirst + kMaxLoadVcpus * kRangePages <= kBatchAreaGfn);
static_assert(kBatchAreaGfn + 4 * (kMaxLoadVcpus + 1) <= kRamBytes / kPageSize - kPoolPages);

std::vector<Gfn> gfn_run(uint64_t first, uint64_t n) {
    std::vector<Gfn> g(n);
    for (uint64_t i = 0; i < n; ++i) g[i] = Gfn{first + i};
    return g;
}

}  // namespace

workers::EngineConfig EngineVmOptions::default_engine_config() {
    workers::EngineConfig cfg;
    cfg.variant = workers::Variant::Fast;
    cfg.workers = 1;
    cfg.spin_budget = std::chrono::microseconds(20);
    cfg.max_batch_pages = kBatchCapacity;
    cfg.unpin_policy = workers::UnpinPolicy::Lru;
    cfg.unpin_interval = std::chrono::milliseconds(100);
    cfg.unpin_gen_threshold = 2;
    return cfg;
}

Result<std::unique_ptr<EngineVm>> EngineVm::create(const EngineVmOptions& options) {
    if (options.load_vcpus == 0 || options.load_vcpus > kMaxLoadVcpus) {
        return make_error(EINVAL, "engine vm: load_vcpus must be 1..8");
    }
    if (options.max_pages == 0 || options.max_pages > kBatchCapacity || options.max_pages > kHotPages) {
        return make_error(EINVAL, "engine vm: max_pages must be 1..256");
    }
    std::unique_ptr<EngineVm> vm(new EngineVm());
    vm->opts_ = options;
    vm->opts_.engine.max_batch_pages = kBatchCapacity;
    const uint32_t vcpus = options.load_vcpus + 1;  // + the balloon thread's vCPU

    const std::array<RegionSpec, 1> regions{{{Gpa{0}, kRamBytes}}};
    auto mem = GuestMemory::create(regions);
    if (!mem) return coiommu::unexpected(mem.error());
    vm->mem_ = std::make_unique<GuestMemory>(std::move(*mem));
    emulator::GuestDttConfig dcfg;
    dcfg.levels = 4;
    dcfg.pool_base = Gpa{(kRamBytes / kPageSize - kPoolPages) << kPageShift};
    dcfg.pool_pages = kPoolPages;
    dcfg.ncpus = vcpus;
    auto dtt = emulator::GuestDtt::create(*vm->mem_, dcfg);
    if (!dtt) return coiommu::unexpected(dtt.error());
    vm->dtt_ = std::move(*dtt);

    dma::FakeConfig fcfg;
    fcfg.latency = options.latency;
    vm->backend_ = std::make_unique<dma::FakeBackend>(fcfg);
    auto dev = device::CoiommuDevice::create(device::DeviceConfig{{kBdf}, vcpus});
    if (!dev) return coiommu::unexpected(dev.error());
    vm->device_ = std::move(*dev);
    auto engine =
        workers::Engine::create(vm->opts_.engine, workers::device_deps(*vm->device_, *vm->mem_, *vm->backend_));
    if (!engine) return coiommu::unexpected(engine.error());
    vm->engine_ = std::move(*engine);
    vm->device_->set_engine(vm->engine_.get());

    emulator::GuestDriverConfig gcfg;
    gcfg.mem = vm->mem_.get();
    gcfg.dtt = vm->dtt_.get();
    gcfg.notifymap_fd = vm->device_->notifymap_fd();
    // Share the device's mapping of the notifymap: ThreadSanitizer tracks atomics by address and
    // cannot follow them across two mappings of one memfd page.
    gcfg.notify_slots = vm->device_->notify_slots();
    for (uint32_t i = 0; i < vcpus; ++i) gcfg.trigger_fds.push_back(vm->device_->trigger_fd(i));
    auto driver = emulator::GuestDriver::create(std::move(gcfg));
    if (!driver) return coiommu::unexpected(driver.error());
    vm->driver_ = std::move(*driver);
    for (uint32_t i = 0; i < vcpus; ++i) {
        auto v = vm->driver_->vcpu({i, kBdf, Gpa{(kBatchAreaGfn + 4 * i) << kPageShift}, kBatchCapacity});
        if (!v) return coiommu::unexpected(v.error());
        vm->vcpus_.push_back(std::move(*v));
    }

    // The guest driver's probe: dtt_root, dtt_level, ACTIVATE through BAR0.
    const auto write = [&vm](uint64_t off, uint64_t value) {
        std::array<std::byte, 8> b{};
        std::memcpy(b.data(), &value, sizeof(value));
        vm->device_->mmio_write(off, b);
    };
    write(core::kRegDttRoot, raw(vm->dtt_->dtt_root()));
    write(core::kRegDttLevel, vm->dtt_->levels());
    write(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate));
    if (!vm->device_->active()) return make_error(EIO, "engine vm: ACTIVATE did not take");
    return vm;
}

EngineVm::~EngineVm() { stop(); }

EngineInfo EngineVm::engine_info() const {
    EngineInfo info;
    info.build = this_build();
    info.config.unpin_policy = std::string(workers::to_string(opts_.engine.unpin_policy));
    info.config.coalesce = opts_.engine.coalesce == workers::Coalesce::On ? "on" : "off";
    info.config.backend = "fake";
    info.config.unpin_interval_seconds = std::chrono::duration<double>(opts_.engine.unpin_interval).count();
    info.config.unpin_gen_threshold = opts_.engine.unpin_gen_threshold;
    return info;
}

void EngineVm::start() {
    if (!threads_.empty() || stopped_) return;
    for (uint32_t v = 0; v < opts_.load_vcpus; ++v) threads_.emplace_back([this, v] { load_loop(v); });
    if (opts_.pattern == LoadPattern::Mixed && opts_.balloon_every.count() > 0) {
        threads_.emplace_back([this] { balloon_loop(opts_.load_vcpus); });
    }
}

void EngineVm::stop() {
    if (stopped_) return;
    stopped_ = true;
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : threads_) t.join();
    threads_.clear();
    if (engine_) engine_->stop();
    if (device_) device_->set_engine(nullptr);
}

void EngineVm::load_loop(uint32_t vcpu) {
    emulator::VcpuDriver& drv = vcpus_[vcpu];
    const uint64_t base = kLoadFirst + vcpu * kRangePages;
    std::mt19937_64 rng(0xC0110 + vcpu);
    const auto pick = [&rng](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    uint64_t cursor = 0;  // Fresh: next never-pinned page of the range
    while (!stop_.load(std::memory_order_relaxed)) {
        uint64_t first = 0;
        uint64_t n = opts_.max_pages;
        if (opts_.pattern == LoadPattern::Fresh) {
            if (cursor + n > kRangePages) {
                // Every page of the range is unmapped (map count 0), so the balloon unpins them all.
                const GfnRange r{Gfn{base}, kRangePages};
                (void)engine_->balloon_unpin({&r, 1});
                cursor = 0;
            }
            first = base + cursor;
            cursor += n;
        } else {
            n = pick(4) == 0 ? 1 : 1 + pick(opts_.max_pages);
            switch (pick(8)) {
                case 0:  // cold: idle afterwards, for the LRU unpinner
                    first = base + kHotPages + pick(kRangePages - kHotPages - n + 1);
                    break;
                case 1:  // shared with the other vCPUs: concurrent requests for the same pages
                case 2:
                    n = std::min(n, kSharedPages);
                    first = kSharedFirst + pick(kSharedPages - n + 1);
                    break;
                default: first = base + pick(kHotPages - n + 1); break;
            }
        }
        const auto gfns = gfn_run(first, n);
        if (auto r = drv.map(gfns); !r) {
            failures_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        if (opts_.hold.count() > 0) std::this_thread::sleep_for(opts_.hold);
        (void)drv.unmap(gfns);
        maps_.fetch_add(1, std::memory_order_relaxed);
        pages_.fetch_add(n, std::memory_order_relaxed);
    }
}

void EngineVm::balloon_loop(uint32_t vcpu) {
    emulator::VcpuDriver& drv = vcpus_[vcpu];
    const auto gfns = gfn_run(kBalloonFirst, kBalloonPages);
    while (!stop_.load(std::memory_order_relaxed)) {
        // The VMM's balloon: pages the guest used for DMA and released, then gives back.
        for (uint64_t i = 0; i < kBalloonPages; i += 64) {
            const std::span<const Gfn> part(gfns.data() + i, 64);
            if (drv.map(part)) (void)drv.unmap(part);
        }
        const GfnRange r{Gfn{kBalloonFirst}, kBalloonPages};
        (void)engine_->balloon_unpin({&r, 1});
        const auto deadline = std::chrono::steady_clock::now() + opts_.balloon_every;
        while (!stop_.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
}

}  // namespace coiommu::exporter::testing
