// PinPath: the fast engine's pin path (serve_request) called on the test thread over a real DMA
// backend (type1 or iommufd) inside the QEMU guest, with a DTT whose leaf tables exist for the
// pages it serves: tests/bench/workers' PinDirect with the backend borrowed. For P7 and the
// capacity cases (tests/vm/p7_vmtest.cc, iommufd_vmtest.cc).
//
// Thread-safety: none (one test thread).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/dma/backend.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/unpinner.h"

namespace coiommu::testing {

inline constexpr uint16_t kPinPathBdf = 0x0018;
inline constexpr uint64_t kPinPathPoolPages = 512;  // DTT pages at the top of RAM
inline constexpr uint64_t kPinPathMaxBatch = 64;

struct PinPathLayout {
    uint64_t ram_bytes = uint64_t{64} << 20;  // from GPA 0
    uint64_t first = 0x100;                   // served pages: [first, first + pages)
    uint64_t pages = 1024;
    uint64_t batch_gfn = 0x3000;  // the PinPageInfo buffer (outside the served pages)
};

// The fast pin path on this thread over the real container: PinDirect of tests/bench/workers,
// with the VFIO backend borrowed.
class PinPath {
public:
    // Errors: guest memory, DTT and engine structure creation.
    static Result<std::unique_ptr<PinPath>> create(dma::DmaBackend& backend, const PinPathLayout& layout = {}) {
        std::unique_ptr<PinPath> p(new PinPath(layout));
        const RegionSpec ram{Gpa{0}, layout.ram_bytes};
        COIOMMU_ASSIGN_OR_RETURN(p->mem_, GuestMemory::create({&ram, 1}));
        emulator::GuestDttConfig cfg;
        cfg.levels = 4;
        cfg.pool_base = Gpa{layout.ram_bytes - kPinPathPoolPages * kPageSize};
        cfg.pool_pages = kPinPathPoolPages;
        cfg.ncpus = 1;
        COIOMMU_ASSIGN_OR_RETURN(p->dtt_, emulator::GuestDtt::create(p->mem_, cfg));
        for (uint64_t g = layout.first; g < layout.first + layout.pages; ++g) {
            COIOMMU_TRY(p->dtt_->mark(Gfn{g}));  // creates the leaf tables; map count 1 throughout
        }
        const uint64_t gfns = p->mem_.gfn_span();
        COIOMMU_ASSIGN_OR_RETURN(p->table_, core::PinTable::create(gfns));
        COIOMMU_ASSIGN_OR_RETURN(p->extents_, workers::ExtentMap::create(gfns, workers::ExtentStoreKind::Flat));
        COIOMMU_ASSIGN_OR_RETURN(p->handoff_, workers::ExtentHandoff::create(gfns));
        p->env_ = std::make_unique<workers::PinEnv>(workers::PinEnv{p->mem_,
                                                                    backend,
                                                                    *p->table_,
                                                                    *p->extents_,
                                                                    *p->handoff_,
                                                                    p->endpoints_,
                                                                    p->stats_.gauges(),
                                                                    core::RequestLimits{kPinPathMaxBatch},
                                                                    workers::Coalesce::On,
                                                                    0,
                                                                    /*track_extents=*/false,
                                                                    {}});
        COIOMMU_ASSIGN_OR_RETURN(p->arena_, workers::VcpuArena::create(0, GuestAtomicU64(&p->slot_), -1,
                                                                       kPinPathMaxBatch, p->stats_.shard(0)));
        COIOMMU_ASSIGN_OR_RETURN(p->arena_->walker,
                                 core::DttWalker::create(p->mem_, p->dtt_->dtt_root(), p->dtt_->levels()));
        const workers::UnpinEnv uenv{
            p->mem_, backend, *p->table_, *p->extents_, *p->handoff_, p->stats_.gauges(), p->stats_.add_shard(), 0};
        COIOMMU_ASSIGN_OR_RETURN(p->unpinner_, workers::ExtentUnpinner::create(uenv, p->arena_->walker, {}, p->gate_));
        return p;
    }

    // One single-page request for `gfn`; true when it is PINNED afterwards.
    bool single(Gfn gfn) { return serve((raw(gfn) << 16) | kPinPathBdf).result == 0; }
    // One batch request for [first, first + n).
    bool batch(Gfn first, uint64_t n) {
        core::PinPageInfo info{};
        info.bdf = kPinPathBdf;
        info.nr_pages = n;
        if (!mem_.write_obj(batch_gpa(), info)) return false;
        for (uint64_t i = 0; i < n; ++i) {
            if (!mem_.write_obj(offset(batch_gpa(), 16 + 8 * i), raw(first) + i)) return false;
        }
        return serve(raw(batch_gpa()) | core::kPinPagesInBatch).result == 0;
    }
    // One batch request for exactly `gfns` (any order, gaps allowed).
    bool batch(std::span<const Gfn> gfns) {
        core::PinPageInfo info{};
        info.bdf = kPinPathBdf;
        info.nr_pages = gfns.size();
        if (!mem_.write_obj(batch_gpa(), info)) return false;
        for (size_t i = 0; i < gfns.size(); ++i) {
            if (!mem_.write_obj(offset(batch_gpa(), 16 + 8 * i), raw(gfns[i]))) return false;
        }
        return serve(raw(batch_gpa()) | core::kPinPagesInBatch).result == 0;
    }
    // Unmaps everything the path mapped (untimed).
    uint64_t reset() { return unpinner_->teardown(); }
    [[nodiscard]] const GuestMemory& mem() const { return mem_; }
    // PINNED in the guest's leaf entry of `gfn`.
    [[nodiscard]] bool pinned(Gfn gfn) const { return dtt_->pinned(gfn); }
    // The engine's statistics of the requests served.
    [[nodiscard]] telemetry::StatsSnapshot stats() const { return stats_.snapshot(); }
    [[nodiscard]] telemetry::ShardTotals totals() const { return stats_.snapshot().totals; }

private:
    explicit PinPath(const PinPathLayout& layout)
        : layout_(layout), endpoints_(std::vector<uint16_t>{kPinPathBdf}), stats_(1) {}
    [[nodiscard]] Gpa batch_gpa() const { return Gpa{layout_.batch_gfn << kPageShift}; }
    workers::ServeReport serve(uint64_t value) {
        slot_ = value;
        return workers::serve_request(*env_, *arena_, value, telemetry::monotonic_ns(), trace_);
    }

    PinPathLayout layout_;
    GuestMemory mem_;
    std::unique_ptr<emulator::GuestDtt> dtt_;
    std::optional<core::PinTable> table_;
    std::optional<workers::ExtentMap> extents_;
    std::optional<workers::ExtentHandoff> handoff_;
    core::EndpointSet endpoints_;
    telemetry::StatsRegistry stats_;
    std::unique_ptr<workers::PinEnv> env_;
    uint64_t slot_ = 0;
    std::unique_ptr<workers::VcpuArena> arena_;
    telemetry::RequestTraceBatch trace_{0};
    workers::ParkGate gate_;
    std::unique_ptr<workers::ExtentUnpinner> unpinner_;
};

}  // namespace coiommu::testing
