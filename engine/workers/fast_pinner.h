// The fast pin path: one request of one vCPU, start to finish, with no lock other than the
// PinTable's per-page locks and no allocation.
//
//   1. decode the slot value (request.h: BDF, bounds, nr_pages <= max_batch_pages);
//   2. copy a batch's gfn list once into the arena; for each gfn in order: walk its DTT leaf (the
//      arena's cursor), check it lies in guest RAM, and skip it if we already map it and the guest
//      sees PINNED. The first bad gfn stops the walk (crosvm's first-error rule): the pages before
//      it are still pinned, the ones after it are not;
//   3. sort the remaining pages (a no-op for the usual ascending list) and cut them into runs of
//      consecutive gfns with contiguous host addresses, at most kMaxExtentPages long (coalesce=off:
//      runs of one page, which is exactly crosvm's page-by-page mapping);
//   4. per run: lock its pages in ascending gfn order (every locker does, so no deadlock), re-check
//      under the locks, re-set PINNED on pages we already map, and map each sub-run of unmapped
//      pages with ONE DMA call (IOVA = GPA, read+write). Mapped: record the extent, set PINNED on
//      every page (seq_cst fetch_or), hand the extent to the unpinner. AlreadyMapped (EEXIST, a
//      mapping that is not ours overlaps): retry page by page with crosvm's semantics.
//      NoSpace (ENOSPC, dma_entry_limit reached): PINNED stays clear and no further DMA call is made
//      for this request (every later one would fail the same way); later runs only re-set PINNED
//      on pages that are already mapped. Other map errors: PINNED clear, counted, go on (as crosvm);
//   5. complete: slot.store(0, release) after every PINNED RMW, also when the request failed.
//
// Stats go to the arena's shard (per request and per DMA call, never per page), USDT probes fire
// at request start/done and per DMA call. The clock is read once per DMA call (a call is timed
// from the previous reading, the first from t0) and once more only for a request without one.
#pragma once

#include <cstdint>

#include "engine/telemetry/request_trace.h"
#include "engine/workers/arena.h"

namespace coiommu::workers {

struct ServeReport {
    int result = 0;      // 0: every requested page is PINNED; else -errno of the first failure
    uint64_t pages = 0;  // pages named by the request (0 when it could not be decoded)
    uint64_t newly_pinned = 0;
    uint64_t dma_calls = 0;
    uint64_t end_ns = 0;  // monotonic_ns() at completion (reuse it instead of reading the clock)
};

// Serves one request and completes the slot. Never fails: bad guest input and DMA failures are
// counted in arena.stats, logged (rate-limited) and reported to the guest by a clear PINNED bit.
// Preconditions: the caller owns `arena` for this request; `slot_value` is the value read from
// the slot by the intake; t0_ns is when the intake saw the request (monotonic_ns); `trace` is
// the calling thread's batch (the request is appended to it, its DMA calls to trace.dma()).
ServeReport serve_request(const PinEnv& env, VcpuArena& arena, uint64_t slot_value, uint64_t t0_ns,
                          telemetry::RequestTraceBatch& trace);

}  // namespace coiommu::workers
