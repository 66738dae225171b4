// The host's own, authoritative record of which gfns it has DMA-mapped.
//
// The guest can write anything into the DTT, including clearing or forging PINNED bits, so the
// DTT cannot tell the host what it mapped. This table can: a page is recorded here exactly while
// this host holds a 4 KiB DMA mapping for it that it created itself. With it the host never maps a
// page twice, never unmaps a mapping it did not create and never forgets (leaks) one.
//
// Layout: one uint32_t word per gfn below GuestMemory::gfn_span(), in an anonymous
// MAP_PRIVATE|MAP_NORESERVE mapping, so only pages holding touched words are committed (one 4 KiB
// page of words covers 4 MiB of guest RAM).
//
//   bit 31  kLocked   per-page lock: pin and unpin of one page are serialised on it. Waiters
//                     block with std::atomic_ref::wait (a futex), counted in one table-wide
//                     waiter count that a RunLock reads once per run; there is no global lock.
//   bit 30  kMapped   this host mapped the page (and has not unmapped it yet).
//   bits 0..29        unused, always zero (coalesced extents are recorded in workers::ExtentMap).
//
// Thread-safety: every method may be called from any thread. kMapped changes only under the
// page's lock; mapped() may be read without it (acquire) and is then a snapshot. A page the
// holder records as mapped (set_mapped/mark_mapped) is published by the release store that
// unlocks it, so a lock-free reader may see kMapped late, never early: every reader that acts on
// the record (unpin, balloon, teardown) takes the lock, and the pin path's lock-free "already
// pinned" check only falls through to its locked path when it reads the bit clear.
//
// Touched chunks: one summary bit per chunk of kChunkPages gfns (one 4 KiB page of words), set
// (relaxed, before the unlock's release store) the first time a page of the chunk is recorded as
// mapped and never cleared. for_each_mapped() visits only those chunks, so a scan of a sparse 1 TiB
// guest (2^28 words) reads a 32 KiB summary instead of 1 GiB of words.
//
// Cost (the pin path runs this per page): the lock is one CAS, the unlock one plain release store
// (only the holder writes a locked word), set_mapped adds no atomic of its own, and the hot
// functions are inline; mark_mapped + add_mapped_pages(n) count a run with one shared add. The pin
// path holds a whole run with one RunLock (lock_run): no lock object per page, the touched-chunk
// bits once per chunk, each page's kMapped kept in a bit mask taken with the lock (so the unlock
// stores without a load), and one waiter-count read-modify-write per run instead of a
// futex-waiter check per page (213 -> 160 -> 113 instructions per page of a 512-page batch, callgrind,
// tests/bench/workers/README.md).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <utility>

#include "engine/base/addr.h"
#include "engine/base/result.h"

namespace coiommu::core {

class PinTable {
public:
    static constexpr uint32_t kLocked = uint32_t{1} << 31;
    static constexpr uint32_t kMappedShift = 30;
    static constexpr uint32_t kMapped = uint32_t{1} << kMappedShift;
    static constexpr uint32_t kReservedMask = kMapped - 1;
    static constexpr uint64_t kChunkShift = 10;  // 1024 words: one 4 KiB page of the table
    static constexpr uint64_t kChunkPages = uint64_t{1} << kChunkShift;

    // A table for gfns [0, gfn_count).
    // Errors: EINVAL when gfn_count is 0; EOVERFLOW when the table size overflows; mmap's errno.
    [[nodiscard]] static Result<PinTable> create(uint64_t gfn_count);

    PinTable() = default;
    ~PinTable();
    PinTable(PinTable&& other) noexcept;
    PinTable& operator=(PinTable&& other) noexcept;
    PinTable(const PinTable&) = delete;
    PinTable& operator=(const PinTable&) = delete;

    [[nodiscard]] uint64_t size() const { return count_; }
    [[nodiscard]] bool in_range(Gfn gfn) const { return raw(gfn) < count_; }

    // Whether this host has `gfn` mapped (acquire load, no lock). Precondition: in_range(gfn).
    [[nodiscard]] bool mapped(Gfn gfn) const {
        return (word_ref(words_ + raw(gfn)).load(std::memory_order_acquire) & kMapped) != 0;
    }

    enum class MappedState : uint8_t { Unmapped, Mapped };

