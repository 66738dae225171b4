// SeedPinner: crosvm's CoIOMMU algorithm (the 2022 backend plus upstream's LRU;
// engine/README.md, "Pin path" to "LRU and balloon unpinning"), small and serial, as the baseline
// of every benchmark and the oracle of the differential test.
//
//   - one pin thread blocks in epoll on the per-vCPU triggers (no spinning); per trigger it reads
//     the eventfd (a read failure zeroes the slot and ends the thread, as in crosvm), reads the
//     slot, and pins the request's pages one by one with core::pin_page (4 KiB maps) while holding
//     ONE global mutex for the whole request; then a full fence and slot := 0, also after errors;
//   - the unpinner (UnpinService thread) takes the same mutex per page: LRU per page with new/old
//     generations (crosvm's quirk kept: with threshold 0 a busy page is dropped from tracking), and
//     balloon requests per page with force; PARK stops both;
//   - stop joins both threads and unmaps every page still recorded in the PinTable.
// Differences from crosvm are those of the primitives (pinner.h: the host record decides).
// Pages mapped by someone else (EEXIST) are never tracked for LRU (they are not ours to unmap); a
// page of ours re-pinned after the guest cleared its entry (crosvm's EEXIST path) is tracked again.
// Balloon: only the pages we map, per range, each range with its result (unpinner.h, "Balloon").
// Every scan and balloon request walks with its own DTT cursor, reset after each park.
//
// Thread-safety: PinEngine's (Engine serialises the lifecycle calls); new_gen_size/old_gen_size from
// any thread.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/core/dtt.h"
#include "engine/core/pin_table.h"
#include "engine/core/pinner.h"
#include "engine/core/request.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/config.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/pin_engine.h"
#include "engine/workers/unpinner.h"

namespace coiommu::workers {

class SeedPinner final : public PinEngine, private UnpinStrategy {
public:
    // Errors: as FastEngine::create.
    [[nodiscard]] static Result<std::unique_ptr<SeedPinner>> create(const EngineConfig& cfg, const EngineDeps& deps,
                                                                    telemetry::StatsRegistry& stats, ParkGate& gate);
    ~SeedPinner() override;

    [[nodiscard]] Result<UnpinStrategy*> prepare(Gpa dtt_root, uint64_t dtt_level) override;
    [[nodiscard]] Status adopt(std::span<const GfnRange> extents) override;
    [[nodiscard]] Status start_pinning() override;
    void stop_pinning() override;
    uint64_t teardown() override;
    [[nodiscard]] uint64_t recorded_pages() const override { return table_.mapped_pages(); }

    [[nodiscard]] const core::PinTable& pin_table() const { return table_; }
    // LRU queue lengths (tests; takes the global mutex).
    [[nodiscard]] std::size_t new_gen_size();
    [[nodiscard]] std::size_t old_gen_size();

private:
    struct Entry {
        uint64_t gfn = 0;
        uint32_t busy = 0;
    };
    enum class Gen : uint8_t { New, Old };
    // What one request did, page by page (counted into the vCPU's stats shard).
    struct Tally {
        uint64_t pages = 0, newly = 0, already = 0, map_failed = 0, no_space = 0, invalid = 0;
        int first_error = 0;
    };

    SeedPinner(const EngineConfig& cfg, const EngineDeps& deps, telemetry::StatsRegistry& stats, ParkGate& gate,
               core::PinTable table);

    void run_pin();
    void pin_pages(uint32_t vcpu, uint64_t value, uint64_t t0);
    Tally pin_request(uint32_t vcpu, const core::DecodedRequest& req);
    void record(telemetry::StatsShard& s, telemetry::RequestKind kind, const Tally& t);
    // UnpinStrategy
    void tick() override;
    [[nodiscard]] telemetry::BalloonResult balloon(std::span<const GfnRange> ranges,
                                                   std::span<telemetry::BalloonResult> per_range = {}) override;
    void fresh_cursor_after_park(core::DttWalker& walker, uint64_t& epoch) const;
    // One unpinned page's counts (unpin stats, pinned gauge). Called inside the gated unit.
    void count_unpinned();
    uint64_t scan(Gen gen, std::optional<uint64_t> limit, uint64_t* examined);

    EngineConfig cfg_;
    const GuestMemory& mem_;
    dma::DmaBackend& backend_;
    std::span<uint64_t> slots_;
    std::vector<int> trigger_fds_;
    telemetry::StatsRegistry& stats_;
    std::vector<telemetry::StatsShard*> shards_;  // one per vCPU
    telemetry::StatsShard* unpin_stats_ = nullptr;
    core::PinTable table_;
    core::EndpointSet endpoints_;
    core::PinContext ctx_;

    std::mutex mu_;  // THE global lock: held per pin request and per unpinned page (as crosvm)
    std::optional<core::DttWalker> walker_;
    std::string dtt_error_;
    std::deque<Entry> new_gen_;  // guarded by mu_
    std::deque<Entry> old_gen_;  // guarded by mu_
    uint64_t tick_counter_ = 0;  // unpin thread only

    ParkGate& gate_;
    EventFd stop_ev_;
    std::thread pin_thread_;
    bool pinning_stopped_ = false;
};

}  // namespace coiommu::workers
