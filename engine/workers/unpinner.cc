// ExtentUnpinner and UnpinService (see unpinner.h for the policy).
//
// Memory orders on the guest's leaf words are seq_cst for every PINNED/ACCESSED RMW and CAS, as in
// crosvm and in pinner.cc: the unpin CAS must be ordered against the guest's "increment the map
// count, then test PINNED" (a Dekker pair); on x86 every locked RMW is a full barrier anyway.
#include "engine/workers/unpinner.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/probes.h"
#include "engine/telemetry/request_trace.h"

namespace coiommu::workers {
namespace {

constexpr const char* kLog = "unpin";
constexpr uint64_t kStopToken = 1;
constexpr uint64_t kTimerToken = 2;
constexpr uint64_t kWakeToken = 3;

using telemetry::DmaOp;
using telemetry::ScanKind;

// This thread's unmap records for the tracer (request_trace.h), handed over when full and at the
// end of every scan and teardown: one probe hit per batch of unmaps, not per unmap.
telemetry::DmaTraceBatch& unmap_trace(uint32_t session) {
    thread_local telemetry::DmaTraceBatch batch(session);
    batch.set_session(session);
    return batch;
}

}  // namespace

// ---- ExtentUnpinner ---------------------------------------------------------------------------

ExtentUnpinner::ExtentUnpinner(const UnpinEnv& env, std::optional<core::DttWalker> walker, const LruParams& params,
                               ParkGate& gate)
    : env_(env), walker_(std::move(walker)), params_(params), gate_(gate) {}

Result<std::unique_ptr<ExtentUnpinner>> ExtentUnpinner::create(const UnpinEnv& env,
                                                               std::optional<core::DttWalker> walker,
                                                               const LruParams& params, ParkGate& gate) {
    std::unique_ptr<ExtentUnpinner> u(new ExtentUnpinner(env, std::move(walker), params, gate));
    u->tracked_.assign((env.table.size() + 63) / 64, 0);
    return u;
}

void ExtentUnpinner::track(uint64_t head) { tracked_[head >> 6] |= uint64_t{1} << (head & 63); }
void ExtentUnpinner::untrack(uint64_t head) { tracked_[head >> 6] &= ~(uint64_t{1} << (head & 63)); }
bool ExtentUnpinner::tracked(uint64_t head) const { return (tracked_[head >> 6] >> (head & 63) & 1) != 0; }

void ExtentUnpinner::drain() {
    env_.handoff.drain([&](Gfn head) {
        // Without LRU nothing needs the generations (teardown scans the PinTable instead), so the
        // lists stay empty rather than grow with every extent ever created.
        if (params_.policy != UnpinPolicy::Lru) return;
        // A head already tracked (its previous extent was ballooned and a new one starts at the same
        // gfn) keeps its one entry: each extent is examined at most once per tick.
        if (tracked(raw(head))) return;
        track(raw(head));
        new_gen_.push_back(Entry{raw(head), 0});
    });
}

void ExtentUnpinner::count_attempt(UnpinResult r, uint64_t pages) {
    env_.stats.unpin_attempts[r].add(pages == 0 ? 1 : pages);
}

UnpinResult ExtentUnpinner::unpin_extent(Gfn head, core::Force force, uint32_t* pages) {
    if (pages != nullptr) *pages = 0;
    if (!env_.table.in_range(head)) return UnpinResult::NotPinned;
    // The guest may have freed and reused the cached leaf page since the last unit: walk afresh.
    if (walker_) walker_->reset_cursor();
    locks_[0] = env_.table.lock(head);
    // Any extent created before we locked its head is in the handoff by now (pushed under its
    // locks): take it, so that no extent is unpinned while it still sits in the handoff stack.
    drain();
    const uint32_t len = locks_[0].mapped() ? env_.extents.length(head) : 0;
    if (len == 0 || raw(head) + len > env_.table.size()) {
        locks_[0].unlock();
        return UnpinResult::NotPinned;
    }
    if (pages != nullptr) *pages = len;
    for (uint32_t i = 1; i < len; ++i) locks_[i] = env_.table.lock(Gfn{raw(head) + i});
    const UnpinResult r = unpin_locked_extent(head, len, force);
    for (uint32_t i = 0; i < len; ++i) locks_[i].unlock();
    return r;
}

UnpinResult ExtentUnpinner::unpin_locked_extent(Gfn head, uint32_t len, core::Force force) {
    // Examine and clear, member by member.
    uint32_t busy_at = len;
    for (uint32_t i = 0; i < len; ++i) {
        cleared_[i] = false;
        leaves_[i] = nullptr;
        auto leaf = walker_ ? walker_->leaf(Gfn{raw(head) + i}) : Result<GuestAtomicU32>(make_error(ENOENT, "no DTT"));
        // No leaf (the guest's shrinker or a hostile guest removed the table): the guest cannot hold
        // a map count on it, so the page is idle.
        if (!leaf) continue;
        leaves_[i] = leaf->address();
        // Safety (this block): leaf words from DttWalker::leaf, aligned inside guest RAM leaf pages;
        // seq_cst RMWs (file comment).
        if (force == core::Force::Yes) leaf->fetch_and(~core::kDtteAccessed, std::memory_order_seq_cst);
        uint32_t expected = core::kDttePinned;
        if (leaf->compare_exchange(expected, 0, std::memory_order_seq_cst)) {
            cleared_[i] = true;
            continue;
        }
        if (expected == 0) continue;  // the guest cleared PINNED and holds no mapping: idle
        busy_at = i;
        break;
    }
    if (busy_at != len) {
        for (uint32_t i = 0; i < busy_at; ++i) {
            // Safety: leaf words from DttWalker::leaf; seq_cst.
            if (cleared_[i]) GuestAtomicU32(leaves_[i]).fetch_or(core::kDttePinned, std::memory_order_seq_cst);
        }
        if (force == core::Force::No) {
            // Second chance for the extent: a member still ACCESSED at the next scan was used again.
            for (uint32_t i = busy_at; i < len; ++i) {
                auto leaf = walker_->leaf(Gfn{raw(head) + i});
                // Safety: leaf word from DttWalker::leaf; seq_cst.
                if (leaf) leaf->fetch_and(~core::kDtteAccessed, std::memory_order_seq_cst);
            }
        } else {
            CLOG_ERROR_RL(kLog, "force case cannot unpin gfn {:#x} (extent {:#x}+{}): the guest still maps it",
                          raw(head) + busy_at, raw(head), len);
        }
        return UnpinResult::NotUnpinned;
    }

    if (auto st = unmap_extent(head, len); !st) {
        CLOG_ERROR_RL(kLog, "failed to unmap extent {:#x}+{}: {}", raw(head), len, st.error().message());
        // The mapping may still be live: keep the records and tell the guest again.
        for (uint32_t i = 0; i < len; ++i) {
            // Safety: leaf words from DttWalker::leaf; seq_cst.
            if (leaves_[i] != nullptr)
                GuestAtomicU32(leaves_[i]).fetch_or(core::kDttePinned, std::memory_order_seq_cst);
        }
        return UnpinResult::Failed;
    }
    for (uint32_t i = 0; i < len; ++i) locks_[i].clear_mapped();
    env_.extents.erase(head, len);
    env_.stats.pages_unpinned.add(len);
    env_.gauges.pinned_pages.sub(len);
    // dma_entries: refreshed once per scan and by Engine::stats(), not per extent (one GET_INFO
    // ioctl per call on VFIO).
    return UnpinResult::Unpinned;
}

uint64_t ExtentUnpinner::scan(Gen gen, std::optional<uint64_t> limit, uint64_t* examined) {
    std::deque<Entry>& q = gen == Gen::New ? new_gen_ : old_gen_;
    requeue_new_.clear();
    requeue_old_.clear();
    uint64_t unpinned = 0;
    for (std::size_t todo = q.size(); todo > 0 && (!limit || unpinned < *limit); --todo) {
        if (gate_.stopping()) break;  // the engine stops: the entries stay queued for teardown
        const Entry e = q.front();
        q.pop_front();
        uint32_t pages = 0;
        const auto r = gate_.run_unit([&] { return unpin_extent(Gfn{e.head}, core::Force::No, &pages); });
        if (!r) {
            q.push_front(e);  // parked: untouched, still first in line
            count_attempt(UnpinResult::Parked, 0);
            break;
        }
        *examined += pages;
        count_attempt(*r, pages);
        switch (*r) {
            case UnpinResult::Unpinned:
                unpinned += pages;
                untrack(e.head);
                break;
            case UnpinResult::NotPinned: untrack(e.head); break;
            case UnpinResult::NotUnpinned:
                if (params_.gen_threshold == 0) {
                    requeue_new_.push_back(Entry{e.head, 0});  // crosvm drops it here; see unpinner.h
                } else {
                    const uint32_t busy = e.busy + 1;
                    if (gen == Gen::Old || busy >= params_.gen_threshold) {
                        requeue_old_.push_back(Entry{e.head, 0});
                    } else {
                        requeue_new_.push_back(Entry{e.head, busy});
                    }
                }
                break;
            case UnpinResult::Failed:
            case UnpinResult::Parked:
                (gen == Gen::New ? requeue_new_ : requeue_old_).push_back(gen == Gen::New ? e : Entry{e.head, 0});
                break;
        }
    }
    new_gen_.insert(new_gen_.end(), requeue_new_.begin(), requeue_new_.end());
    old_gen_.insert(old_gen_.end(), requeue_old_.begin(), requeue_old_.end());
    return unpinned;
}

void ExtentUnpinner::tick() {
    drain();
    if (params_.policy != UnpinPolicy::Lru || gate_.parked()) return;
    const uint64_t t0 = telemetry::monotonic_ns();
    uint64_t examined = 0;
    uint64_t n_old = 0;
    if (params_.gen_threshold != 0 && ++tick_counter_ >= params_.gen_threshold) {
        tick_counter_ = 0;
        n_old = scan(Gen::Old, params_.limit, &examined);
    }
    std::optional<uint64_t> new_limit = params_.limit;
    if (new_limit) new_limit = *new_limit > n_old ? *new_limit - n_old : 0;
    uint64_t n_new = 0;
    if (!new_limit || *new_limit != 0) n_new = scan(Gen::New, new_limit, &examined);
    const uint64_t dur = telemetry::monotonic_ns() - t0;
    env_.stats.unpin_scans[ScanKind::Lru].add();
    env_.stats.unpin_scan_duration_ns[ScanKind::Lru].observe(dur);
    env_.gauges.last_unpin_run_unix_ns.set(telemetry::unix_time_ns());
    if (n_old + n_new != 0) env_.gauges.dma_entries.set(env_.backend.live_entries());
    unmap_trace(env_.session).flush();
    COIOMMU_PROBE_UNPIN_SCAN(env_.session, ScanKind::Lru, examined, n_old + n_new, dur);
}

UnpinResult ExtentUnpinner::balloon_page(Gfn gfn, uint32_t* pages) {
    // Twice: a head snapshot that changed before its lock was taken (the page raced an unpin and a
    // new pin) answers NotPinned while the page is still ours; the second look finds its new head.
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (const auto head = env_.extents.head_of(gfn)) {
            const UnpinResult r = unpin_extent(*head, core::Force::Yes, pages);
            if (r != UnpinResult::NotPinned) return r;
        }
        if (!env_.table.mapped(gfn)) return UnpinResult::NotPinned;
    }
    CLOG_ERROR_RL(kLog, "balloon: gfn {:#x} is recorded as mapped but no extent holds it", raw(gfn));
    return UnpinResult::Failed;
}