    // Exclusive hold of one page's record. Move-only; unlocks on destruction.
    class PageLock {
    public:
        PageLock() = default;
        ~PageLock() { unlock(); }
        PageLock(PageLock&& other) noexcept
            : table_(other.table_), word_(other.word_), publish_mapped_(other.publish_mapped_) {
            other.word_ = nullptr;
        }
        // Inline: the unpinner move-assigns one lock per page of an extent (locks_[i] = lock(..)).
        PageLock& operator=(PageLock&& other) noexcept {
            if (this != &other) {
                unlock();
                table_ = other.table_;
                word_ = std::exchange(other.word_, nullptr);
                publish_mapped_ = std::exchange(other.publish_mapped_, false);
            }
            return *this;
        }
        PageLock(const PageLock&) = delete;
        PageLock& operator=(const PageLock&) = delete;

        [[nodiscard]] bool owns_lock() const { return word_ != nullptr; }
        // Preconditions for the four below: owns_lock().
        [[nodiscard]] bool mapped() const {
            return publish_mapped_ || (word_ref(word_).load(std::memory_order_relaxed) & kMapped) != 0;
        }
        // Records the page as mapped by us (published by unlock) and counts it in mapped_pages().
        // Precondition: !mapped().
        void set_mapped() {
            mark_mapped();
            table_->add_mapped_pages(1);
        }
        // set_mapped without the count: the caller adds a whole run with add_mapped_pages(n).
        void mark_mapped() { publish_mapped_ = true; }
        // Records the page as no longer mapped by us. Precondition: mapped().
        void clear_mapped();
        // Releases the lock (idempotent): one release store of the word without kLocked (with
        // kMapped when set_mapped ran), then a futex wake only if someone waits.
        void unlock() {
            if (word_ == nullptr) return;
            uint32_t* const w = std::exchange(word_, nullptr);
            auto ref = word_ref(w);
            uint32_t v = ref.load(std::memory_order_relaxed) & ~kLocked;
            if (publish_mapped_) {
                v |= kMapped;
                table_->note_touched(static_cast<uint64_t>(w - table_->words_));
            }
            publish_mapped_ = false;
            // Release pairs with the acquire of the next lock() and of mapped(): the DMA map and
            // the record happen-before whoever sees the word unlocked (or kMapped set).
            ref.store(v, std::memory_order_release);
            // notify_all: several threads may wait on one page (two vCPUs and the unpinner); each
            // re-checks and at most one wins the CAS. libstdc++ skips the futex wake when nobody
            // waits.
            ref.notify_all();
        }

    private:
        friend class PinTable;
        PageLock(PinTable* table, uint32_t* word) : table_(table), word_(word) {}
        PinTable* table_ = nullptr;
        uint32_t* word_ = nullptr;
        bool publish_mapped_ = false;  // set kMapped with the unlock
    };

    // Exclusive hold of the records of a run of consecutive gfns [first, first + size()), the pin
    // path's one lock object per run instead of one PageLock per page. Locked in ascending order,
    // the order of every multi-page holder (PageLock arrays included), so holders cannot deadlock.
    // Not movable (it lives in a worker's arena); unlocks on destruction.
    // Thread-safety: one thread uses a RunLock; the words it holds follow the rules at the top.
    class RunLock {
    public:
        static constexpr uint32_t kMaxPages = 512;  // workers::kMaxExtentPages

        RunLock() = default;
        ~RunLock() { unlock(); }
        RunLock(const RunLock&) = delete;
        RunLock& operator=(const RunLock&) = delete;

