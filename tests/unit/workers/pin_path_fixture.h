// Shared arrangement for the single-threaded tests of the fast pin path and the unpinner: a 4-level
// DTT in 32 MiB of memfd guest RAM, a FakeBackend, the engine's tables, one vCPU arena whose slot
// is a plain word here, and an ExtentUnpinner over the same tables. No thread is started.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/core/pin_table.h"
#include "engine/core/request.h"
#include "engine/core/spec.h"
#include "engine/dma/fake_backend.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/unpinner.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu::workers::test {

inline constexpr uint16_t kBdf = 0x0018;                         // the passthrough device (00:03.0)
inline constexpr uint16_t kOtherBdf = 0x0020;                    // not an endpoint
inline constexpr uint64_t kRamBytes = uint64_t{32} << 20;        // 8192 gfns
inline constexpr uint64_t kPoolPages = 256;                      // DTT pages at the top of RAM
inline constexpr Gpa kBatchGpa{uint64_t{0x1E00} << kPageShift};  // below the pool (gfn 0x1E00)
inline constexpr uint64_t kMaxBatch = 1024;
inline constexpr Gfn kData{0x100};  // first data gfn used by tests

[[nodiscard]] inline Gfn gfn_at(uint64_t i) { return Gfn{raw(kData) + i}; }
[[nodiscard]] inline Iova iova_of(Gfn g) { return Iova{raw(g) << kPageShift}; }

struct PinPathOptions {
    dma::FakeConfig fake{};
    Coalesce coalesce = Coalesce::On;
    ExtentStoreKind store = ExtentStoreKind::Flat;
    LruParams lru{UnpinPolicy::Lru, std::nullopt, 3};
    bool valid_dtt = true;
};

// Builders (designated initializers would trip -Wmissing-field-initializers).
[[nodiscard]] inline PinPathOptions with_coalesce(Coalesce c) {
    PinPathOptions o;
    o.coalesce = c;
    return o;
}
[[nodiscard]] inline PinPathOptions with_entry_limit(uint64_t n) {
    PinPathOptions o;
    o.fake.entry_limit = n;
    return o;
}
[[nodiscard]] inline PinPathOptions with_store(ExtentStoreKind k) {
    PinPathOptions o;
    o.store = k;
    return o;
}
[[nodiscard]] inline PinPathOptions with_lru(UnpinPolicy policy, std::optional<uint64_t> limit, uint64_t threshold) {
    PinPathOptions o;
    o.lru = LruParams{policy, limit, threshold};
    return o;
}
[[nodiscard]] inline PinPathOptions with_invalid_dtt() {
    PinPathOptions o;
    o.valid_dtt = false;
    return o;
}

class PinPath {
public:
    explicit PinPath(const PinPathOptions& o = {})
        : builder_(testing::DttBuilder::create({4, kRamBytes, kPoolPages, 4}).value()),
          backend_(o.fake),
          table_(core::PinTable::create(builder_.mem().gfn_span()).value()),
          extents_(ExtentMap::create(builder_.mem().gfn_span(), o.store).value()),
          handoff_(ExtentHandoff::create(builder_.mem().gfn_span()).value()),
          endpoints_(std::vector<uint16_t>{kBdf}),
          stats_(1),
          env_{builder_.mem(),
               backend_,
               table_,
               extents_,
               handoff_,
               endpoints_,
               stats_.gauges(),
               core::RequestLimits{kMaxBatch},
               o.coalesce,
               0,
               o.lru.policy == UnpinPolicy::Lru,
               {}} {
        arena_ = VcpuArena::create(0, GuestAtomicU64(&slot_), -1, kMaxBatch, stats_.shard(0)).value();
        if (o.valid_dtt) {
            arena_->walker = builder_.walker().value();
        } else {
            env_.dtt_error = "invalid DTT (test)";
        }
        UnpinEnv uenv{builder_.mem(), backend_, table_, extents_, handoff_, stats_.gauges(), stats_.add_shard(), 0};
        unpinner_ = ExtentUnpinner::create(uenv, arena_->walker, o.lru, gate_).value();
    }

