// Guest-side DTT, modelled on the ChromiumOS frontend (kernel/dma/coiommu.c):
//  - table pages are zeroed before they are published, and published with a 64-bit cmpxchg
//    0 -> (gpa | PRESENT) (release, so a host that loads the entry with acquire sees the zeroes);
//  - a leaf "mark" is one CAS loop that checks the cap, increments the count and sets ACCESSED,
//    followed by a seq_cst load of PINNED (the guest's atomic_inc + test_bit; the pair is what the
//    host's unpin CAS is ordered against);
//  - "unmark" decrements with a CAS loop that refuses to go below zero.
#include "engine/emulator/guest_dtt.h"

#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace coiommu::emulator {
namespace {

using core::kDtteAccessed;
using core::kDtteMapCountMask;
using core::kDttEntryAddrMask;
using core::kDttEntryPresent;
using core::kDttePinned;
using core::kDttLeafMask;
using core::kDttLeafStride;
using core::kDttPageSize;
using core::kDttUpperMask;
using core::kDttUpperStride;

uint64_t upper_index(Gfn gfn, uint64_t level) {
    return (raw(gfn) >> (kDttLeafStride + (level - 2) * kDttUpperStride)) & kDttUpperMask;
}

}  // namespace

GuestDtt::GuestDtt(const GuestMemory& mem, const GuestDttConfig& cfg)
    : mem_(&mem),
      levels_(cfg.levels),
      pool_base_(cfg.pool_base),
      pool_pages_(cfg.pool_pages),
      max_map_count_(static_cast<uint32_t>(kDtteMapCountMask - cfg.ncpus)) {}

Result<std::unique_ptr<GuestDtt>> GuestDtt::create(const GuestMemory& mem, const GuestDttConfig& cfg) {
    if (cfg.levels == 0 || cfg.levels > core::kMaxDttLevel) {
        return make_error(EINVAL, fmt::format("guest DTT: invalid level {}", cfg.levels));
    }
    if (!page_aligned(cfg.pool_base) || cfg.pool_pages == 0) {
        return make_error(EINVAL,
                          fmt::format("guest DTT: bad pool {:#x} x {} pages", raw(cfg.pool_base), cfg.pool_pages));
    }
    if (cfg.ncpus == 0 || cfg.ncpus > core::kMaxVcpus) {
        return make_error(EINVAL, fmt::format("guest DTT: bad cpu count {}", cfg.ncpus));
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(cfg.pool_pages, kDttPageSize, &bytes) || !mem.contains(cfg.pool_base, bytes)) {
        return make_error(EFAULT, fmt::format("guest DTT: pool {:#x} x {} pages outside guest RAM", raw(cfg.pool_base),
                                              cfg.pool_pages));
    }
    std::unique_ptr<GuestDtt> dtt(new GuestDtt(mem, cfg));
    auto root = dtt->alloc_page();
    if (!root) return coiommu::unexpected(with_context(root.error(), "guest DTT root"));
    dtt->root_ = *root;
    return dtt;
}

Result<Gpa> GuestDtt::alloc_page() const {
    uint64_t index = 0;
    {
        std::lock_guard<std::mutex> guard(pool_mu_);
        if (!free_list_.empty()) {
            index = free_list_.back();
            free_list_.pop_back();
        } else if (next_unused_ < pool_pages_) {
            index = next_unused_++;
        } else {
            return make_error(ENOMEM, "guest DTT: table page pool exhausted");
        }
    }
    const Gpa page = offset(pool_base_, index * kDttPageSize);
    auto p = mem_->host_ptr(page, kDttPageSize);
    if (!p) return coiommu::unexpected(p.error());  // cannot happen: create() checked the pool
    // Safety: a page just taken from the pool is unpublished (no entry points at it), so plain
    // stores race with nobody; the release CAS that publishes it orders them before any reader.
    std::memset(*p, 0, kDttPageSize);
    return page;
}

void GuestDtt::free_page(Gpa page) const {
    std::lock_guard<std::mutex> guard(pool_mu_);
    free_list_.push_back((raw(page) - raw(pool_base_)) / kDttPageSize);
}

uint64_t GuestDtt::pages_in_use() const {
    std::lock_guard<std::mutex> guard(pool_mu_);
    return next_unused_ - free_list_.size();
}