telemetry::BalloonResult ExtentUnpinner::balloon(std::span<const GfnRange> ranges,
                                                 std::span<telemetry::BalloonResult> per_range) {
    using telemetry::BalloonResult;
    drain();
    const uint64_t t0 = telemetry::monotonic_ns();
    uint64_t examined = 0;
    uint64_t unpinned = 0;
    bool stopped = false;
    auto result = BalloonResult::Success;
    // Per range, only the pages we map (the host record's touched chunks inside guest RAM): a page
    // we do not map needs nothing from us, whatever its DTT entry says (engine/README.md, "LRU and
    // balloon unpinning"), so a range of 2^64 gfns costs what the pages we map cost.
    for (std::size_t i = 0; i < ranges.size(); ++i) {
        auto range_result = BalloonResult::Success;
        (void)for_each_ram_part(env_.mem, ranges[i], [&](Gfn first, uint64_t end) {
            return env_.table.for_each_mapped(first, end, [&](Gfn g) {
                if (gate_.stopping()) {
                    stopped = true;
                    return false;
                }
                uint32_t pages = 0;
                std::optional<UnpinResult> r;
                for (;;) {
                    r = gate_.run_unit([&] { return balloon_page(g, &pages); });
                    if (r) break;
                    count_attempt(UnpinResult::Parked, 1);
                    unmap_trace(env_.session).flush();  // before blocking while parked
                    // Bounded: in coiommud the guest's UNPARK arrives as an MmioWrite on the
                    // session thread this balloon request is blocking, so an unbounded wait
                    // would never end (found by fuzz_protocol_session). Failed: retry later.
                    if (!gate_.wait_unparked_for(kBalloonParkWait)) break;
                }
                if (!r) {
                    stopped = true;
                    return false;
                }
                examined += std::max<uint32_t>(pages, 1);
                count_attempt(*r, pages);
                if (*r == UnpinResult::Unpinned) {
                    unpinned += pages;
                } else if (*r != UnpinResult::NotPinned) {
                    CLOG_ERROR(kLog, "balloon: force unpin of gfn {:#x} failed: {}", raw(g), core::to_string(*r));
                    range_result = BalloonResult::Failed;
                    return false;  // the rest of this range stays pinned; the next range runs
                }
                return true;
            });
        });
        if (stopped) range_result = BalloonResult::Failed;  // and every range after it
        if (!per_range.empty()) per_range[i] = range_result;
        if (range_result == BalloonResult::Failed) result = BalloonResult::Failed;
    }
    if (stopped) {
        CLOG_WARN(kLog, "balloon: {}; request answered Failed",
                  gate_.stopping() ? "the engine stops" : "the guest kept the unpinner parked");
    }
    const uint64_t dur = telemetry::monotonic_ns() - t0;
    env_.stats.unpin_scans[ScanKind::Balloon].add();
    env_.stats.unpin_scan_duration_ns[ScanKind::Balloon].observe(dur);
    env_.stats.balloon_requests[result].add();
    env_.gauges.last_unpin_run_unix_ns.set(telemetry::unix_time_ns());
    if (unpinned != 0) env_.gauges.dma_entries.set(env_.backend.live_entries());
    unmap_trace(env_.session).flush();
    COIOMMU_PROBE_UNPIN_SCAN(env_.session, ScanKind::Balloon, examined, unpinned, dur);
    return result;
}

