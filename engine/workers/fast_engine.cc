#include "engine/workers/fast_engine.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/telemetry/clock.h"

namespace coiommu::workers {
namespace {

constexpr const char* kLog = "engine";
constexpr uint64_t kStopToken = ~uint64_t{0};
constexpr uint64_t kTraceTimerToken = ~uint64_t{0} - 1;
// Spin loops check the clock and yield the CPU once every this many iterations (a few µs).
constexpr uint32_t kSpinCheckMask = 63;

// Named by the creator (not the thread itself), so the name is there as soon as the thread exists.
void name_thread(std::thread& t, const char* name) { ::pthread_setname_np(t.native_handle(), name); }

Status signal_fd(int fd) {
    const uint64_t one = 1;
    for (;;) {
        if (::write(fd, &one, sizeof one) == sizeof one) return ok();
        if (errno == EINTR) continue;
        return make_error(errno, "trigger eventfd write");
    }
}

// Reads and resets an eventfd counter; 0 when it was empty (EAGAIN) or on error (logged).
uint64_t drain_fd(int fd) {
    uint64_t v = 0;
    for (;;) {
        if (::read(fd, &v, sizeof v) == sizeof v) return v;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) CLOG_ERROR_RL(kLog, "trigger eventfd read: errno {}", errno);
        return 0;
    }
}

}  // namespace

FastEngine::FastEngine(const EngineConfig& cfg, const EngineDeps& deps, telemetry::StatsRegistry& stats, ParkGate& gate,
                       core::PinTable table, ExtentMap extents, ExtentHandoff handoff)
    : cfg_(cfg),
      mem_(*deps.mem),
      backend_(*deps.backend),
      trigger_fds_(deps.trigger_fds),
      stats_(stats),
      table_(std::move(table)),
      extents_(std::move(extents)),
      handoff_(std::move(handoff)),
      endpoints_(deps.endpoints),
      env_{mem_,
           backend_,
           table_,
           extents_,
           handoff_,
           endpoints_,
           stats.gauges(),
           core::RequestLimits{cfg.max_batch_pages},
           cfg.coalesce,
           cfg.session,
           cfg.unpin_policy == UnpinPolicy::Lru,
           {}},
      queue_(deps.trigger_fds.size()),
      spin_budget_(effective_spin_budget(cfg)),
      workers_count_(effective_workers(cfg)),
      gate_(gate),
      intake_trace_(cfg.session) {}

Result<std::unique_ptr<FastEngine>> FastEngine::create(const EngineConfig& cfg, const EngineDeps& deps,
                                                       telemetry::StatsRegistry& stats, ParkGate& gate) {
    if (deps.mem == nullptr || deps.backend == nullptr) return make_error(EINVAL, "engine: no guest memory or backend");
    const std::size_t vcpus = deps.trigger_fds.size();
    if (vcpus == 0 || vcpus > core::kMaxVcpus || deps.notify_slots.size() < vcpus) {
        return make_error(EINVAL,
                          fmt::format("engine: {} triggers for {} notify slots", vcpus, deps.notify_slots.size()));
    }
    if (stats.shard_count() < vcpus) return make_error(EINVAL, "engine: fewer stats shards than vCPUs");
    const uint64_t gfns = deps.mem->gfn_span();
    auto table = core::PinTable::create(gfns);
    if (!table) return coiommu::unexpected(with_context(table.error(), "engine"));
    auto extents = ExtentMap::create(gfns, cfg.extent_store);
    if (!extents) return coiommu::unexpected(with_context(extents.error(), "engine"));
    auto handoff = ExtentHandoff::create(gfns);
    if (!handoff) return coiommu::unexpected(with_context(handoff.error(), "engine"));
    auto stop_ev = EventFd::create(Blocking::No);
    if (!stop_ev) return coiommu::unexpected(with_context(stop_ev.error(), "engine stop event"));
    UniqueFd trace_timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!trace_timer) return make_error(errno, "engine trace timerfd_create");

    std::unique_ptr<FastEngine> e(
        new FastEngine(cfg, deps, stats, gate, std::move(*table), std::move(*extents), std::move(*handoff)));
    e->stop_ev_ = std::move(*stop_ev);
    e->trace_timer_ = std::move(trace_timer);
    e->arenas_.reserve(vcpus);
    for (std::size_t i = 0; i < vcpus; ++i) {
        // Safety: slot i of the notifymap mapping (8-byte aligned, inside notify_slots).
        auto a = VcpuArena::create(static_cast<uint32_t>(i), GuestAtomicU64(&deps.notify_slots[i]), deps.trigger_fds[i],
                                   cfg.max_batch_pages, stats.shard(i));
        if (!a) return coiommu::unexpected(with_context(a.error(), fmt::format("engine vcpu {}", i)));
        e->arenas_.push_back(std::move(*a));
    }
    return e;
}

