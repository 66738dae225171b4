// Unpinning: crosvm's LRU generations and balloon-forced unpin, over extents.
//
// ExtentUnpinner is the single-threaded policy (it runs on the unpin service thread, or on the
// caller's thread in tests and at teardown). UnpinService is the thread around a policy: a timer
// every unpin_interval, synchronous requests (balloon, "tick now"), and stop.
//
// LRU (upstream crosvm's, engine/README.md, "LRU and balloon unpinning"), with the extent as the
// tracked unit:
//  - every extent the pin workers create reaches new_gen through the ExtentHandoff (lock-free);
//  - a tick: if unpin_gen_threshold != 0, tick_counter += 1 and when it reaches the threshold it is
//    reset and old_gen is scanned with limit = unpin_limit; then new_gen is scanned with
//    limit = unpin_limit - (pages unpinned from old_gen), saturating; a resulting limit of 0 means no
//    new_gen scan; no unpin_limit = unlimited;
//  - a scan pops entries from the front until the queue's entries at the start of the scan were
//    all examined or `limit` pages were unpinned. Per extent:
//      Unpinned / NotPinned  -> dropped from tracking
//      NotUnpinned (busy: a member has a map count or ACCESSED; ACCESSED is cleared on the busy
//                  members: the second chance) -> busy_count += 1; requeued to old_gen when it came
//                  from old_gen or busy_count >= threshold, else to new_gen with its count
//      Failed -> requeued to its generation (old_gen entries carry no count)
//      Parked      -> put back at the front untouched; the scan ends
//    requeued entries go to the back after the scan, so each is examined at most once per tick;
//  - unpin_limit counts pages; an extent is unpinned whole, so a tick may exceed the limit by at
//    most one extent's length - 1.
//  - threshold 0 (generations off). crosvm drops a busy page from tracking for good, so it is
//    never LRU-unpinned again (a leak of pinned memory under a long-running guest). We keep it in
//    new_gen instead (a plain second-chance clock). Decided here; tested in lru tests.
//
// Extent unpin as a unit (type1 v2 cannot bisect a mapping): lock every member page ascending; for
// each member CAS its leaf entry from exactly PINNED to 0 (an entry that is already 0 is idle too;
// a member whose DTT table is gone cannot be mapped by the guest and counts as idle); if a member is
// busy, restore PINNED on the members already cleared and abort (NotUnpinned); otherwise one
// unmap_exact() over the extent: failure restores PINNED on every member (Failed), success
// clears the records (Unpinned).
//
// Balloon (force), one pass per range: only the pages we map are visited (the parts of the range
// inside guest RAM regions, and there only the PinTable's touched chunks), so a range of 2^64
// gfns costs what the pages we map cost. A page we do not map is left alone, DTT included
// (engine/README.md, "LRU and balloon unpinning", lists this against crosvm). A page we map is
// unpinned with its whole extent, ACCESSED force-cleared on every member - also members outside
// the ranges, because a mapping cannot be split: the extent is released only if no member has a
// map count. Unpinned / NotPinned go on; anything else fails the range, which stops there; the
// next range still runs, and each range gets its own result (any failure makes the request
// Failed). While parked, the request waits and retries the page; when the engine stops (the
// gate's stopping(), polled per page) the request ends at once, Failed.
//
// Thread-safety: ExtentUnpinner is single-threaded (one owner at a time); the pin workers only
// touch it through the ExtentHandoff. UnpinService methods may be called from any thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/core/dtt.h"
#include "engine/core/pin_table.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/arena.h"
#include "engine/workers/config.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/pin_engine.h"

namespace coiommu::workers {

struct LruParams {
    UnpinPolicy policy = UnpinPolicy::Off;
    std::optional<uint64_t> limit;  // pages per tick
    uint64_t gen_threshold = 10;
};

// What a policy does on the service thread.
class UnpinStrategy {
public:
    virtual ~UnpinStrategy() = default;
    virtual void tick() = 0;
    // Force-unpins the pages we map in `ranges`; per_range (empty, or one per range) receives each
    // range's result; the return is Failed when any range failed.
    [[nodiscard]] virtual telemetry::BalloonResult balloon(std::span<const GfnRange> ranges,
                                                           std::span<telemetry::BalloonResult> per_range = {}) = 0;
};

// Calls f(first, end) for each part [first, end) of `range` that lies in a guest RAM region,
// ascending; a count up to 2^64 - 1 is clamped, never looped over. f returns false to stop;
// returns false when it did.
template <class F>
bool for_each_ram_part(const GuestMemory& mem, const GfnRange& range, F&& f) {
    const uint64_t start = raw(range.start);
    const uint64_t end = range.count > ~uint64_t{0} - start ? ~uint64_t{0} : start + range.count;
    for (const auto& r : mem.regions()) {
        const uint64_t lo = std::max(start, raw(r.base) >> kPageShift);
        const uint64_t hi = std::min(end, (raw(r.base) + r.size) >> kPageShift);
        if (lo < hi && !f(Gfn{lo}, hi)) return false;
    }
    return true;
}

struct UnpinEnv {
    const GuestMemory& mem;
    dma::DmaBackend& backend;
    core::PinTable& table;
    ExtentMap& extents;
    ExtentHandoff& handoff;
    telemetry::EngineGauges& gauges;
    telemetry::StatsShard& stats;
    uint32_t session = 0;
};

class ExtentUnpinner final : public UnpinStrategy {
public:
    struct Entry {
        uint64_t head = 0;
        uint32_t busy = 0;  // consecutive busy scans (new_gen only)
    };

