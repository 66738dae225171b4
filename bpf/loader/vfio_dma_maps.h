// Reading the vfio_dma maps from fds: shared by the live tracer and the pinned-map reader.
#pragma once

#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf::detail {

struct VfioDmaMapFds {
    int hist = -1;
    int calls = -1;
    int drops = -1;
    int flight = -1;
};

[[nodiscard]] Result<VfioDmaSnapshot> read_vfio_dma(const VfioDmaMapFds& fds);

struct EngineMapFds {
    int req_hist = -1;
    int req_pages = -1;
    int req_calls = -1;
    int dma_hist = -1;
    int dma_calls = -1;
    int scan_hist = -1;
    int scan_stats = -1;
    int drops = -1;
};

[[nodiscard]] Result<EngineSnapshot> read_engine(const EngineMapFds& fds);

}  // namespace coiommu::bpf::detail
