// DTT walk.
//
// Layout (engine/README.md, "DTT format"): a radix tree of 4 KiB guest pages, `levels` deep. Upper
// levels hold 512 u64 entries (bit 0 PRESENT, bits 12..63 the GPA of the next page), the leaf holds
// 1024 u32 entries (PINNED bit 31, ACCESSED bit 30, map count in bits 0..15).
//
// Validation differs from crosvm's walk in three places, all because the table is guest-controlled:
//  - levels above kMaxDttLevel are rejected (crosvm's shift reaches 64 at level 8);
//  - a gfn with bits above the table's reach is ERANGE (crosvm masks them off and so aliases
//    a huge gfn onto the entry of a small one);
//  - every table page, not only the final leaf word, must lie wholly inside guest RAM, so the
//    cursor's pointer arithmetic inside a leaf page can never leave guest RAM.
#include "engine/core/dtt.h"

#include <atomic>
#include <cerrno>

#include <fmt/format.h>

namespace coiommu::core {

Result<uint64_t> level_to_offset(Gfn gfn, uint64_t level) {
    if (level == 0 || level > kMaxDttLevel) {
        return make_error(EINVAL, fmt::format("invalid DTT level {} for gfn {:#x}", level, raw(gfn)));
    }
    if (level == 1) return raw(gfn) & kDttLeafMask;
    const uint64_t shift = kDttLeafStride + (level - 2) * kDttUpperStride;  // <= 55
    return (raw(gfn) >> shift) & kDttUpperMask;
}

Result<DttWalker> DttWalker::create(const GuestMemory& mem, Gpa root, uint64_t levels) {
    if (levels == 0 || levels > kMaxDttLevel) {
        return make_error(EINVAL, fmt::format("invalid DTT level {} (valid 1..{})", levels, kMaxDttLevel));
    }
    if (!page_aligned(root)) {
        return make_error(EINVAL, fmt::format("DTT root {:#x} is not page aligned", raw(root)));
    }
    if (!mem.contains(root, kDttPageSize)) {
        return make_error(EFAULT, fmt::format("DTT root {:#x} outside guest RAM", raw(root)));
    }
    return DttWalker(mem, root, levels);
}

LeafLookup DttWalker::find_slow(Gfn gfn) {
    LeafLookup out;
    if (gfn_bits_ < 64 && (raw(gfn) >> gfn_bits_) != 0) {
        out.status = LeafStatus::OutOfReach;
        return out;
    }
    DttLeafEntry* page = walk(gfn, out);
    if (page == nullptr) return out;
    cursor_page_ = page;
    cursor_tag_ = raw(gfn) >> kDttLeafStride;
    // Safety: as in cached(): an index < 1024 into a leaf page inside guest RAM.
    out.entry = GuestAtomicU32(page + (raw(gfn) & kDttLeafMask));
    return out;
}

Result<GuestAtomicU32> DttWalker::leaf_slow(Gfn gfn) {
    const LeafLookup r = find_slow(gfn);
    switch (r.status) {
        case LeafStatus::Found: return r.entry;
        case LeafStatus::OutOfReach:
            return make_error(ERANGE, fmt::format("gfn {:#x} beyond the reach of a {}-level DTT", raw(gfn), levels_));
        case LeafStatus::Absent:
            return make_error(ENOENT, fmt::format("DTT absent at level {} for gfn {:#x}", r.level, raw(gfn)));
        case LeafStatus::OutsideRam:
            return make_error(EFAULT, fmt::format("DTT level {} table {:#x} for gfn {:#x} outside guest RAM", r.level,
                                                  raw(r.table), raw(gfn)));
    }
    return make_error(EINVAL, "unknown DTT lookup status");  // unreachable
}

std::byte* DttWalker::table_page(Gpa gpa) {
    // `off < size` also rejects gpa < base (the subtraction wraps to a huge value).
    auto fits = [gpa](uint64_t base, uint64_t size) {
        const uint64_t off = raw(gpa) - base;
        return off < size && size - off >= kDttPageSize;
    };
    if (region_.size != 0 && fits(region_.base, region_.size)) return region_.host + (raw(gpa) - region_.base);
    for (const auto& r : mem_->regions()) {
        if (fits(raw(r.base), r.size)) {
            region_ = RegionCache{raw(r.base), r.size, r.host};
            return r.host + (raw(gpa) - raw(r.base));
        }
    }
    return nullptr;
}

DttLeafEntry* DttWalker::walk(Gfn gfn, LeafLookup& out) {
    ++slow_walks_;
    Gpa table = root_;
    for (uint64_t level = levels_; level >= 2; --level) {
        std::byte* page = table_page(table);
        if (page == nullptr) {
            out.status = LeafStatus::OutsideRam;
            out.level = level;
            out.table = table;
            return nullptr;
        }
        const uint64_t index = (raw(gfn) >> (kDttLeafStride + (level - 2) * kDttUpperStride)) & kDttUpperMask;
        auto* entries = reinterpret_cast<DttUpperEntry*>(page);
        // Safety: `entries` is a whole 4 KiB page inside guest RAM (table_page) and page aligned,
        // index < 512, so the u64 is in bounds and naturally aligned. The guest installs upper
        // entries with a 64-bit cmpxchg after zeroing the new page; acquire pairs with that
        // (full-barrier) cmpxchg so the zeroed contents of the next page are visible to us.
        const uint64_t entry = GuestAtomicU64(entries + index).load(std::memory_order_acquire);
        if ((entry & kDttEntryPresent) == 0) {
            out.status = LeafStatus::Absent;
            out.level = level;
            return nullptr;
        }
        table = Gpa{(entry >> kDttEntryPfnShift) << kDttEntryPfnShift};
    }
    std::byte* leaf_page = table_page(table);
    if (leaf_page == nullptr) {
        out.status = LeafStatus::OutsideRam;
        out.level = 1;
        out.table = table;
    }
    return reinterpret_cast<DttLeafEntry*>(leaf_page);
}

}  // namespace coiommu::core
