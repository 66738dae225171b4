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
//                     block with std::atomic_ref::wait (a futex), there is no global lock.
//   bit 30  kMapped   this host mapped the page (and has not unmapped it yet).
//   bits 0..29        unused, always zero (coalesced extents are recorded in workers::ExtentMap).
//
// Thread-safety: every method may be called from any thread. kMapped changes only under the
// page's lock; mapped() may be read without it (acquire) and is then a snapshot.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "engine/base/addr.h"
#include "engine/base/result.h"

namespace coiommu::core {

class PinTable {
public:
    static constexpr uint32_t kLocked = uint32_t{1} << 31;
    static constexpr uint32_t kMapped = uint32_t{1} << 30;
    static constexpr uint32_t kReservedMask = kMapped - 1;

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
    [[nodiscard]] bool mapped(Gfn gfn) const;

    // Exclusive hold of one page's record. Move-only; unlocks on destruction.
    class PageLock {
    public:
        PageLock() = default;
        ~PageLock() { unlock(); }
        PageLock(PageLock&& other) noexcept : table_(other.table_), word_(other.word_) { other.word_ = nullptr; }
        PageLock& operator=(PageLock&& other) noexcept;
        PageLock(const PageLock&) = delete;
        PageLock& operator=(const PageLock&) = delete;

        [[nodiscard]] bool owns_lock() const { return word_ != nullptr; }
        // Preconditions for the three below: owns_lock().
        [[nodiscard]] bool mapped() const;
        // Records the page as mapped by us. Precondition: !mapped().
        void set_mapped();
        // Records the page as no longer mapped by us. Precondition: mapped().
        void clear_mapped();
        // Releases the lock early (idempotent).
        void unlock();

    private:
        friend class PinTable;
        PageLock(PinTable* table, uint32_t* word) : table_(table), word_(word) {}
        PinTable* table_ = nullptr;
        uint32_t* word_ = nullptr;
    };

    // Blocks until the page's lock is acquired. Precondition: in_range(gfn).
    [[nodiscard]] PageLock lock(Gfn gfn);
    // Acquires the lock only if it is free now; an empty PageLock (owns_lock() false) otherwise.
    // Precondition: in_range(gfn).
    [[nodiscard]] PageLock try_lock(Gfn gfn);

    // Number of pages recorded as mapped (maintained by set_mapped/clear_mapped; relaxed).
    [[nodiscard]] uint64_t mapped_pages() const;

private:
    struct alignas(64) Counters {
        std::atomic<uint64_t> mapped{0};
    };

    PinTable(uint32_t* words, uint64_t count, uint64_t bytes)
        : words_(words), count_(count), bytes_(bytes), counters_(std::make_unique<Counters>()) {}
    void release();

    uint32_t* words_ = nullptr;
    uint64_t count_ = 0;
    uint64_t bytes_ = 0;  // length of the mapping
    std::unique_ptr<Counters> counters_;
};

}  // namespace coiommu::core
