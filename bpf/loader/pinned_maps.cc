#include "bpf/loader/pinned_maps.h"

#include <bpf/bpf.h>

#include <cerrno>

#include "bpf/loader/privileges.h"
#include "bpf/loader/vfio_dma_maps.h"

namespace coiommu::bpf {

namespace {

// ENOENT is "not pinned" (an empty fd), anything else an error.
Result<UniqueFd> open_pin(const std::string& dir, const char* name) {
    const std::string path = dir + "/" + name;
    const int fd = bpf_obj_get(path.c_str());
    if (fd < 0) {
        const int err = errno;
        if (err == ENOENT) return UniqueFd();
        return coiommu::unexpected(bpf_error(err, "open pinned map " + path));
    }
    return UniqueFd(fd);
}

}  // namespace

Result<PinnedMaps> PinnedMaps::open(std::string_view root) {
    PinnedMaps p;
    p.dir_ = versioned_pin_dir(root);
    struct Slot {
        UniqueFd* fd;
        const char* name;
    };
    const Slot slots[] = {
        {&p.vfio_dma_.hist, "vfio_dma_hist"},      {&p.vfio_dma_.calls, "vfio_dma_calls"},
        {&p.vfio_dma_.drops, "vfio_dma_drops"},    {&p.vfio_dma_.flight, "vfio_dma_flight"},
        {&p.engine_.req_hist, "eng_req_hist"},     {&p.engine_.req_pages, "eng_req_pages"},
        {&p.engine_.req_calls, "eng_req_calls"},   {&p.engine_.dma_hist, "eng_dma_hist"},
        {&p.engine_.dma_calls, "eng_dma_calls"},   {&p.engine_.scan_hist, "eng_scan_hist"},
        {&p.engine_.scan_stats, "eng_scan_stats"}, {&p.engine_.drops, "eng_drops"},
    };
    for (const Slot& s : slots) {
        auto fd = open_pin(p.dir_, s.name);
        if (!fd) return coiommu::unexpected(fd.error());
        *s.fd = std::move(*fd);
    }
    const bool vfio_complete = p.vfio_dma_.hist && p.vfio_dma_.calls && p.vfio_dma_.drops;
    const bool engine_complete = p.engine_.req_hist && p.engine_.req_pages && p.engine_.req_calls &&
                                 p.engine_.dma_hist && p.engine_.dma_calls && p.engine_.scan_hist &&
                                 p.engine_.scan_stats && p.engine_.drops;
    if (!vfio_complete) p.vfio_dma_ = {};
    if (!engine_complete) p.engine_ = {};
    if (!vfio_complete && !engine_complete) return make_error(ENOENT, "no coiommu maps pinned in " + p.dir_);
    return p;
}

Result<VfioDmaSnapshot> PinnedMaps::vfio_dma() const {
    if (!has_vfio_dma()) return make_error(ENOENT, "vfio_dma maps not pinned in " + dir_);
    return detail::read_vfio_dma(
        {vfio_dma_.hist.get(), vfio_dma_.calls.get(), vfio_dma_.drops.get(), vfio_dma_.flight.get()});
}

Result<EngineSnapshot> PinnedMaps::engine() const {
    if (!has_engine()) return make_error(ENOENT, "engine maps not pinned in " + dir_);
    const auto& e = engine_;
    return detail::read_engine({e.req_hist.get(), e.req_pages.get(), e.req_calls.get(), e.dma_hist.get(),
                                e.dma_calls.get(), e.scan_hist.get(), e.scan_stats.get(), e.drops.get()});
}

}  // namespace coiommu::bpf