FastEngine::~FastEngine() { stop_pinning(); }

Result<UnpinStrategy*> FastEngine::prepare(Gpa dtt_root, uint64_t dtt_level) {
    auto walker = core::DttWalker::create(mem_, dtt_root, dtt_level);
    if (!walker) {
        // As in crosvm: the workers run and every request fails on the walk; the guest is told by
        // a clear PINNED bit instead of hanging on its slot.
        env_.dtt_error = walker.error().message();
        CLOG_ERROR(kLog, "invalid DTT (root {:#x}, level {}): {}; every pin request will fail", raw(dtt_root),
                   dtt_level, env_.dtt_error);
    } else {
        for (auto& a : arenas_) a->walker = *walker;
    }

    UnpinEnv uenv{mem_, backend_, table_, extents_, handoff_, stats_.gauges(), stats_.add_shard(), cfg_.session};
    auto unpinner =
        ExtentUnpinner::create(uenv, walker ? std::optional(*walker) : std::nullopt,
                               LruParams{cfg_.unpin_policy, cfg_.unpin_limit, cfg_.unpin_gen_threshold}, gate_);
    if (!unpinner) return coiommu::unexpected(unpinner.error());
    unpinner_ = std::move(*unpinner);
    CLOG_INFO(kLog, "active: {} vcpus, {} workers, spin {} ns, DTT root {:#x} level {}, {}", arenas_.size(),
              workers_count_, spin_budget_.count(), raw(dtt_root), dtt_level, to_string(cfg_));
    return unpinner_.get();
}

Status FastEngine::adopt(std::span<const GfnRange> extents) {
    // Check everything first: an adopt either takes every extent or none.
    uint64_t prev_end = 0;
    for (const GfnRange& r : extents) {
        const uint64_t head = raw(r.start);
        if (r.count == 0 || r.count > kMaxBatchPages || !table_.in_range(r.start) || r.count > table_.size() - head ||
            head < prev_end) {
            return make_error(EINVAL, fmt::format("adopt extent {:#x}+{}: empty, too long, outside the guest or "
                                                  "overlapping the one before (extents ascending)",
                                                  head, r.count));
        }
        prev_end = head + r.count;
        for (uint64_t g = head; g < prev_end; ++g) {
            if (table_.mapped(Gfn{g})) return make_error(EINVAL, fmt::format("adopt: gfn {:#x} is already ours", g));
        }
    }
    // No worker runs yet (start_pinning has not), so the locks are uncontended; they are taken
    // anyway because the record's invariants (kMapped only under the lock) are the table's.
    for (const GfnRange& r : extents) {
        const uint64_t head = raw(r.start);
        for (uint64_t g = head; g < head + r.count; ++g) {
            auto lock = table_.lock(Gfn{g});
            lock.set_mapped();
        }
        extents_.record(r.start, static_cast<uint32_t>(r.count));
        if (env_.track_extents) handoff_.push(r.start);
    }
    return ok();
}

Status FastEngine::start_pinning() {
    try {
        for (uint32_t i = 0; i < workers_count_; ++i) {
            workers_.emplace_back([this] { run_worker(); });
            name_thread(workers_.back(), fmt::format("coiommu-pin{}", i).c_str());
        }
        intake_ = std::thread([this] { run_intake(); });
        name_thread(intake_, "coiommu-intake");
    } catch (const std::system_error& ex) {
        workers_stopping_.store(true, std::memory_order_release);
        queue_ec_.notify_all();
        for (auto& t : workers_) t.join();
        workers_.clear();
        return make_error(ex.code().value(), "engine threads");
    }
    return ok();
}

void FastEngine::stop_pinning() {
    if (pinning_stopped_) return;
    pinning_stopped_ = true;
    stopping_.store(true, std::memory_order_release);
    if (intake_.joinable()) {
        if (auto st = stop_ev_.signal(); !st)
            CLOG_ERROR(kLog, "cannot signal the intake to stop: {}", st.error().message());
        intake_.join();
    }
    // The intake queues nothing more; the workers drain what is queued (every slot completes) and
    // leave when the queue is empty.
    workers_stopping_.store(true, std::memory_order_release);
    queue_ec_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
}

uint64_t FastEngine::teardown() { return unpinner_ ? unpinner_->teardown() : 0; }

// ---- intake -----------------------------------------------------------------------------------

