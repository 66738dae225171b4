// ParkGate: PARK_UNPIN / UNPARK_UNPIN for the unpinner (engine/README.md, "Device model").
//
// The guest's DTT shrinker brackets its scan with PARK/UNPARK and frees table pages in between, so
// after PARK returns no unpin may touch the DTT until UNPARK. The unpinner runs each unit of work
// (one extent or one page) through run_unit(), which holds the gate's mutex; park() takes the same
// mutex, so it returns only after the unit in progress finished, and no unit starts while parked.
// The pin path never touches the gate.
//
// epoch() counts park() calls: a unit that caches a DTT cursor compares it with the epoch it saw
// last and walks afresh when it changed (the guest may have freed and reused the cached leaf page
// between two units, even when no unit ever found the gate parked). stopping() is a lock-free
// read for long scans, which give up once the engine stops.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <type_traits>

namespace coiommu::workers {

// How long a balloon request waits for the guest's UNPARK before its remaining ranges answer
// Failed (the balloon driver retries). crosvm waits without a bound; in coiommud the UNPARK is an
// MmioWrite on the very session thread the balloon request holds, so it could never arrive.
inline constexpr std::chrono::milliseconds kBalloonParkWait{250};

class ParkGate {
public:
    // f() unless parked (nullopt then). Do not call park() from inside f.
    template <class F>
    auto run_unit(F&& f) -> std::optional<std::invoke_result_t<F>> {
        std::lock_guard lock(mu_);
        if (parked_.load(std::memory_order_relaxed)) return std::nullopt;
        return f();
    }

    // Returns once no unit runs; later units are refused until unpark().
    void park() {
        std::lock_guard lock(mu_);
        parked_.store(true, std::memory_order_relaxed);
        epoch_.fetch_add(1, std::memory_order_relaxed);
    }
    void unpark() {
        {
            std::lock_guard lock(mu_);
            parked_.store(false, std::memory_order_relaxed);
        }
        cv_.notify_all();
    }
    [[nodiscard]] bool parked() const { return parked_.load(std::memory_order_relaxed); }
    // Parks so far. Atomic so that a scan may take a first reading before its first unit; only a
    // reading inside a unit is stable (run_unit holds the mutex that park() increments it under).
    [[nodiscard]] uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }
    // set_stopping() has run (relaxed: a scan polls it and stops a few pages late at worst).
    [[nodiscard]] bool stopping() const { return stopping_.load(std::memory_order_relaxed); }

    // Blocks while parked. False when the gate is stopping (the waiter should give up).
    [[nodiscard]] bool wait_unparked() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !parked_.load(std::memory_order_relaxed) || stopping(); });
        return !stopping();
    }
    // The same, for at most `limit`. False also when still parked then.
    template <class Duration>
    [[nodiscard]] bool wait_unparked_for(Duration limit) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, limit, [&] { return !parked_.load(std::memory_order_relaxed) || stopping(); }) &&
               !stopping();
    }
    // Wakes every wait_unparked() for good, and ends long scans at their next stopping() poll.
    // The flag is stored before the mutex is taken: a balloon holds the mutex for each unit and
    // takes it again at once, so a store under the mutex waited for the whole balloon (std::mutex
    // is not fair). Taking the mutex after the store is what a waiter needs: one that tested the
    // predicate before it is already asleep and gets the notify; one that tests it later sees the
    // store (released by our unlock).
    void set_stopping() {
        stopping_.store(true, std::memory_order_relaxed);
        { const std::lock_guard lock(mu_); }
        cv_.notify_all();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<bool> parked_{false};
    std::atomic<bool> stopping_{false};
    std::atomic<uint64_t> epoch_{0};  // written under mu_
};

}  // namespace coiommu::workers
