// Host-side walk of the guest's DMA Tracking Table (DTT). Its format and crosvm's walk:
// engine/README.md, "DTT format".
//
// The DTT lives in guest RAM and the guest changes it at any time: it installs upper entries
// with a 64-bit cmpxchg, bumps leaf entries with atomic RMWs and frees all-zero table pages
// (shrinker). Every value read from it is validated before use, and the walker never forms a
// host pointer outside guest RAM.
#pragma once

#include <cstdint>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/core/spec.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::core {

// Index of `gfn`'s entry inside its level-`level` table page: gfn & 0x3FF for the leaf (level 1),
// (gfn >> (10 + (level-2)*9)) & 0x1FF above it.
// Errors: EINVAL for level 0 or level > kMaxDttLevel (the shift would reach 64).
[[nodiscard]] Result<uint64_t> level_to_offset(Gfn gfn, uint64_t level);

// The result of a lookup that never allocates (for scans, where an absent page is normal).
enum class LeafStatus {
    Found,       // entry is valid
    OutOfReach,  // ERANGE: the gfn has bits above the table's reach
    Absent,      // ENOENT: PRESENT clear at `level`
    OutsideRam,  // EFAULT: the table page at `level` (1 = leaf) is not inside guest RAM
};
struct LeafLookup {
    LeafStatus status = LeafStatus::Found;
    GuestAtomicU32 entry;  // valid only when Found
    uint64_t level = 0;    // where the walk stopped, for Absent / OutsideRam
    Gpa table{};           // the table page that was outside RAM, for OutsideRam
};

// Finds the leaf entry of a gfn. Holds a one-entry cursor (the host address of the last leaf
// page and its tag gfn >> 10): a lookup on the same leaf page as the previous one costs no walk.
//
// Thread-safety: a walker is per-thread state (it owns the cursor); copying one is cheap and
// gives an independent cursor. The GuestMemory must outlive every copy.
//
// Staleness: the cursor caches a guest page that the guest may free and reuse. That can only
// misdirect accesses within guest RAM (never host memory), exactly like crosvm's DTT iterator; keep
// a cursor for one request (reset_cursor() or a fresh copy per request) so staleness stays short.
class DttWalker {
public:
    // Errors: EINVAL when levels is 0 or above kMaxDttLevel, or root is not page aligned;
    // EFAULT when the root page is not wholly inside guest RAM.
    [[nodiscard]] static Result<DttWalker> create(const GuestMemory& mem, Gpa root, uint64_t levels);

    // The leaf entry of `gfn` as an atomic guest word.
    // Errors: ERANGE when gfn has bits above what `levels` levels index (crosvm silently
    // aliases such gfns onto a lower entry); ENOENT "DTT absent at level L for gfn" when an upper
    // entry's PRESENT bit is clear (also the normal state of a page the guest never mapped);
    // EFAULT when an upper entry points at a table page not wholly inside guest RAM.
    [[nodiscard]] Result<GuestAtomicU32> leaf(Gfn gfn) {
        if (uint32_t* p = cached(gfn)) return GuestAtomicU32(p);
        return leaf_slow(gfn);
    }

    // The same lookup with the failure as a status: no allocation on any path (leaf() formats an
    // error message). Same cursor behaviour.
    [[nodiscard]] LeafLookup find(Gfn gfn) {
        if (uint32_t* p = cached(gfn)) return LeafLookup{LeafStatus::Found, GuestAtomicU32(p), 0, Gpa{}};
        return find_slow(gfn);
    }

    // Forgets the cached leaf page: the next lookup walks from the root.
    void reset_cursor() { cursor_page_ = nullptr; }

    [[nodiscard]] Gpa root() const { return root_; }
    [[nodiscard]] uint64_t levels() const { return levels_; }
    // Number of walks from the root this walker (copy) has done: observability and tests.
    [[nodiscard]] uint64_t slow_walks() const { return slow_walks_; }

private:
    DttWalker(const GuestMemory& mem, Gpa root, uint64_t levels)
        : mem_(&mem), root_(root), levels_(levels), gfn_bits_(dtt_gfn_bits(levels)) {}

    // The fast path: the entry's host address when gfn lies on the cached leaf page.
    [[nodiscard]] DttLeafEntry* cached(Gfn gfn) const {
        if (cursor_page_ == nullptr || (raw(gfn) >> kDttLeafStride) != cursor_tag_) return nullptr;
        // Safety: cursor_page_ is the host address of a 4 KiB leaf page that walk() proved to lie
        // inside a guest RAM mapping; the index is < 1024, so the word is inside that page and
        // 4-byte aligned (pages are 4 KiB aligned).
        return cursor_page_ + (raw(gfn) & kDttLeafMask);
    }
    [[nodiscard]] LeafLookup find_slow(Gfn gfn);
    [[nodiscard]] Result<GuestAtomicU32> leaf_slow(Gfn gfn);
    // Fills `out` (status, and level/table on failure); returns the leaf page or nullptr.
    [[nodiscard]] DttLeafEntry* walk(Gfn gfn, LeafLookup& out);
    // Host address of the 4 KiB table page at gpa, or nullptr when it is not wholly inside one
    // guest RAM region. Remembers the last region hit (table pages are usually in one region).
    [[nodiscard]] std::byte* table_page(Gpa gpa);

    struct RegionCache {
        uint64_t base = 0;
        uint64_t size = 0;  // 0: empty
        std::byte* host = nullptr;
    };

    const GuestMemory* mem_;
    Gpa root_;
    uint64_t levels_;
    uint64_t gfn_bits_;
    DttLeafEntry* cursor_page_ = nullptr;  // host address of the cached leaf page
    uint64_t cursor_tag_ = 0;              // gfn >> kDttLeafStride of the cached page
    uint64_t slow_walks_ = 0;
    RegionCache region_;
};

}  // namespace coiommu::core