void FastEngine::run_intake() {
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) {
        CLOG_ERROR(kLog, "intake: epoll_create1: errno {}", errno);
        return;
    }
    auto add = [&](int fd, uint64_t token) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = token;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
            CLOG_ERROR(kLog, "intake: epoll_ctl fd {}: errno {}", fd, errno);
        }
    };
    add(stop_ev_.fd(), kStopToken);
    add(trace_timer_.get(), kTraceTimerToken);
    for (const auto& a : arenas_) add(a->trigger_fd, a->vcpu);

    // Requests written before activation are served at once; their triggers are still to be read.
    for (auto& a : arenas_) {
        if (try_serve(*a) == Attempt::Served) ++a->pending_echo;
    }

    constexpr int kMaxEvents = 64;
    epoll_event evs[kMaxEvents];
    uint64_t armed_due = 0;  // the trace timer's expiry, 0 when disarmed
    for (;;) {
        // Block without a timeout (a timed epoll_wait wakes far slower here: 13 us against 5 us);
        // a quiet engine still hands its last requests to the tracer within kMaxAgeNs through the
        // timerfd, armed once per batch.
        // The last inline serve's end is "now" for this check; a wake that served nothing inline
        // (workers, the timer, spurious triggers) reads the clock.
        intake_trace_.flush_if_due(last_inline_end_ns_ != 0 ? last_inline_end_ns_ : telemetry::monotonic_ns());
        last_inline_end_ns_ = 0;
        if (const uint64_t due = intake_trace_.due_ns(); due != 0 && due != armed_due) {
            arm_trace_timer(due);
            armed_due = due;
        }
        const int n = ::epoll_wait(ep.get(), evs, kMaxEvents, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            CLOG_ERROR_RL(kLog, "intake: epoll_wait: errno {}", errno);
            ::usleep(1000);
            continue;
        }
        for (int i = 0; i < n; ++i) {
            if (evs[i].data.u64 == kStopToken) {
                intake_trace_.flush();
                return;
            }
            if (evs[i].data.u64 == kTraceTimerToken) {
                (void)drain_fd(trace_timer_.get());
                armed_due = 0;
                continue;  // flush_if_due at the top of the loop hands the batch over
            }
            on_trigger(*arenas_[evs[i].data.u64]);
        }
        if (spin_budget_.count() > 0) spin_pass();
        if (stopping_.load(std::memory_order_acquire)) {
            intake_trace_.flush();
            return;
        }
    }
}

