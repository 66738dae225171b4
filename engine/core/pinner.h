// Pin and unpin of one guest page: crosvm's pin_page / unpin_page (engine/README.md, "Pin path" and
// "Unpin primitive"), with the host's own record (PinTable) as the authority on what this host has
// mapped.
//
// Both primitives hold the page's PinTable lock for the whole operation, so a pin and an unpin of
// the same page never interleave (no map racing an in-flight unmap). They are safe to call from
// any number of threads, each with its own DttWalker.
#pragma once

#include <cstdint>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/core/dtt.h"
#include "engine/base/domain.h"
#include "engine/core/pin_table.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::core {

enum class Force : bool { No = false, Yes = true };

// unpin_page answers Unpinned, NotPinned, NotUnpinned (busy: map count > 0 and/or ACCESSED set;
// non-force cleared ACCESSED) or Failed; never Parked, which only the unpinners' scans report.
using coiommu::UnpinResult;

enum class PinOutcome {
    Pinned,         // mapped now, recorded, PINNED set
    AlreadyPinned,  // already mapped (by us, PINNED set; or by someone else: EEXIST); PINNED set
    Repinned,       // we had it mapped but the guest had cleared PINNED; PINNED set, no map call
    MapFailed,      // the map failed with `error`; PINNED clear
    NoSpace,        // the container is full (ENOSPC); PINNED clear
};

struct PinReport {
    PinOutcome outcome = PinOutcome::Pinned;
    int error = 0;  // errno for MapFailed, 0 otherwise
};

// What a pin/unpin works on. All three must outlive the call; `table` must cover
// mem.gfn_span() gfns.
struct PinContext {
    const GuestMemory& mem;
    dma::DmaBackend& backend;
    PinTable& table;
};

// Makes `gfn` DMA-able: maps IOVA = GPA, 4 KiB, read+write, records it and sets PINNED.
//
// The host record decides whether to map, not the guest's PINNED bit: a page we mapped is never
// mapped again (guest-cleared PINNED is set again: Repinned), and a page we did not map is mapped
// even if the guest forged PINNED (crosvm would skip it and leave device DMA to an unpinned
// page). Map failures are outcomes, not Errors, as in crosvm; they leave PINNED clear.
//
// Errors (bad guest input only): the DttWalker's errors (ERANGE, ENOENT, EFAULT); EFAULT when the
// 4 KiB page at gfn is not inside guest RAM.
[[nodiscard]] Result<PinReport> pin_page(const PinContext& ctx, DttWalker& walker, Gfn gfn);

// Tries to release `gfn`: CAS its leaf entry from exactly PINNED (map count 0, not ACCESSED) to 0
// and unmap our 4 KiB mapping. Force::Yes (balloon) clears ACCESSED first; a busy page is then an
// error log. Force::No (aging) clears ACCESSED on a busy page (second chance).
// A page the host record does not show as ours is never unmapped (NotPinned after clearing the
// PINNED bit). A failed or short unmap restores PINNED and keeps the record (Failed).
[[nodiscard]] UnpinResult unpin_page(const PinContext& ctx, DttWalker& walker, Gfn gfn, Force force);

[[nodiscard]] const char* to_string(PinOutcome o);
[[nodiscard]] const char* to_string(UnpinResult r);

}  // namespace coiommu::core
