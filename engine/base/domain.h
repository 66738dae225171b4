// The domain's vocabulary: the values that cross layers (engine, telemetry, the daemon's protocol,
// the VMM-side client). Low in the stack so that every layer names them the same way and the
// client needs no engine header for them; telemetry indexes its counters by these types.
//
// Thread-safety: plain values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/base/addr.h"

namespace coiommu {

// A balloon range: `count` gfns from `start` (crosvm's UnpinRequest (gfn, count)).
struct GfnRange {
    Gfn start{};
    uint64_t count = 0;
};

// The outcome of trying to unpin one page or one coalesced extent (crosvm's UnpinResult, without
// UnpinlistEmpty, which is a scan outcome rather than a page outcome).
enum class UnpinResult : uint8_t {
    Unpinned = 0,     // unmapped and PINNED cleared
    NotPinned = 1,    // nothing to do: no DTT entry, entry 0, or a PINNED we do not back with a mapping
    NotUnpinned = 2,  // still in use (DMA map count or ACCESSED set): kept
    Failed = 3,       // the unmap failed or was short; PINNED restored, still recorded as mapped
    Parked = 4,       // skipped because the unpinner is parked
};
inline constexpr std::size_t kUnpinResults = 5;

// The answer to a balloon unpin request.
enum class BalloonResult : uint8_t { Success = 0, Failed = 1 };
inline constexpr std::size_t kBalloonResults = 2;

// A pin request: one page (notify slot with a gfn) or a batch (a page list in guest memory).
enum class RequestKind : uint32_t { Single = 0, Batch = 1 };

}  // namespace coiommu