    // `walker`: nullopt when the DTT is invalid (nothing can have been pinned).
    // Errors: the tracking bitmap's allocation (FlatArray).
    [[nodiscard]] static Result<std::unique_ptr<ExtentUnpinner>> create(const UnpinEnv& env,
                                                                        std::optional<core::DttWalker> walker,
                                                                        const LruParams& params, ParkGate& gate);

    // One LRU tick (drains new extents first). A no-op scan while parked or with policy off.
    void tick() override;
    [[nodiscard]] telemetry::BalloonResult balloon(std::span<const GfnRange> ranges,
                                                   std::span<telemetry::BalloonResult> per_range = {}) override;
    // Takes newly created extents into new_gen.
    void drain();
    // Unmaps every extent we hold (busy or not), clears PINNED on their pages, forgets them. For
    // engine stop, after every pin worker has stopped. Returns the pages unmapped.
    uint64_t teardown();

    // Introspection (same thread only).
    [[nodiscard]] const std::deque<Entry>& new_gen() const { return new_gen_; }
    [[nodiscard]] const std::deque<Entry>& old_gen() const { return old_gen_; }
    [[nodiscard]] uint64_t tick_counter() const { return tick_counter_; }

    // Unpins the extent whose head is `head` as a unit (see the file comment). Same thread only.
    // `pages` receives the extent's length (0 when there is none).
    UnpinResult unpin_extent(Gfn head, core::Force force, uint32_t* pages = nullptr);

private:
    enum class Gen : uint8_t { New, Old };

    ExtentUnpinner(const UnpinEnv& env, std::optional<core::DttWalker> walker, const LruParams& params, ParkGate& gate);

    // Returns pages unpinned; adds to *examined.
    uint64_t scan(Gen gen, std::optional<uint64_t> limit, uint64_t* examined);
    UnpinResult unpin_locked_extent(Gfn head, uint32_t len, core::Force force);
    // Force-unpins the extent holding `gfn` (a page we map); `pages` receives its length.
    UnpinResult balloon_page(Gfn gfn, uint32_t* pages);
    uint64_t force_unmap(Gfn head);
    // One DMA unmap of the extent [head, head + len): timed, probed (dma_unmap) and counted
    // (calls, latency, bytes or failures). Precondition: the extent's page locks are held.
    [[nodiscard]] Status unmap_extent(Gfn head, uint32_t len);
    void track(uint64_t head);
    void untrack(uint64_t head);
    [[nodiscard]] bool tracked(uint64_t head) const;
    void count_attempt(UnpinResult r, uint64_t pages);

    UnpinEnv env_;
    std::optional<core::DttWalker> walker_;
    LruParams params_;
    ParkGate& gate_;
    std::deque<Entry> new_gen_;
    std::deque<Entry> old_gen_;
    std::vector<Entry> requeue_new_;
    std::vector<Entry> requeue_old_;
    std::vector<uint64_t> tracked_;  // one bit per gfn: the head is in new_gen_ or old_gen_
    uint64_t tick_counter_ = 0;
    std::array<core::PinTable::PageLock, kMaxExtentPages> locks_;
    std::array<uint32_t*, kMaxExtentPages> leaves_{};
    std::array<bool, kMaxExtentPages> cleared_{};
};

// The thread that runs a policy: a timer tick every `interval` (when the policy is LRU and the
// interval non-zero), and requests from other threads executed in order.
class UnpinService {
public:
    struct Options {
        UnpinPolicy policy = UnpinPolicy::Off;
        std::chrono::nanoseconds interval{0};
        const char* thread_name = "coiommu-unpin";
    };

    // Starts the thread. `strategy` and `gate` must outlive the service.
    // Errors: errno of eventfd/timerfd/epoll; EAGAIN when the thread cannot start.
    [[nodiscard]] static Result<std::unique_ptr<UnpinService>> start(UnpinStrategy& strategy, ParkGate& gate,
                                                                     const Options& opts);
    ~UnpinService();
    UnpinService(const UnpinService&) = delete;
    UnpinService& operator=(const UnpinService&) = delete;

    // Runs on the service thread; blocks until done. Errors: ECANCELED when stopped first.
    // `per_range`: empty, or one result per range (EINVAL otherwise).
    [[nodiscard]] Result<telemetry::BalloonResult> balloon(std::span<const GfnRange> ranges,
                                                           std::span<telemetry::BalloonResult> per_range = {});
    [[nodiscard]] Status tick_now();
    // Stops and joins the thread (pending requests fail with ECANCELED). Idempotent.
    void stop();
    // Timer ticks run so far (tests).
    [[nodiscard]] uint64_t timer_ticks() const { return timer_ticks_.load(std::memory_order_relaxed); }

private:
    struct Request {
        std::span<const GfnRange> ranges;
        std::span<telemetry::BalloonResult> per_range;
        bool is_balloon = false;
        bool done = false;
        bool cancelled = false;
        telemetry::BalloonResult result = telemetry::BalloonResult::Failed;
    };

    UnpinService(UnpinStrategy& strategy, ParkGate& gate) : strategy_(strategy), gate_(gate) {}
    void run();
    [[nodiscard]] Status submit(Request& req);

    UnpinStrategy& strategy_;
    ParkGate& gate_;
    UniqueFd epoll_;
    UniqueFd timer_;
    EventFd stop_ev_;
    EventFd wake_ev_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Request*> requests_;
    bool stopped_ = false;
    std::atomic<uint64_t> timer_ticks_{0};
    std::thread thread_;
};

}  // namespace coiommu::workers
