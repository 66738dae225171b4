#include "engine/workers/seed_pinner.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/probes.h"

namespace coiommu::workers {
namespace {

constexpr const char* kLog = "seed";
constexpr uint64_t kStopToken = ~uint64_t{0};

using telemetry::PinFailureReason;
using telemetry::RequestKind;
using telemetry::ScanKind;

}  // namespace

SeedPinner::SeedPinner(const EngineConfig& cfg, const EngineDeps& deps, telemetry::StatsRegistry& stats, ParkGate& gate,
                       core::PinTable table)
    : cfg_(cfg),
      mem_(*deps.mem),
      backend_(*deps.backend),
      slots_(deps.notify_slots),
      trigger_fds_(deps.trigger_fds),
      stats_(stats),
      table_(std::move(table)),
      endpoints_(deps.endpoints),
      ctx_{mem_, backend_, table_},
      gate_(gate) {}

Result<std::unique_ptr<SeedPinner>> SeedPinner::create(const EngineConfig& cfg, const EngineDeps& deps,
                                                       telemetry::StatsRegistry& stats, ParkGate& gate) {
    if (deps.mem == nullptr || deps.backend == nullptr) return make_error(EINVAL, "seed: no guest memory or backend");
    const std::size_t vcpus = deps.trigger_fds.size();
    if (vcpus == 0 || vcpus > core::kMaxVcpus || deps.notify_slots.size() < vcpus) {
        return make_error(EINVAL,
                          fmt::format("seed: {} triggers for {} notify slots", vcpus, deps.notify_slots.size()));
    }
    if (stats.shard_count() < vcpus) return make_error(EINVAL, "seed: fewer stats shards than vCPUs");
    auto table = core::PinTable::create(deps.mem->gfn_span());
    if (!table) return coiommu::unexpected(with_context(table.error(), "seed"));
    auto stop_ev = EventFd::create(Blocking::No);
    if (!stop_ev) return coiommu::unexpected(stop_ev.error());
    std::unique_ptr<SeedPinner> p(new SeedPinner(cfg, deps, stats, gate, std::move(*table)));
    p->stop_ev_ = std::move(*stop_ev);
    for (std::size_t i = 0; i < vcpus; ++i) p->shards_.push_back(&stats.shard(i));
    return p;
}

SeedPinner::~SeedPinner() { stop_pinning(); }

Result<UnpinStrategy*> SeedPinner::prepare(Gpa dtt_root, uint64_t dtt_level) {
    std::lock_guard g(mu_);
    auto walker = core::DttWalker::create(mem_, dtt_root, dtt_level);
    if (walker) {
        walker_ = *walker;
    } else {
        dtt_error_ = walker.error().message();
        CLOG_ERROR(kLog, "invalid DTT: {}; every pin request will fail", dtt_error_);
    }
    unpin_stats_ = &stats_.add_shard();
    return static_cast<UnpinStrategy*>(this);
}

Status SeedPinner::adopt(std::span<const GfnRange> extents) {
    // The seed maps one page per call, so only single-page extents can be its own (a record of
    // the fast variant's coalesced extents would be bisected by its per-page unmaps).
    for (const GfnRange& r : extents) {
        if (r.count != 1 || !table_.in_range(r.start) || table_.mapped(r.start)) {
            return make_error(EINVAL, fmt::format("adopt extent {:#x}+{}: the seed variant adopts single pages of "
                                                  "this guest that it does not map yet",
                                                  raw(r.start), r.count));
        }
    }
    std::lock_guard g(mu_);
    for (const GfnRange& r : extents) {
        auto lock = table_.lock(r.start);
        lock.set_mapped();
        if (cfg_.unpin_policy == UnpinPolicy::Lru) new_gen_.push_back(Entry{raw(r.start), 0});
    }
    return ok();
}

Status SeedPinner::start_pinning() {
    try {
        pin_thread_ = std::thread([this] { run_pin(); });
        ::pthread_setname_np(pin_thread_.native_handle(), "coiommu-pin");
    } catch (const std::system_error& e) {
        return make_error(e.code().value(), "seed pin thread");
    }
    return ok();
}

std::size_t SeedPinner::new_gen_size() {
    std::lock_guard g(mu_);
    return new_gen_.size();
}

std::size_t SeedPinner::old_gen_size() {
    std::lock_guard g(mu_);
    return old_gen_.size();
}

void SeedPinner::stop_pinning() {
    if (pinning_stopped_) return;
    pinning_stopped_ = true;
    if (pin_thread_.joinable()) {
        if (auto st = stop_ev_.signal(); !st)
            CLOG_ERROR(kLog, "cannot signal the pin thread: {}", st.error().message());
        pin_thread_.join();
    }
}

// ---- pinning ----------------------------------------------------------------------------------

void SeedPinner::run_pin() {
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) {
        CLOG_ERROR(kLog, "epoll_create1: errno {}", errno);
        return;
    }
    auto add = [&](int fd, uint64_t token) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = token;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) CLOG_ERROR(kLog, "epoll_ctl: errno {}", errno);
    };
    add(stop_ev_.fd(), kStopToken);
    for (std::size_t i = 0; i < trigger_fds_.size(); ++i) add(trigger_fds_[i], i);

    epoll_event evs[64];
    for (;;) {
        const int n = ::epoll_wait(ep.get(), evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            CLOG_ERROR(kLog, "failed polling for events: errno {}", errno);
            return;
        }
        for (int k = 0; k < n; ++k) {
            const uint64_t token = evs[k].data.u64;
            if (token == kStopToken) return;
            const auto i = static_cast<uint32_t>(token);
            // Safety: slot i of the notifymap mapping (aligned, i < vcpus <= 1024).
            GuestAtomicU64 slot(&slots_[i]);
            uint64_t ignored = 0;
            if (::read(trigger_fds_[i], &ignored, sizeof ignored) != sizeof ignored && errno != EAGAIN) {
                CLOG_ERROR(kLog, "failed reading event {}: errno {}", i, errno);
                slot.store(0, std::memory_order_release);
                return;  // crosvm leaves its loop here
            }
            const uint64_t t0 = telemetry::monotonic_ns();
            // Safety: acquire pairs with the guest's store of the request.
            const uint64_t value = slot.load(std::memory_order_acquire);
            {
                std::lock_guard g(mu_);
                pin_pages(i, value, t0);
            }
            // An empty slot (a spurious trigger: the guest's and a resume's signal of one request)
            // has nothing to complete. crosvm stores 0 regardless, which erases a request the guest
            // writes between the load above and the store: its vCPU then takes the next request's
            // pages for pinned (found by the kill -9 test on real VFIO, tests/vm).
            if (value == 0) continue;
            // Safety: as above; completion, always, also after errors. seq_cst: crosvm's full fence
            // followed by the store.
            slot.store(0, std::memory_order_seq_cst);
        }
    }
}