void FastEngine::arm_trace_timer(uint64_t due_ns) {
    itimerspec its{};
    its.it_value.tv_sec = static_cast<time_t>(due_ns / 1'000'000'000);
    its.it_value.tv_nsec = static_cast<long>(due_ns % 1'000'000'000);
    if (::timerfd_settime(trace_timer_.get(), TFD_TIMER_ABSTIME, &its, nullptr) != 0) {
        // Without the timer the batch still goes at the next request, when full, or at stop.
        CLOG_ERROR_RL(kLog, "intake: timerfd_settime: errno {}", errno);
    }
}

void FastEngine::on_trigger(VcpuArena& a) {
    const uint64_t tokens = drain_fd(a.trigger_fd);
    if (tokens == 0) return;
    const uint64_t echoes = std::min(tokens, a.pending_echo);
    a.pending_echo -= echoes;
    uint64_t real = tokens - echoes;
    for (;;) {
        switch (try_serve(a)) {
            case Attempt::Served:
                if (real == 0) {
                    ++a.pending_echo;  // served without a token: its trigger is still to come
                } else if (real > 1) {
                    spurious_.fetch_add(real - 1, std::memory_order_relaxed);
                }
                return;
            case Attempt::Busy: {
                if (real == 0) return;  // the echo of the request in flight
                SlotState expected = SlotState::InFlight;
                if (a.state.compare_exchange_strong(expected, SlotState::Rescan, std::memory_order_acq_rel) ||
                    expected == SlotState::Rescan) {
                    return;  // the worker signals the trigger again when it is done
                }
                continue;  // it went Idle meanwhile: look at the slot again
            }
            case Attempt::Empty:
                if (real != 0) {
                    // The guest triggered with an empty slot (or twice for one request).
                    spurious_.fetch_add(real, std::memory_order_relaxed);
                    telemetry::StatsShard& s = *a.stats;
                    s.requests[telemetry::RequestKind::Single].add();
                    s.requests_failed.add();
                    s.pin_failures[telemetry::PinFailureReason::InvalidRequest].add();
                    intake_trace_.add(telemetry::RequestKind::Single, 0, -EINVAL, 0, telemetry::monotonic_ns());
                    CLOG_WARN_RL(kLog, "vcpu {}: spurious trigger: notify slot is empty", a.vcpu);
                }
                return;
        }
    }
}

FastEngine::Attempt FastEngine::try_serve(VcpuArena& a) {
    // Acquire: a worker's Idle store (release) hands the arena back with its writes.
    if (a.state.load(std::memory_order_acquire) != SlotState::Idle) return Attempt::Busy;
    // Safety: the vCPU's notify slot (aligned, inside the notifymap). Acquire pairs with the
    // guest's store of the request, so a batch's PinPageInfo written before it is visible.
    const uint64_t value = a.slot.load(std::memory_order_acquire);
    if (value == 0) return Attempt::Empty;
    // Only the intake leaves Idle, so a plain store is enough.
    a.state.store(SlotState::InFlight, std::memory_order_relaxed);
    dispatch(a, value);
    return Attempt::Served;
}

void FastEngine::dispatch(VcpuArena& a, uint64_t value) {
    const uint64_t t0 = telemetry::monotonic_ns();
    if (workers_.empty()) {
        last_inline_end_ns_ = serve_request(env_, a, value, t0, intake_trace_).end_ns;
        finish(a);
        return;
    }
    stats_.gauges().queue_depth.add();  // before the push: a worker may pop it at once
    if (!queue_.try_push(Item{a.vcpu, value, t0})) {
        // Cannot happen (one item per vCPU, capacity >= vcpus); complete rather than lose it.
        stats_.gauges().queue_depth.sub();
        CLOG_ERROR_RL(kLog, "vcpu {}: pin queue full; serving inline", a.vcpu);
        serve_request(env_, a, value, t0, intake_trace_);
        finish(a);
        return;
    }
    queue_ec_.notify_one();
}

void FastEngine::spin_pass() {
    auto deadline = std::chrono::steady_clock::now() + spin_budget_;
    uint32_t iter = 0;
    bool extend = false;  // served since the last clock check: the budget restarts there
    while (!stopping_.load(std::memory_order_relaxed)) {
        bool served = false;
        for (auto& ap : arenas_) {
            VcpuArena& a = *ap;
            // Safety: relaxed peek at the slot; try_serve re-reads it with acquire.
            if (a.state.load(std::memory_order_relaxed) == SlotState::Idle &&
                a.slot.load(std::memory_order_relaxed) != 0 && try_serve(a) == Attempt::Served) {
                ++a.pending_echo;  // its trigger is still in the eventfd
                served = true;
            }
        }
        if (served) extend = true;
        if ((++iter & kSpinCheckMask) == 0) {
            // One clock read per check, none per served request: a serve restarts the budget at
            // the next check (at most kSpinCheckMask iterations late).
            const auto now = std::chrono::steady_clock::now();
            if (extend) {
                deadline = now + spin_budget_;
                extend = false;
            } else if (now >= deadline) {
                return;
            }
            ::sched_yield();
        }
        cpu_relax();
    }
}

// ---- workers ----------------------------------------------------------------------------------

void FastEngine::run_worker() {
    telemetry::RequestTraceBatch trace(env_.session);  // flushed when full, due, idle and at exit
    Item item{};
    while (pop(item, trace)) {
        stats_.gauges().queue_depth.sub();
        VcpuArena& a = *arenas_[item.vcpu];
        const ServeReport rep = serve_request(env_, a, item.value, item.t0_ns, trace);
        finish(a);
        trace.flush_if_due(rep.end_ns);
    }
}

bool FastEngine::pop(Item& out, telemetry::RequestTraceBatch& trace) {
    const auto deadline = std::chrono::steady_clock::now() + spin_budget_;
    for (uint32_t iter = 1;; ++iter) {
        if (auto it = queue_.try_pop()) {
            out = *it;
            return true;
        }
        if (workers_stopping_.load(std::memory_order_acquire)) return false;
        if ((iter & kSpinCheckMask) == 0) {
            if (std::chrono::steady_clock::now() >= deadline) break;
            ::sched_yield();
        }
        cpu_relax();
    }
    // About to block without a timeout: hand the batch over now (this costs idle time only).
    trace.flush();
    for (;;) {
        const auto key = queue_ec_.prepare_wait();
        if (auto it = queue_.try_pop()) {
            queue_ec_.cancel_wait();
            out = *it;
            return true;
        }
        if (workers_stopping_.load(std::memory_order_acquire)) {
            queue_ec_.cancel_wait();
            return false;
        }
        queue_ec_.wait(key);
    }
}

void FastEngine::finish(VcpuArena& a) {
    // Release: hands the arena (buffers, cursor) back for the next request of this vCPU.
    if (a.state.exchange(SlotState::Idle, std::memory_order_acq_rel) == SlotState::Rescan) {
        rescans_.fetch_add(1, std::memory_order_relaxed);
        if (auto st = signal_fd(a.trigger_fd); !st) CLOG_ERROR_RL(kLog, "vcpu {}: {}", a.vcpu, st.error().message());
    }
}

}  // namespace coiommu::workers
