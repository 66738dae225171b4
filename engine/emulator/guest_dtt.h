// The guest side of the DMA Tracking Table: what the Linux CoIOMMU frontend does to the DTT
// (engine/README.md, "DTT format"), emulated over a GuestMemory so tests and the load generator
// can play the guest against the real host engine.
//
// Table pages come from a reserved range of guest RAM (the "pool"), handed out zeroed. Missing
// table pages are installed with a 64-bit CAS 0 -> (gpa | PRESENT), as the guest's cmpxchg; the
// loser of a race returns its page to the pool and follows the winner.
//
// Thread-safety: every method may be called concurrently from any number of "vCPU" threads
// (the pool has a mutex, taken only when a table page is allocated or freed). The test hooks
// that rewrite or free table pages (set_upper_entry, drop_table) model a guest misbehaving or its
// shrinker: they are safe against other GuestDtt calls, but a host walker reading the same page
// at the same time sees whatever the hook left (as with a real guest).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/core/spec.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::emulator {

struct GuestDttConfig {
    uint64_t levels = 4;      // 1..core::kMaxDttLevel (x86-64 4-level paging uses 4)
    Gpa pool_base{};          // first page of the reserved table-page range (page aligned)
    uint64_t pool_pages = 0;  // pages in the range; the root takes one
    uint32_t ncpus = 1;       // num_possible_cpus(): the map count caps at 0xFFFF - ncpus
};

class GuestDtt {
public:
    // Allocates the root page. Errors: EINVAL for levels outside 1..kMaxDttLevel, an unaligned
    // pool base, zero pool pages or ncpus outside 1..kMaxVcpus; EFAULT when the pool is not
    // inside one guest RAM region.
    [[nodiscard]] static Result<std::unique_ptr<GuestDtt>> create(const GuestMemory& mem, const GuestDttConfig& cfg);

    GuestDtt(const GuestDtt&) = delete;
    GuestDtt& operator=(const GuestDtt&) = delete;

    [[nodiscard]] Gpa dtt_root() const { return root_; }
    [[nodiscard]] uint64_t levels() const { return levels_; }
    // The map-count cap (0xFFFF - ncpus).
    [[nodiscard]] uint32_t max_map_count() const { return max_map_count_; }

    // The guest's "mark" of one page for a DMA map: allocate missing table pages, increment the
    // map count and set ACCESSED (one atomic RMW), then test PINNED.
    // Returns whether PINNED was set (false: the guest must send a pin request).
    // Errors: ERANGE when gfn is beyond the table's reach; ENOMEM when the pool is exhausted;
    // EINVAL when the map count is at the cap (the guest's -EINVAL); EAGAIN when a concurrent
    // drop_table() removed a table this call was installing.
    [[nodiscard]] Result<bool> mark(Gfn gfn);

    // Plain DMA unmap: decrement the map count (no notification: lazy unpinning).
    // Errors: ENOENT when the leaf table is absent; EINVAL when the count is already 0 (the
    // guest's error log), nothing changed.
    [[nodiscard]] Status unmark(Gfn gfn);
    // Roll-back after a failed DMA map: decrement the map count and clear ACCESSED when it
    // reaches 0. Errors as unmark().
    [[nodiscard]] Status unmark_after_failure(Gfn gfn);

    // The leaf entry. Errors: ERANGE (beyond reach), ENOENT (table absent).
    [[nodiscard]] Result<uint32_t> entry(Gfn gfn) const;
    // PINNED set in the leaf entry (false when the table is absent).
    [[nodiscard]] bool pinned(Gfn gfn) const;
    // The map count (0 when the table is absent).
    [[nodiscard]] uint32_t map_count(Gfn gfn) const;
    // GPA of the gfn's leaf entry. Errors: ERANGE, ENOENT.
    [[nodiscard]] Result<Gpa> leaf_entry_gpa(Gfn gfn) const;
    // GPA of the table page at `level` on gfn's path (level == levels() is the root).
    // Errors: EINVAL for a level outside 1..levels(); ERANGE; ENOENT when absent.
    [[nodiscard]] Result<Gpa> table_gpa(Gfn gfn, uint64_t level) const;

    // ---- test hooks: a hostile or buggy guest, and the shrinker ----
    // Stores a raw leaf value (creating missing tables). Errors as mark() minus EINVAL.
    [[nodiscard]] Status set_entry(Gfn gfn, uint32_t value);
    // Clears PINNED behind the host's back / forges it. Errors as set_entry().
    [[nodiscard]] Status clear_pinned(Gfn gfn);
    [[nodiscard]] Status forge_pinned(Gfn gfn);
    // Overwrites the upper entry at `level` (2..levels()) on gfn's path with a raw value, creating
    // the tables above it. Errors: EINVAL for a bad level; ERANGE; ENOMEM.
    [[nodiscard]] Status set_upper_entry(Gfn gfn, uint64_t level, uint64_t raw_entry);
    // The shrinker: clears the parent entry of the level-`level` table on gfn's path
    // (1..levels()-1) and returns that page to the pool. Its children are not freed.
    // Errors: EINVAL for a bad level; ERANGE; ENOENT when already absent.
    [[nodiscard]] Status drop_table(Gfn gfn, uint64_t level);

    // Pool accounting.
    [[nodiscard]] uint64_t pages_in_use() const;
    [[nodiscard]] uint64_t pool_pages() const { return pool_pages_; }

private:
    GuestDtt(const GuestMemory& mem, const GuestDttConfig& cfg);

    enum class Alloc : bool { No, Yes };
    // Host pointer of the table page at `stop_level` on gfn's path (allocating missing tables when
    // alloc == Yes). stop_level 1 is the leaf page.
    [[nodiscard]] Result<std::byte*> walk(Gfn gfn, uint64_t stop_level, Alloc alloc) const;
    [[nodiscard]] Result<GuestAtomicU32> leaf(Gfn gfn, Alloc alloc) const;
    [[nodiscard]] Status check_reach(Gfn gfn) const;
    [[nodiscard]] Result<Gpa> alloc_page() const;
    void free_page(Gpa page) const;
    enum class ClearAccessed : bool { No, Yes };
    [[nodiscard]] Status decrement(Gfn gfn, ClearAccessed clear_at_zero);

    const GuestMemory* mem_;
    uint64_t levels_;
    Gpa pool_base_;
    uint64_t pool_pages_;
    uint32_t max_map_count_;
    Gpa root_{};

    mutable std::mutex pool_mu_;
    mutable uint64_t next_unused_ = 0;         // bump index into the pool
    mutable std::vector<uint64_t> free_list_;  // indices of freed pages
};

}  // namespace coiommu::emulator