// Precondition: mu_ held.
void SeedPinner::pin_pages(uint32_t vcpu, uint64_t value, uint64_t t0) {
    const RequestKind kind = (value & core::kPinPagesInBatch) != 0 ? RequestKind::Batch : RequestKind::Single;
    COIOMMU_PROBE_REQUEST_START(cfg_.session, vcpu, kind);
    Tally t;
    auto req = core::decode_request(value, mem_, endpoints_, core::RequestLimits{cfg_.max_batch_pages});
    if (!req) {
        t.invalid = 1;
        t.first_error = req.error().code;
        CLOG_ERROR_RL(kLog, "vcpu {}: {}", vcpu, req.error().message());
    } else if (!walker_) {
        t.pages = req->nr_pages;
        t.invalid = t.pages != 0 ? t.pages : 1;
        t.first_error = EINVAL;
        CLOG_ERROR_RL(kLog, "vcpu {}: {}", vcpu, dtt_error_);
    } else {
        t = pin_request(vcpu, *req);
    }
    record(*shards_[vcpu], kind, t);
    const uint64_t latency_ns = telemetry::monotonic_ns() - t0;
    shards_[vcpu]->request_latency_ns[kind].observe(latency_ns);
    COIOMMU_PROBE_REQUEST_DONE(cfg_.session, vcpu, kind, t.pages, -t.first_error, latency_ns);
    // The reference is serial and not tuned: a batch of one, handed over at once.
    const telemetry::RequestRecord rec{latency_ns, t.pages, -t.first_error, static_cast<uint32_t>(kind)};
    COIOMMU_PROBE_REQUESTS(cfg_.session, &rec, 1);
}