        [[nodiscard]] uint32_t size() const { return n_; }
        // Whether page i of the run is recorded as mapped by us (before the lock or by
        // mark_mapped). Precondition: i < size().
        [[nodiscard]] bool mapped(uint32_t i) const {
            return ((premapped_[i >> 6] | publish_[i >> 6]) >> (i & 63) & 1) != 0;
        }
        // The first page at or after `from` whose mapped() is `want`, or size() when there is none.
        // Precondition: from <= size().
        [[nodiscard]] uint32_t find(uint32_t from, MappedState want) const {
            const uint64_t flip = want == MappedState::Mapped ? 0 : ~uint64_t{0};
            for (uint32_t i = from; i < n_;) {
                const uint64_t bits = ((premapped_[i >> 6] | publish_[i >> 6]) ^ flip) >> (i & 63);
                if (bits != 0) {
                    const uint32_t at = i + static_cast<uint32_t>(std::countr_zero(bits));
                    return at < n_ ? at : n_;
                }
                i = (i | 63) + 1;
            }
            return n_;
        }
        // Records pages [begin, end) as mapped by us, published by unlock(); the caller counts them
        // with add_mapped_pages. Preconditions: begin < end <= size(); !mapped(i) for each.
        void mark_mapped(uint32_t begin, uint32_t end) {
            for (uint32_t i = begin; i < end;) {
                const uint32_t stop = std::min(end, (i | 63) + 1);
                const uint32_t len = stop - i;
                const uint64_t ones = len == 64 ? ~uint64_t{0} : (uint64_t{1} << len) - 1;
                publish_[i >> 6] |= ones << (i & 63);
                i = stop;
            }
            any_published_ = true;
        }
        // Releases every page (idempotent): per page one release store, then one read-modify-write
        // of the table's waiter count for the whole run (a futex wake per page only when some
        // thread sleeps in lock()); the touched-chunk bits once per chunk.
        void unlock() {
            if (n_ == 0) return;
            const uint32_t n = std::exchange(n_, 0);
            if (any_published_) {
                // Before the release stores, as PageLock::unlock; a chunk of the run with no page
                // published may be marked too, which only costs for_each_mapped a look.
                const auto index = static_cast<uint64_t>(first_ - table_->words_);
                for (uint64_t c = index >> kChunkShift; c <= (index + n - 1) >> kChunkShift; ++c) {
                    table_->note_touched(c << kChunkShift);
                }
            }
            // Only the holder writes a locked word and bits 0..29 are always zero, so the unlocked
            // word is kMapped or 0: no load. Release: as PageLock::unlock (the map and the record
            // happen-before the unlock).
            for (uint32_t b = 0; b < n; b += 64) {
                const uint32_t end = n - b < 64 ? n : b + 64;
                const uint64_t mapped = premapped_[b >> 6] | publish_[b >> 6];
                for (uint32_t i = b; i < end; ++i) {
                    const auto v = static_cast<uint32_t>(mapped >> (i - b) & 1) << kMappedShift;
                    word_ref(first_ + i).store(v, std::memory_order_release);
                }
            }
            wake_waiters(n);
            // premapped_ needs no clearing: lock_run writes each of its words that a run reads.
            if (any_published_) publish_.fill(0);
            any_published_ = false;
        }

    private:
        friend class PinTable;
        // A sleeper counts itself in the table's waiters (a seq_cst RMW) before its last look at
        // the word. This RMW on the same count reads its latest value: either it sees the sleeper
        // counted, or the sleeper's RMW comes after it and reads from it, so the stores above
        // (released by this RMW) happen-before the sleeper's look, which then sees the page
        // unlocked. Either way no sleeper is missed; the wake itself is libstdc++'s notify. (An RMW,
        // not a fence: one locked op per run, and TSan models it.)
        void wake_waiters(uint32_t n) const {
            if (table_->counters_->waiters.fetch_add(0, std::memory_order_seq_cst) == 0) return;
            for (uint32_t i = 0; i < n; ++i) word_ref(first_ + i).notify_all();
        }

        PinTable* table_ = nullptr;
        uint32_t* first_ = nullptr;
        uint32_t n_ = 0;
        bool any_published_ = false;
        std::array<uint64_t, kMaxPages / 64> premapped_{};  // bit i: page i had kMapped when locked
        std::array<uint64_t, kMaxPages / 64> publish_{};    // bit i: set kMapped on page i at unlock
    };

    // Locks [first, first + n) into `run`, ascending, blocking on each page as lock() does.
    // Preconditions: run holds nothing (size() == 0); 1 <= n <= RunLock::kMaxPages; first + n <= size().
    void lock_run(Gfn first, uint32_t n, RunLock& run) {
        uint32_t* const w0 = words_ + raw(first);
        for (uint32_t b = 0; b < n; b += 64) {
            const uint32_t end = n - b < 64 ? n : b + 64;
            uint64_t premapped = 0;  // kMapped of each page as we took it: ours to read while held
            for (uint32_t i = b; i < end; ++i) {
                premapped |= uint64_t{acquire(w0 + i) >> kMappedShift & 1} << (i - b);
            }
            run.premapped_[b >> 6] = premapped;
        }
        run.table_ = this;
        run.first_ = w0;
        run.n_ = n;
    }