Status GuestDtt::check_reach(Gfn gfn) const {
    const uint64_t bits = core::dtt_gfn_bits(levels_);
    if (bits < 64 && (raw(gfn) >> bits) != 0) {
        return make_error(ERANGE, fmt::format("gfn {:#x} beyond a {}-level DTT", raw(gfn), levels_));
    }
    return ok();
}

Result<std::byte*> GuestDtt::walk(Gfn gfn, uint64_t stop_level, Alloc alloc) const {
    COIOMMU_TRY(check_reach(gfn));
    Gpa table = root_;
    for (uint64_t level = levels_; level > stop_level; --level) {
        auto page = mem_->host_ptr(table, kDttPageSize);
        if (!page) return coiommu::unexpected(with_context(page.error(), fmt::format("guest DTT level {}", level)));
        GuestAtomicU64 slot(reinterpret_cast<uint64_t*>(*page) + upper_index(gfn, level));
        // Safety: an aligned u64 inside a table page in guest RAM; acquire pairs with the release
        // CAS that published the next page (its zeroed contents are visible).
        uint64_t entry = slot.load(std::memory_order_acquire);
        if ((entry & kDttEntryPresent) == 0) {
            if (alloc == Alloc::No) {
                return make_error(ENOENT, fmt::format("guest DTT absent at level {} for gfn {:#x}", level, raw(gfn)));
            }
            auto fresh = alloc_page();
            if (!fresh) return coiommu::unexpected(fresh.error());
            uint64_t expected = 0;
            // Safety: same word; the release half publishes our zeroed page. A failed CAS loads
            // relaxed, so the winner's entry is re-read below with acquire.
            if (slot.compare_exchange(expected, raw(*fresh) | kDttEntryPresent, std::memory_order_acq_rel)) {
                entry = raw(*fresh) | kDttEntryPresent;
            } else {
                free_page(*fresh);
                // Safety: same word; acquire makes the winner's zeroed page visible.
                entry = slot.load(std::memory_order_acquire);
                if ((entry & kDttEntryPresent) == 0) {
                    // A concurrent drop_table (shrinker hook) cleared it again: give up.
                    return make_error(EAGAIN,
                                      fmt::format("guest DTT level {} for gfn {:#x} raced a drop", level, raw(gfn)));
                }
            }
        }
        table = Gpa{entry & kDttEntryAddrMask};
    }
    auto page = mem_->host_ptr(table, kDttPageSize);
    if (!page) return coiommu::unexpected(with_context(page.error(), "guest DTT table page"));
    return *page;
}

Result<GuestAtomicU32> GuestDtt::leaf(Gfn gfn, Alloc alloc) const {
    auto page = walk(gfn, 1, alloc);
    if (!page) return coiommu::unexpected(page.error());
    // Safety: index < 1024 inside a 4 KiB leaf page in guest RAM; 4-byte aligned.
    return GuestAtomicU32(reinterpret_cast<uint32_t*>(*page) + (raw(gfn) & kDttLeafMask));
}

Result<bool> GuestDtt::mark(Gfn gfn) {
    auto e = leaf(gfn, Alloc::Yes);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); seq_cst as the guest's locked RMW (see file comment).
    uint32_t cur = e->load(std::memory_order_relaxed);
    for (;;) {
        if ((cur & kDtteMapCountMask) >= max_map_count_) {
            return make_error(EINVAL, fmt::format("gfn {:#x}: map count at its cap {}", raw(gfn), max_map_count_));
        }
        if (e->compare_exchange(cur, (cur + 1) | kDtteAccessed, std::memory_order_seq_cst)) break;
    }
    // Safety: leaf word; seq_cst orders this test after the increment (Dekker pair with the
    // host's unpin CAS).
    return (e->load(std::memory_order_seq_cst) & kDttePinned) != 0;
}

Status GuestDtt::decrement(Gfn gfn, ClearAccessed clear_at_zero) {
    auto e = leaf(gfn, Alloc::No);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); seq_cst RMW as the guest's atomic_dec.
    uint32_t cur = e->load(std::memory_order_relaxed);
    for (;;) {
        if ((cur & kDtteMapCountMask) == 0) {
            return make_error(EINVAL, fmt::format("gfn {:#x}: unmap with a zero map count", raw(gfn)));
        }
        uint32_t next = cur - 1;
        if (clear_at_zero == ClearAccessed::Yes && (next & kDtteMapCountMask) == 0) next &= ~kDtteAccessed;
        if (e->compare_exchange(cur, next, std::memory_order_seq_cst)) return ok();
    }
}