// Pins the request's pages one by one, in order; the first error aborts the rest (counted invalid).
SeedPinner::Tally SeedPinner::pin_request(uint32_t vcpu, const core::DecodedRequest& req) {
    Tally t;
    t.pages = req.nr_pages;
    core::DttWalker walker = *walker_;
    walker.reset_cursor();
    for (uint64_t k = 0; k < t.pages; ++k) {
        Gfn gfn = req.gfn;
        if (req.kind == core::DecodedRequest::Kind::Batch) {
            auto g = mem_.read_obj<uint64_t>(offset(req.list_gpa, k * core::kPinPageGfnSize));
            if (!g) {
                t.invalid += t.pages - k;
                t.first_error = g.error().code;
                break;
            }
            gfn = Gfn{*g};
        }
        auto r = core::pin_page(ctx_, walker, gfn);
        if (!r) {
            CLOG_ERROR_RL(kLog, "vcpu {}: {}", vcpu, r.error().message());
            t.invalid += t.pages - k;
            t.first_error = r.error().code;
            break;
        }
        switch (r->outcome) {
            case core::PinOutcome::Pinned:
                ++t.newly;
                if (cfg_.unpin_policy == UnpinPolicy::Lru) new_gen_.push_back(Entry{raw(gfn), 0});
                break;
            case core::PinOutcome::Repinned:
                // crosvm maps it again, gets EEXIST and, as for any page it pins, tracks it: a page
                // the LRU dropped (the guest had cleared its entry) is aged again from here.
                ++t.already;
                if (cfg_.unpin_policy == UnpinPolicy::Lru) new_gen_.push_back(Entry{raw(gfn), 0});
                break;
            case core::PinOutcome::AlreadyPinned: ++t.already; break;
            case core::PinOutcome::MapFailed:
                ++t.map_failed;
                if (t.first_error == 0) t.first_error = r->error;
                break;
            case core::PinOutcome::NoSpace:
                ++t.no_space;
                if (t.first_error == 0) t.first_error = ENOSPC;
                break;
        }
    }
    return t;
}

void SeedPinner::record(telemetry::StatsShard& s, RequestKind kind, const Tally& t) {
    s.requests[kind].add();
    s.pages_requested.add(t.pages);
    s.pages_pinned.add(t.newly);
    s.pages_already_pinned.add(t.already);
    if (t.map_failed != 0) s.pin_failures[PinFailureReason::VfioMap].add(t.map_failed);
    if (t.no_space != 0) s.pin_failures[PinFailureReason::NoSpace].add(t.no_space);
    if (t.invalid != 0) s.pin_failures[PinFailureReason::InvalidRequest].add(t.invalid);
    if (t.first_error != 0) s.requests_failed.add();
    // Every page that reached the backend made one 4 KiB map call (EEXIST ones are not visible
    // through pin_page and are not counted).
    const uint64_t calls = t.newly + t.map_failed + t.no_space;
    if (calls != 0) {
        s.dma_calls[telemetry::DmaOp::Map].add(calls);
        s.dma_bytes[telemetry::DmaOp::Map].add(t.newly * kPageSize);
        if (t.map_failed + t.no_space != 0) s.dma_call_failures[telemetry::DmaOp::Map].add(t.map_failed + t.no_space);
        // dma_entries: refreshed by Engine::stats() and each LRU tick, not per request (a GET_INFO
        // ioctl on VFIO; crosvm does not keep the figure at all).
    }
    if (t.newly != 0) stats_.gauges().pinned_pages.add(t.newly);
    s.pages_per_request.observe(t.pages);
}

// ---- unpinning --------------------------------------------------------------------------------

// Inside the gated unit that unmapped the page, so that once park() (the guest's PARK_UNPIN, or
// the load generator's quiesce) returns, the gauge agrees with the backend: counted after the
// unit, an unmap could be visible in the backend while the gauge still had the page.
void SeedPinner::count_unpinned() {
    unpin_stats_->pages_unpinned.add();
    unpin_stats_->dma_calls[telemetry::DmaOp::Unmap].add();
    stats_.gauges().pinned_pages.sub();
}

