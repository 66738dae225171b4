#include "engine/viommu/viommu_device.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <exception>
#include <new>
#include <typeinfo>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/base/log.h"

namespace coiommu::viommu {
namespace {

constexpr std::string_view kLog = "viommu";

uint64_t host_page_mask() {
    const long page = ::sysconf(_SC_PAGESIZE);
    const uint64_t size = page > 0 ? static_cast<uint64_t>(page) : kPageSize;
    return ~(size - 1);
}

// Copies a wire struct out of the guest's buffer. The guest may rewrite the buffer while we
// read it, so the request is snapshotted once and only the copy is validated and used.
template <class T>
std::optional<T> read_wire(std::span<const std::byte> bytes) {
    if (bytes.size() < sizeof(T)) return std::nullopt;
    T out;
    // Safety: plain byte copy of a bounds-checked guest buffer into a local; no ordering with
    // other guest memory is needed (the bytes are a snapshot validated after the copy).
    std::memcpy(&out, bytes.data(), sizeof(T));
    return out;
}

template <class T>
void write_wire(std::span<std::byte> bytes, const T& value) {
    // Safety: plain byte copy into the bounds-checked device-writable buffer; the guest reads
    // it only after the caller publishes the used element (the virtqueue's release ordering).
    std::memcpy(bytes.data(), &value, sizeof(T));
}

template <size_t N>
bool all_zero(const std::array<uint8_t, N>& bytes) {
    return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// crosvm compares (type, id): two mappers are "the same" when both match.
bool same_mapper(const MemoryMapper& a, const MemoryMapper& b) { return typeid(a) == typeid(b) && a.id() == b.id(); }

}  // namespace

uint64_t ViommuDevice::features() {
    uint64_t f = (uint64_t{1} << wire::kFeatureMapUnmap) | (uint64_t{1} << wire::kFeatureInputRange) |
                 (uint64_t{1} << wire::kFeatureMmio);
#if defined(__x86_64__) || defined(__i386__)
    f |= uint64_t{1} << wire::kFeatureProbe;
#endif
    return f;
}

ViommuDevice::ViommuDevice(Options options) : options_(options), page_size_mask_(host_page_mask()) {}

Status ViommuDevice::add_endpoint(uint32_t endpoint, std::shared_ptr<MemoryMapper> mapper) {
    try {
        return add_endpoint_unguarded(endpoint, std::move(mapper));
    } catch (const std::bad_alloc&) {
        return make_error(ENOMEM, fmt::format("endpoint {}: out of memory", endpoint));
    }
}

Status ViommuDevice::add_endpoint_unguarded(uint32_t endpoint, std::shared_ptr<MemoryMapper> mapper) {
    if (!mapper) return make_error(EINVAL, fmt::format("endpoint {}: null mapper", endpoint));
    auto mask = mapper->get_mask();
    if (!mask) return coiommu::unexpected(with_context(mask.error(), fmt::format("endpoint {}", endpoint)));

    std::lock_guard topo(topology_mu_);
    const uint64_t narrowed = page_size_mask_.load(std::memory_order_relaxed) & *mask;
    if (narrowed == 0) {
        return make_error(EINVAL,
                          fmt::format("endpoint {}: mapper mask {:#x} leaves no common page size", endpoint, *mask));
    }
    EndpointTable::accessor ep;
    if (!endpoints_.insert(ep, endpoint)) {
        return make_error(EEXIST, fmt::format("endpoint {} already registered", endpoint));
    }
    ep->second = Endpoint{std::move(mapper), std::nullopt};
    endpoint_ids_.push_back(endpoint);
    page_size_mask_.store(narrowed, std::memory_order_relaxed);
    return ok();
}

Result<uint64_t> ViommuDevice::page_size_mask() const {
    uint64_t mask = host_page_mask();
    {
        std::lock_guard topo(topology_mu_);
        for (uint32_t id : endpoint_ids_) {
            EndpointTable::const_accessor ep;
            if (!endpoints_.find(ep, id)) continue;  // never: endpoints are not removed
            auto m = ep->second.mapper->get_mask();
            if (!m) return coiommu::unexpected(with_context(m.error(), fmt::format("endpoint {}", id)));
            mask &= *m;
        }
    }
    if (mask == 0) return make_error(EINVAL, "page_size_mask: no page size common to all endpoints");
    return mask;
}

Result<wire::Config> ViommuDevice::config() const {
    auto mask = page_size_mask();
    if (!mask) return coiommu::unexpected(mask.error());
    wire::Config c;
    c.page_size_mask = *mask;
    c.input_range.start = uint64_t{0};
    c.input_range.end = options_.max_iova;
    c.probe_size = wire::kProbeSize;
    return c;
}

Status ViommuDevice::register_dmabuf(Gpa gpa, uint64_t size, Hva hva) {
    if (size == 0) return make_error(EINVAL, "dma-buf of size 0");
    const auto end = checked_add(gpa, size);
    if (!end) return make_error(EOVERFLOW, "dma-buf gpa overflow");
    std::unique_lock lock(dmabuf_mu_);
    auto next = dmabufs_.lower_bound(raw(gpa));
    if (next != dmabufs_.end() && next->first < raw(*end)) {
        return make_error(EEXIST, fmt::format("dma-buf at {:#x} overlaps one at {:#x}", raw(gpa), next->first));
    }
    if (next != dmabufs_.begin()) {
        const auto prev = std::prev(next);
        if (prev->first + prev->second.size > raw(gpa)) {
            return make_error(EEXIST, fmt::format("dma-buf at {:#x} overlaps one at {:#x}", raw(gpa), prev->first));
        }
    }
    dmabufs_.emplace_hint(next, raw(gpa), Dmabuf{size, hva});
    dmabuf_count_.store(dmabufs_.size(), std::memory_order_release);
    return ok();
}

Status ViommuDevice::unregister_dmabuf(Gpa gpa) {
    std::unique_lock lock(dmabuf_mu_);
    if (dmabufs_.erase(raw(gpa)) == 0) return make_error(ENOENT, fmt::format("no dma-buf at {:#x}", raw(gpa)));
    dmabuf_count_.store(dmabufs_.size(), std::memory_order_release);
    return ok();
}

std::optional<Hva> ViommuDevice::dmabuf_hva(uint64_t phys_start, uint64_t size) const {
    // Fast path for the common case of no dma-bufs: no shared lock on every MAP.
    if (dmabuf_count_.load(std::memory_order_acquire) == 0) return std::nullopt;
    std::shared_lock lock(dmabuf_mu_);
    auto it = dmabufs_.upper_bound(phys_start);
    if (it == dmabufs_.begin()) return std::nullopt;
    --it;
    uint64_t req_end = 0;
    if (__builtin_add_overflow(phys_start, size, &req_end)) return std::nullopt;
    if (req_end > it->first + it->second.size) return std::nullopt;
    return offset(it->second.hva, phys_start - it->first);
}

std::optional<uint32_t> ViommuDevice::endpoint_domain(uint32_t endpoint) const {
    EndpointTable::const_accessor ep;
    if (!endpoints_.find(ep, endpoint)) return std::nullopt;
    return ep->second.domain;
}

std::optional<uint32_t> ViommuDevice::domain_endpoint_count(uint32_t domain) const {
    DomainTable::const_accessor d;
    if (!domains_.find(d, domain)) return std::nullopt;
    return d->second.endpoints;
}

Result<size_t> ViommuDevice::handle(std::span<const std::byte> request, std::span<std::byte> writable) {
    counters_.requests.fetch_add(1, std::memory_order_relaxed);
    // The engine throws nothing, but TBB, the standard containers and fmt allocate and may
    // throw std::bad_alloc: stop it here so a queue worker survives.
    try {
        return handle_request(request, writable);
    } catch (const std::bad_alloc&) {
        counters_.failed.fetch_add(1, std::memory_order_relaxed);
        return make_error(ENOMEM, "out of memory while handling a request");
    } catch (const std::exception& e) {
        counters_.failed.fetch_add(1, std::memory_order_relaxed);
        return make_error(EIO, fmt::format("exception while handling a request: {}", e.what()));
    }
}

Result<size_t> ViommuDevice::handle_request(std::span<const std::byte> request, std::span<std::byte> writable) {
    auto fail = [this](int err, std::string what) -> Result<size_t> {
        counters_.failed.fetch_add(1, std::memory_order_relaxed);
        return make_error(err, std::move(what));
    };

    // At least the tail must fit, before anything else (crosvm: WriteBufferTooSmall).
    if (writable.size() < sizeof(wire::ReqTail)) return fail(EMSGSIZE, "write buffer length too small");
    const auto head = read_wire<wire::ReqHead>(request);
    if (!head) return fail(EMSGSIZE, "request shorter than its head");
    const auto body = request.subspan(sizeof(wire::ReqHead));

    Reply reply;
    switch (head->type) {
        case wire::kTypeAttach: {
            const auto req = read_wire<wire::ReqAttach>(body);
            if (!req) return fail(EMSGSIZE, "short ATTACH request");
            reply = attach(*req);
            break;
        }
        case wire::kTypeDetach: {
            const auto req = read_wire<wire::ReqDetach>(body);
            if (!req) return fail(EMSGSIZE, "short DETACH request");
            reply = detach(*req);
            break;
        }
        case wire::kTypeMap: {
            const auto req = read_wire<wire::ReqMap>(body);
            if (!req) return fail(EMSGSIZE, "short MAP request");
            auto r = map(*req);
            if (!r) {
                counters_.failed.fetch_add(1, std::memory_order_relaxed);
                return coiommu::unexpected(r.error());
            }
            reply = std::move(*r);
            break;
        }
        case wire::kTypeUnmap: {
            const auto req = read_wire<wire::ReqUnmap>(body);
            if (!req) return fail(EMSGSIZE, "short UNMAP request");
            auto r = unmap(*req);
            if (!r) {
                counters_.failed.fetch_add(1, std::memory_order_relaxed);
                return coiommu::unexpected(r.error());
            }
            reply = std::move(*r);
            break;
        }
        case wire::kTypeProbe: {
            const auto req = read_wire<wire::ReqProbe>(body);
            if (!req) return fail(EMSGSIZE, "short PROBE request");
            reply = probe(*req, writable);
            break;
        }
        default:
            // The virtio spec: the device SHOULD NOT write the buffer and SHOULD set used length 0.
            return fail(EOPNOTSUPP, fmt::format("unknown request type {}", head->type));
    }

    wait_for_fault_resolution(reply);

    wire::ReqTail tail;
    tail.status = reply.status;
    write_wire(writable.subspan(reply.properties_len), tail);
    if (reply.status < std::size(counters_.status)) {
        counters_.status[reply.status].fetch_add(1, std::memory_order_relaxed);
    }
    return reply.properties_len + sizeof(wire::ReqTail);
}

void ViommuDevice::wait_for_fault_resolution(Reply& reply) {
    if (!reply.fault_resolved.valid()) return;
    counters_.fault_waits.fetch_add(1, std::memory_order_relaxed);
    CLOG_DEBUG(kLog, "{}: waiting for iommu fault resolution", reply.what);
    auto resolved = reply.fault_resolved.wait_for(options_.fault_wait_timeout);
    if (!resolved) {
        CLOG_ERROR(kLog, "{}: waiting for the IOMMU fault to resolve failed: {}; completing with DEVERR", reply.what,
                   resolved.error().message());
        reply.status = wire::kStatusDevErr;
    } else if (!*resolved) {
        counters_.fault_wait_timeouts.fetch_add(1, std::memory_order_relaxed);
        const std::string who = reply.unmap_domain ? describe_endpoints_of(*reply.unmap_domain) : std::string();
        CLOG_ERROR(kLog,
                   "{}{}: the export client did not release the faulted memory within {} ms; "
                   "completing with DEVERR",
                   reply.what, who, options_.fault_wait_timeout.count());
        reply.status = wire::kStatusDevErr;
    } else {
        CLOG_DEBUG(kLog, "{}: iommu fault resolved", reply.what);
    }
}

std::string ViommuDevice::describe_endpoints_of(uint32_t domain) {
    std::vector<uint32_t> ids;
    {
        std::lock_guard topo(topology_mu_);
        for (uint32_t id : endpoint_ids_) {
            EndpointTable::const_accessor ep;
            if (endpoints_.find(ep, id) && ep->second.domain == domain) ids.push_back(id);
        }
    }
    std::sort(ids.begin(), ids.end());
    return fmt::format(" [endpoints {}]", fmt::join(ids, ", "));
}

bool ViommuDevice::detach_locked(Endpoint& ep, EventFd* fault_resolved) {
    if (!ep.domain) return true;
    DomainTable::accessor d;  // write access: waits for in-flight MAP/UNMAPs of the domain
    if (domains_.find(d, *ep.domain)) {
        if (!d->second.mapper->supports_detach()) return false;
        // Only an endpoint alone in its domain can leave it (crosvm): with VFIO the others
        // would keep the mappings; for the rest the domain would need per-endpoint state.
        if (d->second.endpoints > 1) return false;
        *fault_resolved = d->second.mapper->reset_domain();
        domains_.erase(d);
    }
    ep.domain.reset();
    return true;
}

ViommuDevice::Reply ViommuDevice::attach(const wire::ReqAttach& req) {
    Reply r;
    // reserved != 0 -> INVAL (MUST). This also rejects virtio 1.2's ATTACH flags (BYPASS),
    // which the device does not offer.
    if (!all_zero(req.reserved)) {
        r.status = wire::kStatusInval;
        return r;
    }
    const uint32_t domain = req.domain.get();
    const uint32_t endpoint = req.endpoint.get();

    std::lock_guard topo(topology_mu_);
    EndpointTable::accessor ep;
    if (!endpoints_.find(ep, endpoint)) {
        r.status = wire::kStatusNoEnt;
        return r;
    }
    const std::shared_ptr<MemoryMapper> mapper = ep->second.mapper;

    // One mapper cannot serve two domains at once: their mappings would leak into each other.
    for (uint32_t other_id : endpoint_ids_) {
        if (other_id == endpoint) continue;  // its accessor is ours already
        EndpointTable::const_accessor other;
        if (!endpoints_.find(other, other_id)) continue;
        const Endpoint& o = other->second;
        if (same_mapper(*o.mapper, *mapper) && o.domain && *o.domain != domain) {
            r.status = wire::kStatusUnsupp;
            return r;
        }
    }
    // Nor can one domain be served by two different mappers (crosvm would silently replace
    // the domain's mapper, so MAPs would stop reaching the first endpoint).
    {
        DomainTable::const_accessor d;
        if (domains_.find(d, domain) && !same_mapper(*d->second.mapper, *mapper)) {
            r.status = wire::kStatusUnsupp;
            return r;
        }
    }

    // Already attached: behave as DETACH then ATTACH; UNSUPP if it cannot be detached.
    if (ep->second.domain) {
        if (!detach_locked(ep->second, &r.fault_resolved)) {
            r.status = wire::kStatusUnsupp;
            return r;
        }
    }
    {
        DomainTable::accessor d;
        if (domains_.insert(d, domain)) {
            d->second = Domain{mapper, 1};
        } else {
            ++d->second.endpoints;
        }
    }
    ep->second.domain = domain;
    if (r.fault_resolved.valid()) r.what = fmt::format("ATTACH endpoint {} to domain {}", endpoint, domain);
    return r;
}

ViommuDevice::Reply ViommuDevice::detach(const wire::ReqDetach& req) {
    Reply r;
    // crosvm ignores the reserved bytes; the virtio spec says the device MUST reject them
    // with INVAL, and Linux always sends zeros, so follow the spec.
    if (!all_zero(req.reserved)) {
        r.status = wire::kStatusInval;
        return r;
    }
    const uint32_t endpoint = req.endpoint.get();
    std::lock_guard topo(topology_mu_);
    EndpointTable::accessor ep;
    if (!endpoints_.find(ep, endpoint)) {
        r.status = wire::kStatusNoEnt;
        return r;
    }
    const std::optional<uint32_t> old_domain = ep->second.domain;
    if (!detach_locked(ep->second, &r.fault_resolved)) {
        r.status = wire::kStatusUnsupp;
        return r;
    }
    if (r.fault_resolved.valid()) {
        r.what = fmt::format("DETACH endpoint {} from domain {}", endpoint, old_domain.value_or(0));
    }
    return r;
}

Result<ViommuDevice::Reply> ViommuDevice::map(const wire::ReqMap& req) {
    Reply r;
    const uint64_t virt_start = req.virt_start.get();
    const uint64_t virt_end = req.virt_end.get();
    const uint64_t phys_start = req.phys_start.get();
    const uint32_t flags = req.flags.get();

    if (virt_start >= virt_end) {
        r.status = wire::kStatusInval;
        return r;
    }
    // The lowest set bit of page_size_mask is the mapping granule. virt_end + 1 wraps to 0
    // for virt_end == 2^64 - 1, which is aligned.
    const uint64_t granule = (uint64_t{1} << std::countr_zero(page_size_mask_.load(std::memory_order_relaxed))) - 1;
    if ((phys_start & granule) != 0 || (virt_start & granule) != 0 || ((virt_end + 1) & granule) != 0) {
        r.status = wire::kStatusRange;
        return r;
    }
    if ((flags & ~wire::kMapFlagMask) != 0) {
        r.status = wire::kStatusInval;
        return r;
    }
    const uint32_t domain = req.domain.get();
    DomainTable::const_accessor d;  // held across the mapper call: see the class comment
    if (!domains_.find(d, domain)) {
        r.status = wire::kStatusNoEnt;
        return r;
    }
    if (virt_start == 0 && virt_end == ~uint64_t{0}) {
        // The size, 2^64, does not fit in 64 bits.
        r.status = wire::kStatusDevErr;
        return r;
    }
    const uint64_t size = virt_end - virt_start + 1;
    // The device MUST NOT allow writes to a range mapped without WRITE. (READ is implied;
    // MMIO mappings are mapped like memory, as crosvm does.)
    const Prot prot = (flags & wire::kMapFlagWrite) != 0 ? Prot::ReadWrite : Prot::Read;

    MemoryMapper& mapper = *d->second.mapper;
    Result<AddMapResult> result = [&] {
        if (const auto hva = dmabuf_hva(phys_start, size)) {
            return mapper.vfio_dma_map(Iova{virt_start}, *hva, size, prot);
        }
        return mapper.add_map(MappingInfo{Iova{virt_start}, Gpa{phys_start}, size, prot});
    }();
    if (!result) {
        return coiommu::unexpected(with_context(
            result.error(),
            fmt::format("MAP domain {} iova {:#x}..={:#x} gpa {:#x}", domain, virt_start, virt_end, phys_start)));
    }
    if (*result == AddMapResult::OverlapFailure) r.status = wire::kStatusInval;
    return r;
}

Result<ViommuDevice::Reply> ViommuDevice::unmap(const wire::ReqUnmap& req) {
    Reply r;
    const uint32_t domain = req.domain.get();
    const uint64_t virt_start = req.virt_start.get();
    const uint64_t virt_end = req.virt_end.get();

    DomainTable::const_accessor d;
    if (!domains_.find(d, domain)) {
        r.status = wire::kStatusNoEnt;
        return r;
    }
    // crosvm computes end - start + 1 unchecked; reject what that would wrap.
    if (virt_end < virt_start) {
        r.status = wire::kStatusInval;
        return r;
    }
    if (virt_start == 0 && virt_end == ~uint64_t{0}) {
        r.status = wire::kStatusDevErr;
        return r;
    }
    const uint64_t size = virt_end - virt_start + 1;
    auto result = d->second.mapper->remove_map(Iova{virt_start}, size);
    if (!result) {
        return coiommu::unexpected(with_context(
            result.error(), fmt::format("UNMAP domain {} iova {:#x}..={:#x}", domain, virt_start, virt_end)));
    }
    if (result->is_overlap_failure()) {
        // The UNMAP would split a mapping: RANGE, and nothing was removed.
        r.status = wire::kStatusRange;
        return r;
    }
    r.fault_resolved = result->take_fault_resolved();
    if (r.fault_resolved.valid()) {
        r.what = fmt::format("UNMAP domain {} iova {:#x}..={:#x} (mapper {})", domain, virt_start, virt_end,
                             d->second.mapper->id());
        r.unmap_domain = domain;
    }
    return r;
}

ViommuDevice::Reply ViommuDevice::probe(const wire::ReqProbe& req, std::span<std::byte> writable) {
    Reply r;
    const uint32_t endpoint = req.endpoint.get();
    if (endpoints_.count(endpoint) == 0) r.status = wire::kStatusNoEnt;

    // Everything before the tail is the properties area. It may exceed probe_size.
    const size_t properties_len = writable.size() - sizeof(wire::ReqTail);
    size_t written = 0;
    if (properties_len < wire::kProbeSize) {
        // Smaller than probe_size: write no property, INVAL (even over NOENT, as crosvm).
        r.status = wire::kStatusInval;
    } else if (r.status == wire::kStatusOk) {
        wire::ProbeResvMem resv;
        resv.head.type = wire::kProbeTypeResvMem;
        resv.head.length = static_cast<uint16_t>(sizeof(wire::ProbeResvMem) - sizeof(wire::ProbeProperty));
        resv.subtype = wire::kResvMemMsi;
        resv.start = wire::kX86MsiIovaStart;
        resv.end = wire::kX86MsiIovaEnd;
        write_wire(writable, resv);
        written = sizeof(resv);
    }
    // The remaining property bytes are zero-filled.
    // Safety: bounds-checked write into the device-writable buffer (see write_wire).
    std::memset(writable.data() + written, 0, properties_len - written);
    r.properties_len = properties_len;
    return r;
}

}  // namespace coiommu::viommu