Status GuestDtt::unmark(Gfn gfn) { return decrement(gfn, ClearAccessed::No); }
Status GuestDtt::unmark_after_failure(Gfn gfn) { return decrement(gfn, ClearAccessed::Yes); }

Result<uint32_t> GuestDtt::entry(Gfn gfn) const {
    auto e = leaf(gfn, Alloc::No);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); a seq_cst snapshot.
    return e->load(std::memory_order_seq_cst);
}

bool GuestDtt::pinned(Gfn gfn) const {
    auto v = entry(gfn);
    return v && (*v & kDttePinned) != 0;
}

uint32_t GuestDtt::map_count(Gfn gfn) const {
    auto v = entry(gfn);
    return v ? (*v & kDtteMapCountMask) : 0;
}

Result<Gpa> GuestDtt::leaf_entry_gpa(Gfn gfn) const {
    auto t = table_gpa(gfn, 1);
    if (!t) return coiommu::unexpected(t.error());
    return offset(*t, (raw(gfn) & kDttLeafMask) * sizeof(uint32_t));
}

Result<Gpa> GuestDtt::table_gpa(Gfn gfn, uint64_t level) const {
    if (level == 0 || level > levels_) return make_error(EINVAL, fmt::format("guest DTT: bad level {}", level));
    auto page = walk(gfn, level, Alloc::No);
    if (!page) return coiommu::unexpected(page.error());
    // Translate the host page back to its GPA through the region that holds it.
    for (const auto& r : mem_->regions()) {
        if (*page >= r.host && *page < r.host + r.size) return offset(r.base, static_cast<uint64_t>(*page - r.host));
    }
    return make_error(EFAULT, "guest DTT: table page outside guest RAM");
}

Status GuestDtt::set_entry(Gfn gfn, uint32_t value) {
    auto e = leaf(gfn, Alloc::Yes);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); seq_cst store (a guest write the host may race with).
    e->store(value, std::memory_order_seq_cst);
    return ok();
}

Status GuestDtt::clear_pinned(Gfn gfn) {
    auto e = leaf(gfn, Alloc::Yes);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); seq_cst RMW.
    e->fetch_and(~kDttePinned, std::memory_order_seq_cst);
    return ok();
}

Status GuestDtt::forge_pinned(Gfn gfn) {
    auto e = leaf(gfn, Alloc::Yes);
    if (!e) return coiommu::unexpected(e.error());
    // Safety: leaf word from leaf(); seq_cst RMW.
    e->fetch_or(kDttePinned, std::memory_order_seq_cst);
    return ok();
}

Status GuestDtt::set_upper_entry(Gfn gfn, uint64_t level, uint64_t raw_entry) {
    if (level < 2 || level > levels_) return make_error(EINVAL, fmt::format("guest DTT: bad upper level {}", level));
    auto page = walk(gfn, level, Alloc::Yes);
    if (!page) return coiommu::unexpected(page.error());
    // Safety: aligned u64 inside a table page in guest RAM; release as a publishing guest write.
    GuestAtomicU64(reinterpret_cast<uint64_t*>(*page) + upper_index(gfn, level))
        .store(raw_entry, std::memory_order_release);
    return ok();
}

Status GuestDtt::drop_table(Gfn gfn, uint64_t level) {
    if (level == 0 || level >= levels_)
        return make_error(EINVAL, fmt::format("guest DTT: cannot drop level {}", level));
    auto parent = walk(gfn, level + 1, Alloc::No);
    if (!parent) return coiommu::unexpected(parent.error());
    GuestAtomicU64 slot(reinterpret_cast<uint64_t*>(*parent) + upper_index(gfn, level + 1));
    // Safety: aligned u64 inside a table page in guest RAM; an atomic exchange-by-CAS so two
    // droppers cannot both free the page.
    uint64_t cur = slot.load(std::memory_order_acquire);
    for (;;) {
        if ((cur & kDttEntryPresent) == 0) {
            return make_error(ENOENT,
                              fmt::format("guest DTT: level {} table for gfn {:#x} already absent", level, raw(gfn)));
        }
        if (slot.compare_exchange(cur, 0, std::memory_order_acq_rel)) break;
    }
    const Gpa page{cur & kDttEntryAddrMask};
    if (raw(page) >= raw(pool_base_) && raw(page) - raw(pool_base_) < pool_pages_ * kDttPageSize) {
        free_page(page);
    }
    return ok();
}

}  // namespace coiommu::emulator