uint64_t ExtentUnpinner::force_unmap(Gfn head) {
    if (!env_.table.in_range(head)) return 0;
    if (walker_) walker_->reset_cursor();
    locks_[0] = env_.table.lock(head);
    uint32_t len = locks_[0].mapped() ? env_.extents.length(head) : 0;
    if (len == 0 || raw(head) + len > env_.table.size()) {
        if (!locks_[0].mapped()) {
            locks_[0].unlock();
            return 0;
        }
        // A stale generation entry: its extent was unpinned (balloon) and the page re-pinned as a
        // member of another extent, which its own entry or the final PinTable scan unmaps whole
        // (unmapping this page alone would bisect that mapping).
        if (const auto owner = env_.extents.head_of(head); owner && *owner != head) {
            locks_[0].unlock();
            return 0;
        }
        // A mapped page without an extent record cannot happen; unmap the page alone if it does.
        len = 1;
    }
    for (uint32_t i = 1; i < len; ++i) locks_[i] = env_.table.lock(Gfn{raw(head) + i});
    for (uint32_t i = 0; i < len; ++i) {
        if (!walker_) break;
        auto leaf = walker_->leaf(Gfn{raw(head) + i});
        // Safety: leaf word from DttWalker::leaf; seq_cst RMW. The mapping goes away below.
        if (leaf) leaf->fetch_and(~core::kDttePinned, std::memory_order_seq_cst);
    }
    uint64_t done = 0;
    if (auto st = unmap_extent(head, len); st) {
        for (uint32_t i = 0; i < len; ++i) locks_[i].clear_mapped();
        if (env_.extents.length(head) == len) env_.extents.erase(head, len);
        env_.stats.pages_unpinned.add(len);
        env_.gauges.pinned_pages.sub(len);
        done = len;
    } else {
        CLOG_ERROR(kLog, "teardown: cannot unmap extent {:#x}+{}: {}", raw(head), len, st.error().message());
    }
    for (uint32_t i = 0; i < len; ++i) locks_[i].unlock();
    return done;
}