    // The guest marks every page (as a DMA map does) and puts a request in the slot; the engine
    // serves it. Returns the report.
    ServeReport map(std::span<const Gfn> gfns) {
        for (Gfn g : gfns) EXPECT_OK(builder_.mark(g));
        return serve(request_value(gfns));
    }
    ServeReport map_range(uint64_t first, uint64_t n) {
        std::vector<Gfn> g;
        for (uint64_t i = 0; i < n; ++i) g.push_back(gfn_at(first + i));
        return map(g);
    }
    // The slot value for a request naming `gfns` (a batch written at kBatchGpa when > 1 page).
    uint64_t request_value(std::span<const Gfn> gfns, uint16_t bdf = kBdf) {
        if (gfns.size() == 1) return (raw(gfns[0]) << core::kSingleGfnShift) | bdf;
        write_batch(bdf, gfns.size(), gfns);
        return raw(kBatchGpa) | core::kPinPagesInBatch;
    }
    void write_batch(uint16_t bdf, uint64_t nr_pages, std::span<const Gfn> gfns, Gpa at = kBatchGpa) {
        core::PinPageInfo info{};
        info.bdf = bdf;
        info.nr_pages = nr_pages;
        EXPECT_OK(mem().write_obj(at, info));
        for (std::size_t i = 0; i < gfns.size(); ++i) {
            EXPECT_OK(mem().write_obj(offset(at, sizeof info + 8 * i), raw(gfns[i])));
        }
    }
    ServeReport serve(uint64_t value) {
        slot_ = value;
        return serve_request(env_, *arena_, value, 0, trace_);
    }
    // The guest's DMA unmap of every page (count - 1), leaving ACCESSED set.
    void unmark(std::span<const Gfn> gfns) {
        for (Gfn g : gfns) EXPECT_OK(builder_.unmark(g));
    }
    void unmark_range(uint64_t first, uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) EXPECT_OK(builder_.unmark(gfn_at(first + i)));
    }
    // Clears ACCESSED on a page as a second-chance scan would, keeping the rest of the entry.
    void clear_accessed(Gfn g) {
        const uint32_t e = entry(g);
        EXPECT_OK(builder_.set_entry(g, e & ~core::kDtteAccessed));
    }

    [[nodiscard]] const GuestMemory& mem() const { return builder_.mem(); }
    [[nodiscard]] testing::DttBuilder& guest() { return builder_; }
    [[nodiscard]] dma::FakeBackend& backend() { return backend_; }
    [[nodiscard]] core::PinTable& table() { return table_; }
    [[nodiscard]] ExtentMap& extents() { return extents_; }
    [[nodiscard]] ExtentUnpinner& unpinner() { return *unpinner_; }
    [[nodiscard]] ParkGate& gate() { return gate_; }
    [[nodiscard]] telemetry::StatsRegistry& stats() { return stats_; }
    [[nodiscard]] telemetry::ShardTotals totals() const { return stats_.snapshot().totals; }
    [[nodiscard]] uint64_t slot() const { return slot_; }
    [[nodiscard]] uint32_t entry(Gfn g) const { return builder_.entry(g).value_or(0xdeadbeefu); }
    [[nodiscard]] bool pinned(Gfn g) const { return builder_.pinned(g); }
    [[nodiscard]] bool mapped(Gfn g) const { return backend_.is_mapped(iova_of(g), kPageSize); }
    [[nodiscard]] uint64_t map_calls() const { return backend_.counters().map_calls.load(); }
    [[nodiscard]] uint64_t unmap_calls() const { return backend_.counters().unmap_calls.load(); }
    [[nodiscard]] PinEnv& env() { return env_; }

private:
    testing::DttBuilder builder_;
    dma::FakeBackend backend_;
    core::PinTable table_;
    ExtentMap extents_;
    ExtentHandoff handoff_;
    core::EndpointSet endpoints_;
    mutable telemetry::StatsRegistry stats_;
    PinEnv env_;
    uint64_t slot_ = 0;
    std::unique_ptr<VcpuArena> arena_;
    telemetry::RequestTraceBatch trace_{0};
    ParkGate gate_;
    std::unique_ptr<ExtentUnpinner> unpinner_;
};

}  // namespace coiommu::workers::test