uint64_t SeedPinner::scan(Gen gen, std::optional<uint64_t> limit, uint64_t* examined) {
    std::vector<Entry> requeue_new, requeue_old;
    uint64_t unpinned = 0;
    std::size_t todo = 0;
    {
        std::lock_guard g(mu_);
        todo = (gen == Gen::New ? new_gen_ : old_gen_).size();
    }
    // One cursor for this scan, reset whenever the guest parked since the last unit.
    core::DttWalker walker = *walker_;
    walker.reset_cursor();
    uint64_t epoch = gate_.epoch();  // no unit runs outside run_unit: any value works here
    for (; todo > 0 && (!limit || unpinned < *limit) && !gate_.stopping(); --todo) {
        const auto r = gate_.run_unit([&]() -> std::optional<std::pair<Entry, UnpinResult>> {
            fresh_cursor_after_park(walker, epoch);
            std::lock_guard g(mu_);
            auto& q = gen == Gen::New ? new_gen_ : old_gen_;
            if (q.empty()) return std::nullopt;
            const Entry e = q.front();
            q.pop_front();
            const UnpinResult res = core::unpin_page(ctx_, walker, Gfn{e.gfn}, core::Force::No);
            if (res == UnpinResult::Unpinned) count_unpinned();
            return std::pair{e, res};
        });
        if (!r) {
            unpin_stats_->unpin_attempts[telemetry::UnpinResult::Parked].add();
            break;  // parked: the entry stays at the front
        }
        if (!*r) break;
        const auto [e, res] = **r;
        ++*examined;
        unpin_stats_->unpin_attempts[res].add();
        switch (res) {
            case UnpinResult::Unpinned: ++unpinned; break;  // counted inside the unit
            case UnpinResult::NotPinned: break;
            case UnpinResult::NotUnpinned:
                if (cfg_.unpin_gen_threshold == 0) break;  // crosvm's quirk: dropped from tracking
                if (gen == Gen::Old || e.busy + 1 >= cfg_.unpin_gen_threshold) {
                    requeue_old.push_back(Entry{e.gfn, 0});
                } else {
                    requeue_new.push_back(Entry{e.gfn, e.busy + 1});
                }
                break;
            case UnpinResult::Failed:
                unpin_stats_->dma_calls[telemetry::DmaOp::Unmap].add();
                unpin_stats_->dma_call_failures[telemetry::DmaOp::Unmap].add();
                (gen == Gen::New ? requeue_new : requeue_old).push_back(gen == Gen::New ? e : Entry{e.gfn, 0});
                break;
            case UnpinResult::Parked: break;  // unpin_page never answers it: scans count parking above
        }
    }
    std::lock_guard g(mu_);
    new_gen_.insert(new_gen_.end(), requeue_new.begin(), requeue_new.end());
    old_gen_.insert(old_gen_.end(), requeue_old.begin(), requeue_old.end());
    return unpinned;
}

void SeedPinner::tick() {
    if (cfg_.unpin_policy != UnpinPolicy::Lru || !walker_ || gate_.parked()) return;
    const uint64_t t0 = telemetry::monotonic_ns();
    uint64_t examined = 0, n_old = 0, n_new = 0;
    if (cfg_.unpin_gen_threshold != 0 && ++tick_counter_ == cfg_.unpin_gen_threshold) {
        tick_counter_ = 0;
        n_old = scan(Gen::Old, cfg_.unpin_limit, &examined);
    }
    std::optional<uint64_t> new_limit = cfg_.unpin_limit;
    if (new_limit) new_limit = *new_limit > n_old ? *new_limit - n_old : 0;
    if (!new_limit || *new_limit != 0) n_new = scan(Gen::New, new_limit, &examined);
    const uint64_t dur = telemetry::monotonic_ns() - t0;
    unpin_stats_->unpin_scans[ScanKind::Lru].add();
    unpin_stats_->unpin_scan_duration_ns[ScanKind::Lru].observe(dur);
    stats_.gauges().last_unpin_run_unix_ns.set(telemetry::unix_time_ns());
    stats_.gauges().dma_entries.set(backend_.live_entries());
    COIOMMU_PROBE_UNPIN_SCAN(cfg_.session, ScanKind::Lru, examined, n_old + n_new, dur);
}

// The guest may free and reuse the cached leaf page while parked: a unit after a park walks afresh.
// Called inside a gated unit (the gate's epoch is stable there).
void SeedPinner::fresh_cursor_after_park(core::DttWalker& walker, uint64_t& epoch) const {
    if (gate_.epoch() != epoch) {
        walker.reset_cursor();
        epoch = gate_.epoch();
    }
}

