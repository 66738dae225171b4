// The DMA backend interface: one VFIO-type1-shaped container that maps IOVA ranges to host
// virtual memory for device DMA. Three implementations:
//
//   vfio  (vfio_backend.h)  a real type1v2 container over <linux/vfio.h>
//   fake  (fake_backend.h)  the same semantics in memory, with a latency model and fault injection
//   null  (null_backend.h)  success at once, counters only (measures the engine alone)
//
// Semantics every implementation follows (the kernel's: engine/README.md, "VFIO type1 semantics"):
//  - map: iova, hva and size must be 4 KiB aligned and non-zero (EINVAL), no wrap (EINVAL);
//    any overlap with an existing mapping is the outcome AlreadyMapped (EEXIST), the container's
//    entry limit is the outcome NoSpace (ENOSPC); other errnos are failures.
//  - unmap: aligned, non-zero (EINVAL); must not bisect a mapping (EINVAL); removes every whole
//    mapping inside the range and returns the bytes actually removed (0 when nothing was mapped
//    is success). unmap_exact() turns "fewer bytes than asked" into a failure.
//
// Thread-safety: every method may be called from any thread concurrently; the container
// serialises internally (the kernel holds one mutex per container, so does the fake).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/result.h"

namespace coiommu::dma {

enum class Prot : uint32_t { Read = 1, Write = 2, ReadWrite = 3 };
[[nodiscard]] constexpr bool has_write(Prot p) { return (static_cast<uint32_t>(p) & 2u) != 0; }
[[nodiscard]] constexpr bool has_read(Prot p) { return (static_cast<uint32_t>(p) & 1u) != 0; }

enum class MapOutcome {
    Mapped,         // the range is now mapped
    AlreadyMapped,  // EEXIST: it overlaps an existing mapping; nothing changed
    NoSpace,        // ENOSPC: the container's dma_entry_limit is reached; nothing changed
};

// The errno of a map attempt as an outcome: 0 -> Mapped, EEXIST -> AlreadyMapped,
// ENOSPC -> NoSpace; nullopt for every other errno (a failure).
[[nodiscard]] constexpr std::optional<MapOutcome> map_outcome_for_errno(int err) {
    switch (err) {
        case 0: return MapOutcome::Mapped;
        case EEXIST: return MapOutcome::AlreadyMapped;
        case ENOSPC: return MapOutcome::NoSpace;
        default: return std::nullopt;
    }
}

struct IovaRange {
    uint64_t start = 0;  // inclusive
    uint64_t end = 0;    // inclusive (as the kernel reports it)
};

// Capacity and geometry of the container.
struct ContainerInfo {
    uint64_t iova_pgsizes = 0;  // bitmap of supported IOMMU page sizes
    std::vector<IovaRange> iova_ranges;
    uint64_t entry_limit = 0;        // dma_entry_limit (total mappings the container allows)
    uint64_t entries_available = 0;  // DMA_AVAIL: how many more mappings fit right now
};

// Counters every backend keeps (relaxed atomics; read at any time, e.g. by the exporter).
struct BackendCounters {
    std::atomic<uint64_t> map_calls{0};
    std::atomic<uint64_t> map_failures{0};  // errors and NoSpace; AlreadyMapped is not a failure
    std::atomic<uint64_t> map_eexist{0};
    std::atomic<uint64_t> map_enospc{0};
    std::atomic<uint64_t> unmap_calls{0};
    std::atomic<uint64_t> unmap_failures{0};
    std::atomic<uint64_t> bytes_mapped{0};
    std::atomic<uint64_t> bytes_unmapped{0};
};

class DmaBackend {
public:
    virtual ~DmaBackend() = default;

    // Maps [iova, iova+size) to [hva, hva+size). Outcomes as above; Error carries the errno.
    [[nodiscard]] virtual Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) = 0;
    // Unmaps every whole mapping in [iova, iova+size); returns the bytes removed.
    [[nodiscard]] virtual Result<uint64_t> unmap(Iova iova, uint64_t size) = 0;
    // Geometry and capacity. For vfio this is an ioctl: not for hot paths.
    [[nodiscard]] virtual Result<ContainerInfo> info() const = 0;
    // Mappings currently live in the container (entries used).
    [[nodiscard]] virtual uint64_t live_entries() const = 0;
    // Total mappings the container allows (dma_entry_limit).
    [[nodiscard]] virtual uint64_t entry_limit() const = 0;
    [[nodiscard]] virtual std::string_view name() const = 0;

    // unmap() that fails (EIO, "short unmap") unless exactly `size` bytes were removed.
    [[nodiscard]] Status unmap_exact(Iova iova, uint64_t size);

    [[nodiscard]] const BackendCounters& counters() const { return counters_; }

protected:
    // Counter bookkeeping shared by the implementations (relaxed atomics; no lock, no malloc on
    // success). Each records one finished call and builds the Result.
    //  finish_map: err 0 / EEXIST / ENOSPC become outcomes, any other errno an Error whose context
    //    names the backend, the range and `why` (may be empty).
    //  finish_unmap: err 0 returns `bytes`; otherwise an Error.
    [[nodiscard]] Result<MapOutcome> finish_map(int err, Iova iova, uint64_t size, std::string_view why = {});
    [[nodiscard]] Result<uint64_t> finish_unmap(int err, Iova iova, uint64_t size, uint64_t bytes,
                                                std::string_view why = {});

    BackendCounters counters_;
};

}  // namespace coiommu::dma
