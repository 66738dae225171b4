#include "bpf/loader/vfio_dma_maps.h"

#include <cstring>

#include "bpf/abi/engine.h"
#include "bpf/abi/vfio_dma.h"
#include "bpf/loader/bpf_util.h"

namespace coiommu::bpf::detail {

namespace {

Log2Hist to_hist(const coiommu_hist& h) {
    Log2Hist out;
    static_assert(sizeof(out.slots) == sizeof(h.slots));
    std::memcpy(out.slots.data(), h.slots, sizeof(h.slots));
    out.sum = h.sum;
    out.count = h.count;
    return out;
}

template <size_t N>
Status read_hists(int fd, std::array<Log2Hist, N>& out, const char* what) {
    auto v = read_percpu_array<coiommu_hist>(fd, N);
    if (!v) return coiommu::unexpected(with_context(v.error(), what));
    for (size_t i = 0; i < N; ++i) out[i] = to_hist((*v)[i]);
    return ok();
}

// Slots whose call is between its enter and exit hook (fentry/fexit of the VFIO or iommufd ioctl
// handler, or sys_enter/sys_exit_ioctl): start_ns != 0. Walks at most max_entries keys; a key
// evicted meanwhile (ENOENT on lookup) is skipped.
Result<uint64_t> count_inflight(int fd) {
    uint64_t key = 0, next = 0, n = 0;
    const uint64_t* prev = nullptr;
    for (uint32_t i = 0; i < COIOMMU_VFIO_INFLIGHT_MAX; ++i) {
        if (bpf_map_get_next_key(fd, prev, &next) != 0) {
            const int err = errno;
            if (err == ENOENT) break;
            return coiommu::unexpected(bpf_error(err, "walk keys"));
        }
        coiommu_vfio_inflight value{};
        if (bpf_map_lookup_elem(fd, &next, &value) == 0 && value.start_ns != 0) ++n;
        key = next;
        prev = &key;
    }
    return n;
}

}  // namespace

Result<VfioDmaSnapshot> read_vfio_dma(const VfioDmaMapFds& fds) {
    VfioDmaSnapshot snap;
    COIOMMU_TRY(read_hists(fds.hist, snap.latency_ns, "vfio_dma_hist"));

    auto calls = read_percpu_array<coiommu_vfio_calls>(fds.calls, COIOMMU_OP_COUNT);
    if (!calls) return coiommu::unexpected(with_context(calls.error(), "vfio_dma_calls"));
    for (size_t op = 0; op < kVfioOpCount; ++op) {
        const coiommu_vfio_calls& c = (*calls)[op];
        auto& out = snap.calls[op];
        out.by_result = {c.ok, c.eexist, c.enospc, c.enomem, c.einval, c.other};
        out.bytes = c.bytes;
    }

    auto drops = read_percpu_array<coiommu_vfio_drops>(fds.drops, 1);
    if (!drops) return coiommu::unexpected(with_context(drops.error(), "vfio_dma_drops"));
    snap.drops.inflight_full = (*drops)[0].inflight_full;
    snap.drops.ringbuf_full = (*drops)[0].ringbuf_full;
    snap.drops.read_fault = (*drops)[0].read_fault;

    if (fds.flight >= 0) {
        auto n = count_inflight(fds.flight);
        if (!n) return coiommu::unexpected(with_context(n.error(), "vfio_dma_flight"));
        snap.inflight_entries = *n;
        snap.inflight_max_entries = COIOMMU_VFIO_INFLIGHT_MAX;
    }
    return snap;
}

Result<EngineSnapshot> read_engine(const EngineMapFds& fds) {
    EngineSnapshot snap;
    if (auto st = read_hists(fds.req_hist, snap.request_latency_ns, "eng_req_hist"); !st) {
        return coiommu::unexpected(st.error());
    }
    COIOMMU_TRY(read_hists(fds.req_pages, snap.request_pages, "eng_req_pages"));
    COIOMMU_TRY(read_hists(fds.dma_hist, snap.dma_latency_ns, "eng_dma_hist"));
    if (auto st = read_hists(fds.scan_hist, snap.scan_duration_ns, "eng_scan_hist"); !st) {
        return coiommu::unexpected(st.error());
    }

    auto req = read_percpu_array<coiommu_eng_req_calls>(fds.req_calls, COIOMMU_ENG_REQ_KINDS);
    if (!req) return coiommu::unexpected(with_context(req.error(), "eng_req_calls"));
    for (size_t k = 0; k < kEngineRequestKinds; ++k) {
        snap.requests[k] = {(*req)[k].ok, (*req)[k].failed};
    }
    auto dma = read_percpu_array<coiommu_eng_dma_calls>(fds.dma_calls, COIOMMU_ENG_DMA_OPS);
    if (!dma) return coiommu::unexpected(with_context(dma.error(), "eng_dma_calls"));
    for (size_t k = 0; k < kEngineDmaOps; ++k) snap.dma_calls[k] = {(*dma)[k].ok, (*dma)[k].failed, (*dma)[k].bytes};
    auto scans = read_percpu_array<coiommu_eng_scan_stats>(fds.scan_stats, COIOMMU_ENG_SCAN_KINDS);
    if (!scans) return coiommu::unexpected(with_context(scans.error(), "eng_scan_stats"));
    for (size_t k = 0; k < kEngineScanKinds; ++k) {
        snap.scans[k] = {(*scans)[k].scans, (*scans)[k].examined, (*scans)[k].unpinned};
    }
    auto drops = read_percpu_array<coiommu_eng_drops>(fds.drops, 1);
    if (!drops) return coiommu::unexpected(with_context(drops.error(), "eng_drops"));
    snap.bad_kind = (*drops)[0].bad_kind;
    snap.bad_batch = (*drops)[0].bad_batch;
    return snap;
}

}  // namespace coiommu::bpf::detail
