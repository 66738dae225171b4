// ViommuDevice: the virtio-iommu request layer (a port of crosvm's virtio-iommu device; statuses
// in engine/README.md, "virtio-iommu request statuses").
//
// It decodes ATTACH / DETACH / MAP / UNMAP / PROBE requests from a descriptor's bytes, keeps
// the endpoint and domain tables, drives the endpoints' MemoryMappers and writes the reply.
// The virtqueue itself (descriptor walking, used ring, interrupts) belongs to the caller.
//
// Tables: endpoints (endpoint id -> mapper, attached domain) are registered by the VMM;
// domains (domain id -> mapper, endpoint count) come and go with ATTACH / DETACH. A domain
// is created by its first ATTACH and ceases to exist when its last endpoint detaches.
//
// Thread-safety: every public method may be called from any thread, handle() included.
//  - MAP / UNMAP / PROBE of different requests run in parallel. A MAP or UNMAP holds a read
//    lock on its domain's table entry while it calls the mapper, so a DETACH that tears the
//    domain down waits for in-flight MAP/UNMAPs and none of them can land in a dead domain.
//  - ATTACH / DETACH (which touch both tables and scan all endpoints) and add_endpoint are
//    serialised by one topology mutex, never held while waiting for a fault to resolve.
//  - A request whose UNMAP / DETACH / re-ATTACH faulted exported memory blocks its calling
//    thread (only) until the export client releases everything, bounded by
//    Options::fault_wait_timeout.
// Guest buffers are hostile: each request is copied out once, bounds-checked, and validated.
// handle() does not log its failures: the caller owns the queue context and logs them
// (rate-limited) before completing the descriptor with used length 0.
//
// Where this differs from crosvm (each marked in device.cc):
//  - DETACH with non-zero reserved bytes -> INVAL (the virtio spec's MUST; crosvm ignores them);
//  - ATTACH of an endpoint whose mapper is not the domain's mapper -> UNSUPP (crosvm silently
//    replaces the domain's mapper, so MAPs stop reaching the endpoints already attached);
//  - UNMAP with virt_end < virt_start -> INVAL and UNMAP of [0, 2^64 - 1] -> DEVERR (crosvm's
//    unchecked end - start + 1 wraps);
//  - a fault wait is bounded: DEVERR after Options::fault_wait_timeout (crosvm waits forever);
//  - requests may be handled on several threads at once (crosvm: one queue, serially).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include <tbb/concurrent_hash_map.h>

#include "engine/base/addr.h"
#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/viommu/memory_mapper.h"
#include "engine/viommu/protocol.h"

namespace coiommu::viommu {

// Per-device counters (relaxed atomics; read at any time).
struct DeviceCounters {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> failed{0};       // completed with used length 0 (handle() error)
    std::atomic<uint64_t> status[9]{};     // replies by status code (wire::kStatus*)
    std::atomic<uint64_t> fault_waits{0};  // requests that waited for a fault to resolve
    std::atomic<uint64_t> fault_wait_timeouts{0};
};

class ViommuDevice {
public:
    struct Options {
        // How long a request that faulted exported memory waits for the client to release it
        // before completing with VIRTIO_IOMMU_S_DEVERR.
        std::chrono::milliseconds fault_wait_timeout{5000};
        // input_range.end of the config space (inclusive), e.g. the container's last IOVA.
        uint64_t max_iova = ~uint64_t{0};
    };

    // Features the device offers: INPUT_RANGE, MAP_UNMAP, MMIO, PROBE (x86-64). Never BYPASS
    // or DOMAIN_RANGE.
    [[nodiscard]] static uint64_t features();

    ViommuDevice() : ViommuDevice(Options{}) {}
    explicit ViommuDevice(Options options);
    ViommuDevice(const ViommuDevice&) = delete;
    ViommuDevice& operator=(const ViommuDevice&) = delete;

    // Registers a passthrough endpoint and its mapper (several endpoints may share one mapper,
    // e.g. the devices of one VFIO group). Narrows the page-size mask by the mapper's mask.
    // Errors: EINVAL for a null mapper or when no page size would remain common; EEXIST for a
    // known endpoint; the mapper's get_mask() error. Register endpoints before the driver
    // reads the config space.
    [[nodiscard]] Status add_endpoint(uint32_t endpoint, std::shared_ptr<MemoryMapper> mapper);

    // Host page mask (4 KiB and up) AND every endpoint mapper's get_mask().
    // Errors: a mapper's get_mask() error; EINVAL when the result is 0.
    [[nodiscard]] Result<uint64_t> page_size_mask() const;
    // Config space: page_size_mask, input_range [0, max_iova], probe_size.
    [[nodiscard]] Result<wire::Config> config() const;

