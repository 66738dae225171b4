// pin_page / unpin_page.
//
// Two sources of truth meet here:
//  - the guest's leaf entry (PINNED bit 31, ACCESSED bit 30, map count bits 0..15), which the
//    guest reads to decide whether to ask for a pin and which it may corrupt at will;
//  - the host's PinTable record (kMapped), which only this code changes and only while holding the
//    page lock, right after the DMA map/unmap it describes.
// The DMA mapping follows the record; the PINNED bit follows the mapping (it is set only after a
// map succeeded or the page is known to be mapped, and cleared only by the CAS that precedes an
// unmap). So a guest that sees PINNED under a non-zero map count can rely on the mapping.
//
// Memory orders: the flag RMWs on the guest word are seq_cst as in crosvm. The unpin CAS must be
// ordered against the guest's "increment count, then test PINNED" sequence (a Dekker-style pair:
// either the guest sees PINNED clear and asks for a pin, or our CAS sees the count and fails);
// that argument needs sequential consistency, and on x86 every locked RMW is a full barrier anyway.
#include "engine/core/pinner.h"

#include <atomic>
#include <cerrno>

#include "engine/base/log.h"
#include "engine/core/spec.h"

namespace coiommu::core {
namespace {

constexpr const char* kLog = "pin";

// Clears PINNED on a page the host did not (or could not) map. A forged PINNED would otherwise
// tell the guest that device DMA to an unmapped page is safe.
void clear_pinned(const GuestAtomicU32& entry) {
    // Safety: `entry` came from DttWalker::leaf (an aligned word inside a guest RAM leaf page).
    // seq_cst like every flag RMW here (see the file comment).
    entry.fetch_and(~kDttePinned, std::memory_order_seq_cst);
}

}  // namespace

Result<PinReport> pin_page(const PinContext& ctx, DttWalker& walker, Gfn gfn) {
    auto entry = walker.leaf(gfn);
    if (!entry) return coiommu::unexpected(with_context(entry.error(), "pin"));

    const auto gpa = to_gpa(gfn);
    if (!gpa || !ctx.table.in_range(gfn)) {
        return make_error(EFAULT, fmt::format("pin gfn {:#x}: outside guest RAM", raw(gfn)));
    }
    auto hva = ctx.mem.translate(*gpa, kPageSize);
    if (!hva) return coiommu::unexpected(with_context(hva.error(), fmt::format("pin gfn {:#x}", raw(gfn))));

    auto lock = ctx.table.lock(gfn);
    if (lock.mapped()) {
        // Safety: leaf word from DttWalker::leaf. A relaxed load is enough for the common skip
        // (as in crosvm): a stale "clear" only costs the fetch_or below, which is idempotent.
        if ((entry->load(std::memory_order_relaxed) & kDttePinned) != 0) {
            return PinReport{PinOutcome::AlreadyPinned};
        }
        // Our mapping is live but the guest cleared PINNED behind our back: never map twice.
        // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
        const uint32_t old = entry->fetch_or(kDttePinned, std::memory_order_seq_cst);
        return PinReport{(old & kDttePinned) != 0 ? PinOutcome::AlreadyPinned : PinOutcome::Repinned};
    }

    auto mapped = ctx.backend.map(identity_iova(*gpa), *hva, kPageSize, dma::Prot::ReadWrite);
    if (!mapped) {
        CLOG_ERROR_RL(kLog, "failed to map iova {:#x}: {}", raw(*gpa), mapped.error().message());
        clear_pinned(*entry);
        return PinReport{PinOutcome::MapFailed, mapped.error().code};
    }
    switch (*mapped) {
        case dma::MapOutcome::Mapped:
            // Record first: whatever the guest can see as PINNED is backed by the record.
            lock.set_mapped();
            // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
            entry->fetch_or(kDttePinned, std::memory_order_seq_cst);
            return PinReport{PinOutcome::Pinned};
        case dma::MapOutcome::AlreadyMapped:
            // Someone else holds a mapping over this IOVA in the container (EEXIST). As crosvm does,
            // treat the page as pinned, but it is not ours: never record it, never unmap it.
            CLOG_ERROR_RL(kLog, "iova {:#x} already mapped in the container by someone else", raw(*gpa));
            // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
            entry->fetch_or(kDttePinned, std::memory_order_seq_cst);
            return PinReport{PinOutcome::AlreadyPinned};
        case dma::MapOutcome::NoSpace:
            CLOG_ERROR_RL(kLog, "cannot map iova {:#x}: DMA entry limit reached", raw(*gpa));
            clear_pinned(*entry);
            return PinReport{PinOutcome::NoSpace, ENOSPC};
    }
    return PinReport{PinOutcome::MapFailed, EINVAL};  // unreachable: every MapOutcome handled
}

UnpinResult unpin_page(const PinContext& ctx, DttWalker& walker, Gfn gfn, Force force) {
    // find(), not leaf(): scans meet absent tables all the time and must not allocate for them.
    const LeafLookup found = walker.find(gfn);
    // An absent table page is the normal state of a page never mapped, or of one whose table the
    // guest's shrinker freed after we unpinned it: nothing to log. A table outside RAM or a gfn
    // beyond reach cannot hold a PINNED of ours either.
    if (found.status != LeafStatus::Found) return UnpinResult::NotPinned;
    const GuestAtomicU32* entry = &found.entry;

    // A gfn beyond guest RAM can have a leaf entry (the DTT indexes any gfn) but no mapping of
    // ours; it runs the same state machine with no lock and no record.
    PinTable::PageLock lock;
    if (ctx.table.in_range(gfn)) lock = ctx.table.lock(gfn);

    if (force == Force::Yes) {
        // The balloon has taken these pages from the guest's allocator, so no driver can be
        // mapping them: drop ACCESSED so the CAS below can succeed.
        // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
        entry->fetch_and(~kDtteAccessed, std::memory_order_seq_cst);
    }

    uint32_t expected = kDttePinned;
    // Safety: leaf word from DttWalker::leaf; seq_cst CAS (Dekker pairing, see the file comment).
    if (!entry->compare_exchange(expected, 0, std::memory_order_seq_cst)) {
        if (expected == 0) return UnpinResult::NotPinned;
        if (force == Force::No) {
            // Second chance: a page still ACCESSED at the next scan was used again.
            // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
            entry->fetch_and(~kDtteAccessed, std::memory_order_seq_cst);
        } else {
            CLOG_ERROR_RL(kLog, "force case cannot unpin gfn {:#x} entry {:#x}", raw(gfn), expected);
        }
        return UnpinResult::NotUnpinned;
    }

    if (!lock.owns_lock() || !lock.mapped()) {
        // PINNED was set without a mapping of ours: forged by the guest, or the EEXIST case where
        // another user of the container owns the mapping. Clearing the bit is all we may do.
        return UnpinResult::NotPinned;
    }

    const Iova iova = identity_iova(Gpa{raw(gfn) << kPageShift});  // in_range: no overflow
    auto st = ctx.backend.unmap_exact(iova, kPageSize);
    if (!st) {
        CLOG_ERROR_RL(kLog, "failed to unmap iova {:#x}: {}", raw(iova), st.error().message());
        // The mapping (or part of it) may still be live: keep the record and tell the guest.
        // Safety: leaf word from DttWalker::leaf; seq_cst flag RMW.
        entry->fetch_or(kDttePinned, std::memory_order_seq_cst);
        return UnpinResult::Failed;
    }
    lock.clear_mapped();
    return UnpinResult::Unpinned;
}

const char* to_string(PinOutcome o) {
    switch (o) {
        case PinOutcome::Pinned: return "pinned";
        case PinOutcome::AlreadyPinned: return "already_pinned";
        case PinOutcome::Repinned: return "repinned";
        case PinOutcome::MapFailed: return "map_failed";
        case PinOutcome::NoSpace: return "no_space";
    }
    return "unknown";
}

const char* to_string(UnpinResult r) {
    switch (r) {
        case UnpinResult::Unpinned: return "unpinned";
        case UnpinResult::NotPinned: return "not_pinned";
        case UnpinResult::NotUnpinned: return "not_unpinned";
        case UnpinResult::Failed: return "failed_unpin";
        case UnpinResult::Parked: return "parked";
    }
    return "unknown";
}

}  // namespace coiommu::core
