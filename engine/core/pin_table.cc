#include "engine/core/pin_table.h"

#include <sys/mman.h>

#include <cerrno>
#include <utility>

#include <fmt/format.h>

namespace coiommu::core {
namespace {

// A page lock is held across one DMA map or unmap (microseconds), so a short spin before the
// futex wait catches the common case of a holder finishing without a sleep/wake pair.
constexpr int kSpinsBeforeWait = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

}  // namespace

Result<PinTable> PinTable::create(uint64_t gfn_count) {
    if (gfn_count == 0) return make_error(EINVAL, "pin table for zero gfns");
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(gfn_count, sizeof(uint32_t), &bytes) ||
        __builtin_add_overflow(bytes, kPageMask, &bytes)) {
        return make_error(EOVERFLOW, fmt::format("pin table for {:#x} gfns", gfn_count));
    }
    bytes &= ~kPageMask;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        const int err = errno;
        return make_error(err, fmt::format("mmap pin table of {:#x} bytes", bytes));
    }
    return PinTable(static_cast<uint32_t*>(p), gfn_count, bytes);
}

PinTable::~PinTable() { release(); }

PinTable::PinTable(PinTable&& other) noexcept
    : words_(std::exchange(other.words_, nullptr)),
      count_(std::exchange(other.count_, 0)),
      bytes_(std::exchange(other.bytes_, 0)),
      counters_(std::move(other.counters_)),
      touched_(std::move(other.touched_)) {}

PinTable& PinTable::operator=(PinTable&& other) noexcept {
    if (this != &other) {
        release();
        words_ = std::exchange(other.words_, nullptr);
        count_ = std::exchange(other.count_, 0);
        bytes_ = std::exchange(other.bytes_, 0);
        counters_ = std::move(other.counters_);
        touched_ = std::move(other.touched_);
    }
    return *this;
}

void PinTable::release() {
    if (words_ != nullptr) ::munmap(words_, bytes_);
    words_ = nullptr;
    count_ = 0;
    bytes_ = 0;
}

uint64_t PinTable::mapped_pages() const { return counters_ ? counters_->mapped.load(std::memory_order_relaxed) : 0; }

// Contended: spin briefly, then sleep on the word until its holder unlocks.
uint32_t PinTable::acquire_slow(uint32_t* w) {
    auto ref = word_ref(w);
    int spins = 0;
    uint32_t cur = ref.load(std::memory_order_relaxed);
    for (;;) {
        if ((cur & kLocked) == 0) {
            // Acquire: as in lock().
            if (ref.compare_exchange_weak(cur, cur | kLocked, std::memory_order_acquire, std::memory_order_relaxed)) {
                return cur;
            }
            continue;  // cur was reloaded by the failed CAS
        }
        if (spins < kSpinsBeforeWait) {
            ++spins;
            cpu_relax();
        } else {
            // Counted before the last look at the word, so a RunLock that unlocks after that look
            // sees the count, and one that unlocked before is seen by it (RunLock::wake_waiters).
            counters_->waiters.fetch_add(1, std::memory_order_seq_cst);
            cur = ref.load(std::memory_order_seq_cst);
            if ((cur & kLocked) != 0) ref.wait(cur, std::memory_order_relaxed);
            counters_->waiters.fetch_sub(1, std::memory_order_relaxed);
        }
        cur = ref.load(std::memory_order_relaxed);
    }
}

PinTable::PageLock PinTable::try_lock(Gfn gfn) {
    uint32_t* w = words_ + raw(gfn);
    auto ref = word_ref(w);
    uint32_t cur = ref.load(std::memory_order_relaxed);
    while ((cur & kLocked) == 0) {
        if (ref.compare_exchange_weak(cur, cur | kLocked, std::memory_order_acquire, std::memory_order_relaxed)) {
            return PageLock(this, w);
        }
    }
    return PageLock();
}

void PinTable::PageLock::clear_mapped() {
    if (publish_mapped_) {
        // Recorded in this critical section and never published: withdraw it.
        publish_mapped_ = false;
    } else {
        word_ref(word_).fetch_and(~kMapped, std::memory_order_release);
    }
    table_->counters_->mapped.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace coiommu::core
