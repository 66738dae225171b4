// PinnedMaps: reads maps that a tracer (this process or another one, e.g. `coiommu-trace --pin`)
// pinned under <root>/v2/, without loading any program. Same snapshots as the live tracers.
#pragma once

#include <optional>
#include <string>

#include "bpf/loader/pin.h"
#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu::bpf {

class PinnedMaps {
public:
    // Opens whatever is pinned under <root>/v2/: the vfio_dma maps and/or the engine maps.
    // ENOENT when neither set is there.
    [[nodiscard]] static Result<PinnedMaps> open(std::string_view root = kDefaultPinRoot);

    [[nodiscard]] bool has_vfio_dma() const { return vfio_dma_.hist.valid(); }
    [[nodiscard]] bool has_engine() const { return engine_.req_hist.valid(); }

    // ENOENT when the corresponding set was not pinned.
    [[nodiscard]] Result<VfioDmaSnapshot> vfio_dma() const;
    [[nodiscard]] Result<EngineSnapshot> engine() const;

private:
    struct VfioDmaFds {
        UniqueFd hist, calls, drops, flight;
    };
    struct EngineFds {
        UniqueFd req_hist, req_pages, req_calls, dma_hist, dma_calls, scan_hist, scan_stats, drops;
    };
    std::string dir_;
    VfioDmaFds vfio_dma_;
    EngineFds engine_;
};

}  // namespace coiommu::bpf
