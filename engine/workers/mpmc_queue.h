// A bounded lock-free MPMC queue (Dmitry Vyukov's design: a power-of-two ring of cells, each with
// its own sequence number; one CAS on the shared index per operation) and a spin-then-futex
// waiter for its consumers.
//
// Why this queue: the intake hands each pin request to a worker; the intake never has more than
// one request per vCPU outstanding, so a ring of >= vcpus cells never fills, and there is no
// allocation after construction. The queue costs nanoseconds against microseconds of DMA work
// (engine/README.md, "VFIO cost model"); what matters is that it never blocks and never allocates.
//
// Caveat (inherent to the design): a producer preempted between claiming a cell and publishing it
// delays the consumer of that cell; no item is lost.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>

namespace coiommu::workers {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Thread-safety: try_push/try_pop from any number of threads. T must be trivially copyable.
template <class T>
class MpmcQueue {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    // Capacity is rounded up to a power of two (at least 2).
    explicit MpmcQueue(std::size_t min_capacity)
        : capacity_(std::bit_ceil(min_capacity < 2 ? std::size_t{2} : min_capacity)),
          mask_(capacity_ - 1),
          cells_(std::make_unique<Cell[]>(capacity_)) {
        for (std::size_t i = 0; i < capacity_; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
    }
    MpmcQueue(const MpmcQueue&) = delete;
    MpmcQueue& operator=(const MpmcQueue&) = delete;

    // False when full (nothing changed).
    [[nodiscard]] bool try_push(const T& v) noexcept {
        std::size_t pos = tail_.load(std::memory_order_relaxed);
        for (;;) {
            Cell& c = cells_[pos & mask_];
            const std::size_t seq = c.seq.load(std::memory_order_acquire);
            const auto diff = static_cast<std::ptrdiff_t>(seq) - static_cast<std::ptrdiff_t>(pos);
            if (diff == 0) {
                if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                    c.value = v;
                    // Release: publishes the value to the consumer that acquires this seq.
                    c.seq.store(pos + 1, std::memory_order_release);
                    return true;
                }
            } else if (diff < 0) {
                return false;  // the cell still holds an item from one lap ago: full
            } else {
                pos = tail_.load(std::memory_order_relaxed);
            }
        }
    }

    // nullopt when empty.
    [[nodiscard]] std::optional<T> try_pop() noexcept {
        std::size_t pos = head_.load(std::memory_order_relaxed);
        for (;;) {
            Cell& c = cells_[pos & mask_];
            const std::size_t seq = c.seq.load(std::memory_order_acquire);
            const auto diff = static_cast<std::ptrdiff_t>(seq) - static_cast<std::ptrdiff_t>(pos + 1);
            if (diff == 0) {
                if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                    T v = c.value;
                    // Release: the producer one lap later may overwrite the cell.
                    c.seq.store(pos + capacity_, std::memory_order_release);
                    return v;
                }
            } else if (diff < 0) {
                return std::nullopt;  // empty
            } else {
                pos = head_.load(std::memory_order_relaxed);
            }
        }
    }

    // Items pushed and not yet popped (a racy estimate; exact when quiescent).
    [[nodiscard]] std::size_t size_estimate() const noexcept {
        const std::size_t t = tail_.load(std::memory_order_relaxed);
        const std::size_t h = head_.load(std::memory_order_relaxed);
        return t >= h ? t - h : 0;
    }
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

private:
    struct alignas(64) Cell {
        std::atomic<std::size_t> seq{0};
        T value{};
    };

    const std::size_t capacity_;
    const std::size_t mask_;
    std::unique_ptr<Cell[]> cells_;
    alignas(64) std::atomic<std::size_t> tail_{0};
    alignas(64) std::atomic<std::size_t> head_{0};
};

// An event count: consumers spin briefly, then block on a futex (C++20 atomic wait) until a
// producer announces new work. Producers pay one load when nobody sleeps.
//
// Protocol (consumer):  auto key = ec.prepare_wait();  if (try_pop()) { ec.cancel_wait(); ... }
//                       else ec.wait(key);
// Producer:             push(); ec.notify_one();
// "push; read waiters" and "announce waiter; try_pop" must not both miss each other. Both sides use
// an acq_rel RMW on waiters_ (no standalone fence: TSan cannot model those): RMWs on one atomic are
// totally ordered, so either the producer's RMW reads the consumer's increment (and it bumps the
// epoch), or the consumer's increment reads from the producer's RMW, which makes the push visible
// to the consumer's re-check.
class EventCount {
public:
    using Key = uint32_t;

    [[nodiscard]] Key prepare_wait() noexcept {
        waiters_.fetch_add(1, std::memory_order_acq_rel);
        return epoch_.load(std::memory_order_acquire);
    }
    void cancel_wait() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }
    // Blocks until the epoch moves past `key`.
    void wait(Key key) noexcept {
        epoch_.wait(key, std::memory_order_acquire);
        waiters_.fetch_sub(1, std::memory_order_relaxed);
    }
    void notify_one() noexcept {
        if (waiters_.fetch_add(0, std::memory_order_acq_rel) == 0) return;
        epoch_.fetch_add(1, std::memory_order_release);
        epoch_.notify_one();
    }
    void notify_all() noexcept {
        epoch_.fetch_add(1, std::memory_order_acq_rel);
        epoch_.notify_all();
    }

private:
    alignas(64) std::atomic<uint32_t> epoch_{0};
    alignas(64) std::atomic<uint32_t> waiters_{0};
};

}  // namespace coiommu::workers