Status ExtentUnpinner::unmap_extent(Gfn head, uint32_t len) {
    const uint64_t iova = raw(head) << kPageShift;  // callers checked in_range: no overflow
    const uint64_t size = uint64_t{len} << kPageShift;
    const uint64_t t0 = telemetry::monotonic_ns();
    auto st = env_.backend.unmap_exact(Iova{iova}, size);
    const uint64_t end = telemetry::monotonic_ns();
    const uint64_t lat = end - t0;
    const int32_t code = st ? 0 : -st.error().code;
    COIOMMU_PROBE_DMA_UNMAP(iova, size, code, lat);
    unmap_trace(env_.session).add(telemetry::DmaRecordOp::Unmap, iova, size, code, lat, end);
    env_.stats.dma_calls[DmaOp::Unmap].add();
    env_.stats.dma_call_latency_ns[DmaOp::Unmap].observe(lat);
    if (st) {
        env_.stats.dma_bytes[DmaOp::Unmap].add(size);
    } else {
        env_.stats.dma_call_failures[DmaOp::Unmap].add();
    }
    return st;
}

uint64_t ExtentUnpinner::teardown() {
    drain();
    uint64_t pages = 0;
    for (auto* q : {&new_gen_, &old_gen_}) {
        for (const Entry& e : *q) pages += force_unmap(Gfn{e.head});
        q->clear();
    }
    std::fill(tracked_.begin(), tracked_.end(), 0);
    if (env_.table.mapped_pages() != 0) {
        // Untracked extents (policy off), or belt and braces: scan the authoritative record.
        if (params_.policy == UnpinPolicy::Lru) {
            CLOG_WARN(kLog, "teardown: {} pages still recorded after the tracked extents; scanning",
                      env_.table.mapped_pages());
        }
        (void)env_.table.for_each_mapped(Gfn{0}, env_.table.size(), [&](Gfn g) {
            const auto head = env_.extents.head_of(g);
            pages += force_unmap(head ? *head : g);
            return env_.table.mapped_pages() != 0;
        });
    }
    env_.gauges.dma_entries.set(env_.backend.live_entries());
    unmap_trace(env_.session).flush();
    return pages;
}