    // Blocks until the page's lock is acquired. Precondition: in_range(gfn).
    [[nodiscard]] PageLock lock(Gfn gfn) {
        uint32_t* w = words_ + raw(gfn);
        (void)acquire(w);
        return PageLock(this, w);
    }
    // Acquires the lock only if it is free now; an empty PageLock (owns_lock() false) otherwise.
    // Precondition: in_range(gfn).
    [[nodiscard]] PageLock try_lock(Gfn gfn);

    // Calls f(Gfn) for each gfn of [first, end) (end clamped to size()) whose mapped() snapshot is
    // set, ascending, reading only the words of touched chunks. f returns false to stop; returns
    // false when f stopped it. A page recorded concurrently may or may not be visited.
    template <class F>
    bool for_each_mapped(Gfn first, uint64_t end, F&& f) const {
        end = end < count_ ? end : count_;
        for (uint64_t g = raw(first); g < end;) {
            const uint64_t chunk = g >> kChunkShift;
            const uint64_t chunk_end = (chunk + 1) << kChunkShift;
            // Acquire pairs with note_touched's RMW, which precedes the release store of the word.
            const uint64_t summary = touched_[chunk >> 6].load(std::memory_order_acquire) >> (chunk & 63);
            if (summary == 0) {  // no touched chunk left in this summary word: skip up to 64 at once
                g = ((chunk | 63) + 1) << kChunkShift;
                continue;
            }
            if ((summary & 1) == 0) {
                g = chunk_end;
                continue;
            }
            for (const uint64_t stop = chunk_end < end ? chunk_end : end; g < stop; ++g) {
                if (mapped(Gfn{g}) && !f(Gfn{g})) return false;
            }
        }
        return true;
    }

    // Number of pages recorded as mapped (maintained by set_mapped/add_mapped_pages and
    // clear_mapped; relaxed, so it may trail the records by the runs in flight).
    [[nodiscard]] uint64_t mapped_pages() const;
    // Counts `pages` pages recorded with PageLock::mark_mapped.
    void add_mapped_pages(uint64_t pages) { counters_->mapped.fetch_add(pages, std::memory_order_relaxed); }

private:
    struct alignas(64) Counters {
        std::atomic<uint64_t> mapped{0};
        std::atomic<uint32_t> waiters{0};  // threads about to sleep, or asleep, in acquire_slow
    };

    PinTable(uint32_t* words, uint64_t count, uint64_t bytes)
        : words_(words),
          count_(count),
          bytes_(bytes),
          counters_(std::make_unique<Counters>()),
          touched_(std::make_unique<std::atomic<uint64_t>[]>(((count >> kChunkShift) + 64) / 64)) {}
    // Marks the chunk of word `index` touched (a relaxed load first: set once per chunk, then
    // only read, so the pin path does not bounce a shared line).
    void note_touched(uint64_t index) {
        auto& w = touched_[(index >> kChunkShift) >> 6];
        const uint64_t bit = uint64_t{1} << ((index >> kChunkShift) & 63);
        if ((w.load(std::memory_order_relaxed) & bit) == 0) w.fetch_or(bit, std::memory_order_relaxed);
    }
    void release();
    // Takes the lock of word w, blocking as lock() says; returns the word as it was just before
    // (kLocked clear), which the new holder may read. The fast path is one CAS.
    uint32_t acquire(uint32_t* w) {
        uint32_t cur = word_ref(w).load(std::memory_order_relaxed);
        // Acquire pairs with the release in unlock(): the previous holder's DMA map/unmap and
        // record changes happen-before our critical section.
        if ((cur & kLocked) == 0 && word_ref(w).compare_exchange_strong(cur, cur | kLocked, std::memory_order_acquire,
                                                                        std::memory_order_relaxed)) {
            return cur;
        }
        return acquire_slow(w);
    }
    // Contended: spin briefly, then sleep on the word (counted in Counters::waiters).
    uint32_t acquire_slow(uint32_t* w);
    static std::atomic_ref<uint32_t> word_ref(uint32_t* w) { return std::atomic_ref<uint32_t>(*w); }

    uint32_t* words_ = nullptr;
    uint64_t count_ = 0;
    uint64_t bytes_ = 0;  // length of the mapping
    std::unique_ptr<Counters> counters_;
    std::unique_ptr<std::atomic<uint64_t>[]> touched_;  // one bit per chunk of kChunkPages gfns
};

}  // namespace coiommu::core