    // Declares [gpa, gpa + size) as a dma-buf mapped at hva in this process: a MAP whose
    // physical range lies wholly inside it goes to the mapper's vfio_dma_map() instead of
    // add_map(). Errors: EINVAL size 0, EOVERFLOW, EEXIST overlapping an earlier dma-buf.
    [[nodiscard]] Status register_dmabuf(Gpa gpa, uint64_t size, Hva hva);
    // Errors: ENOENT when no dma-buf starts at gpa.
    [[nodiscard]] Status unregister_dmabuf(Gpa gpa);

    // Handles one request. `request` is the device-readable part of the descriptor chain
    // (head + body), `writable` the device-writable part (PROBE properties, then the tail).
    // Returns the used length (bytes written: the tail, plus the properties for PROBE).
    // Errors (the caller completes the descriptor with used length 0 and nothing is written,
    // as crosvm does): EMSGSIZE when writable cannot hold the tail or request is shorter than
    // head + body; EOPNOTSUPP for an unknown request type; a mapper failure; ENOMEM when an
    // allocation failed.
    [[nodiscard]] Result<size_t> handle(std::span<const std::byte> request, std::span<std::byte> writable);

    // Inspection.
    [[nodiscard]] std::optional<uint32_t> endpoint_domain(uint32_t endpoint) const;
    [[nodiscard]] std::optional<uint32_t> domain_endpoint_count(uint32_t domain) const;
    [[nodiscard]] size_t domain_count() const { return domains_.size(); }
    [[nodiscard]] const DeviceCounters& counters() const { return counters_; }

private:
    struct Endpoint {
        std::shared_ptr<MemoryMapper> mapper;
        std::optional<uint32_t> domain;
    };
    struct Domain {
        std::shared_ptr<MemoryMapper> mapper;
        uint32_t endpoints = 0;
    };
    struct Dmabuf {
        uint64_t size = 0;
        Hva hva{};
    };
    // What a request handler decided, before the tail is written.
    struct Reply {
        uint8_t status = wire::kStatusOk;
        size_t properties_len = 0;             // bytes written before the tail (PROBE)
        EventFd fault_resolved;                // valid() when the request faulted exported memory
        std::string what;                      // set with fault_resolved: names the request in logs
        std::optional<uint32_t> unmap_domain;  // UNMAP: its endpoints are named on a timeout
    };
    using EndpointTable = tbb::concurrent_hash_map<uint32_t, Endpoint>;
    using DomainTable = tbb::concurrent_hash_map<uint32_t, Domain>;

    [[nodiscard]] Status add_endpoint_unguarded(uint32_t endpoint, std::shared_ptr<MemoryMapper> mapper);
    [[nodiscard]] Result<size_t> handle_request(std::span<const std::byte> request, std::span<std::byte> writable);
    [[nodiscard]] Reply attach(const wire::ReqAttach& req);
    [[nodiscard]] Reply detach(const wire::ReqDetach& req);
    [[nodiscard]] Result<Reply> map(const wire::ReqMap& req);
    [[nodiscard]] Result<Reply> unmap(const wire::ReqUnmap& req);
    [[nodiscard]] Reply probe(const wire::ReqProbe& req, std::span<std::byte> writable);

    // Detaches an attached endpoint (caller holds topology_mu_ and the endpoint's accessor).
    // false when it cannot be detached (mapper without detach support, or other endpoints
    // share its domain). May return a fault-resolved event from reset_domain().
    [[nodiscard]] bool detach_locked(Endpoint& ep, EventFd* fault_resolved);
    [[nodiscard]] std::optional<Hva> dmabuf_hva(uint64_t phys_start, uint64_t size) const;
    void wait_for_fault_resolution(Reply& reply);
    // "endpoints 3, 5" of a domain, for logs. Takes topology_mu_: call with no accessor held.
    [[nodiscard]] std::string describe_endpoints_of(uint32_t domain);

    const Options options_;
    std::atomic<uint64_t> page_size_mask_;  // cached intersection, for MAP's alignment check

    mutable std::mutex topology_mu_;
    EndpointTable endpoints_;
    DomainTable domains_;
    // Every registered endpoint id, for scans (guarded by topology_mu_). Scans look entries up
    // by id instead of iterating endpoints_: TBB's lookups may rehash buckets concurrently,
    // and traversal is only safe without concurrent operations.
    std::vector<uint32_t> endpoint_ids_;

    mutable std::shared_mutex dmabuf_mu_;
    std::map<uint64_t, Dmabuf> dmabufs_;   // key = gpa
    std::atomic<size_t> dmabuf_count_{0};  // lets MAP skip dmabuf_mu_ when there are none

    DeviceCounters counters_;
};

}  // namespace coiommu::viommu