// ---- UnpinService -----------------------------------------------------------------------------

Result<std::unique_ptr<UnpinService>> UnpinService::start(UnpinStrategy& strategy, ParkGate& gate,
                                                          const Options& opts) {
    std::unique_ptr<UnpinService> s(new UnpinService(strategy, gate));
    auto stop_ev = EventFd::create(Blocking::No);
    if (!stop_ev) return coiommu::unexpected(stop_ev.error());
    auto wake_ev = EventFd::create(Blocking::No);
    if (!wake_ev) return coiommu::unexpected(wake_ev.error());
    s->stop_ev_ = std::move(*stop_ev);
    s->wake_ev_ = std::move(*wake_ev);
    s->epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    if (!s->epoll_) return make_error(errno, "unpinner epoll_create1");
    auto add = [&](int fd, uint64_t token) -> Status {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = token;
        if (::epoll_ctl(s->epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return make_error(errno, "unpinner epoll_ctl");
        return ok();
    };
    COIOMMU_TRY(add(s->stop_ev_.fd(), kStopToken));
    COIOMMU_TRY(add(s->wake_ev_.fd(), kWakeToken));
    if (opts.policy == UnpinPolicy::Lru && opts.interval.count() > 0) {
        s->timer_ = UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (!s->timer_) return make_error(errno, "unpinner timerfd_create");
        const auto ns = opts.interval.count();
        itimerspec its{};
        its.it_interval.tv_sec = ns / 1'000'000'000;
        its.it_interval.tv_nsec = ns % 1'000'000'000;
        its.it_value = its.it_interval;
        if (::timerfd_settime(s->timer_.get(), 0, &its, nullptr) != 0)
            return make_error(errno, "unpinner timerfd_settime");
        COIOMMU_TRY(add(s->timer_.get(), kTimerToken));
    }
    try {
        s->thread_ = std::thread([svc = s.get()] { svc->run(); });
        ::pthread_setname_np(s->thread_.native_handle(), opts.thread_name);
    } catch (const std::system_error& e) {
        return make_error(e.code().value(), "unpinner thread");
    }
    return s;
}

UnpinService::~UnpinService() { stop(); }

void UnpinService::run() {
    epoll_event evs[4];
    for (;;) {
        const int n = ::epoll_wait(epoll_.get(), evs, 4, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            CLOG_ERROR_RL(kLog, "epoll_wait: errno {}", errno);
            ::usleep(1000);
            continue;
        }
        for (int i = 0; i < n; ++i) {
            switch (evs[i].data.u64) {
                case kStopToken: return;
                case kTimerToken: {
                    uint64_t expirations = 0;
                    if (::read(timer_.get(), &expirations, sizeof expirations) == sizeof expirations) {
                        timer_ticks_.fetch_add(1, std::memory_order_relaxed);
                        strategy_.tick();  // missed expirations are not replayed
                    }
                    break;
                }
                case kWakeToken: {
                    (void)wake_ev_.read();
                    for (;;) {
                        Request* req = nullptr;
                        {
                            std::lock_guard lock(mu_);
                            if (requests_.empty()) break;
                            req = requests_.front();
                            requests_.pop_front();
                        }
                        if (req->is_balloon) {
                            req->result = strategy_.balloon(req->ranges, req->per_range);
                        } else {
                            strategy_.tick();
                        }
                        {
                            std::lock_guard lock(mu_);
                            req->done = true;
                        }
                        cv_.notify_all();
                    }
                    break;
                }
                default: break;
            }
        }
    }
}

Status UnpinService::submit(Request& req) {
    {
        std::lock_guard lock(mu_);
        if (stopped_) return make_error(ECANCELED, "unpinner stopped");
        requests_.push_back(&req);
    }
    if (auto st = wake_ev_.signal(); !st) {
        std::lock_guard lock(mu_);
        std::erase(requests_, &req);
        return coiommu::unexpected(st.error());
    }
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return req.done || req.cancelled; });
    if (req.cancelled) return make_error(ECANCELED, "unpinner stopped");
    return ok();
}

Result<telemetry::BalloonResult> UnpinService::balloon(std::span<const GfnRange> ranges,
                                                       std::span<telemetry::BalloonResult> per_range) {
    if (!per_range.empty() && per_range.size() != ranges.size()) {
        return make_error(EINVAL, "balloon: one result per range");
    }
    Request req;
    req.is_balloon = true;
    req.ranges = ranges;
    req.per_range = per_range;
    COIOMMU_TRY(submit(req));
    return req.result;
}

Status UnpinService::tick_now() {
    Request req;
    return submit(req);
}

void UnpinService::stop() {
    {
        std::lock_guard lock(mu_);
        if (stopped_) return;
        stopped_ = true;
    }
    gate_.set_stopping();
    if (thread_.joinable()) {
        if (auto st = stop_ev_.signal(); !st) {
            CLOG_ERROR(kLog, "cannot signal the unpinner to stop: {}", st.error().message());
        }
        thread_.join();
    }
    {
        std::lock_guard lock(mu_);
        for (Request* r : requests_) r->cancelled = true;
        requests_.clear();
    }
    cv_.notify_all();
}

}  // namespace coiommu::workers