telemetry::BalloonResult SeedPinner::balloon(std::span<const GfnRange> ranges,
                                             std::span<telemetry::BalloonResult> per_range) {
    using telemetry::BalloonResult;
    const uint64_t t0 = telemetry::monotonic_ns();
    uint64_t examined = 0, unpinned = 0;
    bool stopped = false;
    auto result = BalloonResult::Success;
    // One cursor for the request (crosvm: one per range), reset after every park.
    std::optional<core::DttWalker> walker = walker_;
    if (walker) walker->reset_cursor();
    uint64_t epoch = gate_.epoch();
    // As the fast engine: only the pages we map, inside guest RAM (unpinner.h, "Balloon").
    for (std::size_t i = 0; i < ranges.size(); ++i) {
        auto range_result = BalloonResult::Success;
        (void)for_each_ram_part(mem_, ranges[i], [&](Gfn first, uint64_t end) {
            return table_.for_each_mapped(first, end, [&](Gfn g) {
                if (gate_.stopping()) {
                    stopped = true;
                    return false;
                }
                std::optional<UnpinResult> r;
                for (;;) {
                    r = gate_.run_unit([&] {
                        std::lock_guard lock(mu_);
                        if (walker) fresh_cursor_after_park(*walker, epoch);
                        const UnpinResult res =
                            walker ? core::unpin_page(ctx_, *walker, g, core::Force::Yes) : UnpinResult::NotPinned;
                        if (res == UnpinResult::Unpinned) count_unpinned();
                        return res;
                    });
                    if (r) break;
                    unpin_stats_->unpin_attempts[telemetry::UnpinResult::Parked].add();
                    if (!gate_.wait_unparked_for(kBalloonParkWait)) break;  // as ExtentUnpinner
                }
                if (!r) {
                    stopped = true;
                    return false;
                }
                ++examined;
                unpin_stats_->unpin_attempts[*r].add();
                if (*r == UnpinResult::Unpinned) {
                    ++unpinned;  // counted inside the unit
                } else if (*r != UnpinResult::NotPinned) {
                    CLOG_ERROR(kLog, "force unpin failed by {} at gfn {:#x}", core::to_string(*r), raw(g));
                    range_result = BalloonResult::Failed;
                    return false;
                }
                return true;
            });
        });
        if (stopped) range_result = BalloonResult::Failed;
        if (!per_range.empty()) per_range[i] = range_result;
        if (range_result == BalloonResult::Failed) result = BalloonResult::Failed;
    }
    const uint64_t dur = telemetry::monotonic_ns() - t0;
    unpin_stats_->unpin_scans[ScanKind::Balloon].add();
    unpin_stats_->unpin_scan_duration_ns[ScanKind::Balloon].observe(dur);
    unpin_stats_->balloon_requests[result].add();
    COIOMMU_PROBE_UNPIN_SCAN(cfg_.session, ScanKind::Balloon, examined, unpinned, dur);
    return result;
}

uint64_t SeedPinner::teardown() {
    uint64_t pages = 0;
    std::optional<core::DttWalker> walker = walker_;
    (void)table_.for_each_mapped(Gfn{0}, table_.size(), [&](Gfn g) {
        auto lock = table_.lock(g);
        if (!lock.mapped()) return true;
        if (walker) {
            auto leaf = walker->leaf(g);
            // Safety: leaf word from DttWalker::leaf; seq_cst RMW. The mapping goes away below.
            if (leaf) leaf->fetch_and(~core::kDttePinned, std::memory_order_seq_cst);
        }
        auto st = backend_.unmap_exact(Iova{raw(g) << kPageShift}, kPageSize);
        if (!st) {
            CLOG_ERROR(kLog, "teardown: cannot unmap gfn {:#x}: {}", raw(g), st.error().message());
            return true;
        }
        lock.clear_mapped();
        ++pages;
        return table_.mapped_pages() != 0;
    });
    stats_.gauges().pinned_pages.sub(std::min(pages, stats_.gauges().pinned_pages.load()));
    stats_.gauges().dma_entries.set(backend_.live_entries());
    std::lock_guard g(mu_);
    new_gen_.clear();
    old_gen_.clear();
    return pages;
}

}  // namespace coiommu::workers
