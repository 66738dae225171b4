// fuzz_viommu: the virtio-iommu request layer (engine/viommu/viommu_device.h) as a guest driver
// and an export client drive it.
//
// Each input builds a fresh ViommuDevice with four endpoints: 1 and 2 share a VfioMapper over a
// FakeBackend and memfd guest RAM (two regions with a gap), 3 and 4 have a BasicMemoryMapper each.
// Then a sequence of operations: raw request bytes with a writable part of the fuzzer's size,
// structured ATTACH / DETACH / MAP / UNMAP / PROBE requests (page-granular addresses, so the
// fuzzer reaches the mappers), the export client of endpoint 3's mapper (start a session, export
// and release ranges), dma-buf registration, backend fault injection, config reads.
//
// Aborts (FUZZ_CHECK) when:
//  - handle() failed but wrote into the writable buffer, or reports a used length beyond it or
//    shorter than the tail;
//  - a backend mapping's host range lies outside guest RAM and outside every dma-buf the input
//    registered;
//  - a MAP answered OK on the VFIO domain left its IOVA range unmapped in the backend, or an
//    UNMAP answered OK left a mapping overlapping its range.
// Fault waits are bounded by a 0 ms timeout (the export client is this same thread).
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/event_fd.h"
#include "engine/dma/fake_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/viommu/basic_mapper.h"
#include "engine/viommu/protocol.h"
#include "engine/viommu/vfio_mapper.h"
#include "engine/viommu/viommu_device.h"
#include "tests/fuzz/fuzz_support.h"

namespace coiommu::fuzz {
namespace {

namespace wire = viommu::wire;

constexpr std::size_t kMaxOps = 256;
constexpr uint8_t kUntouched = 0xa5;
constexpr uint64_t kDmabufHvaBase = uint64_t{1} << 45;  // dma-bufs live at made-up host addresses

enum Op : uint8_t {
    kRaw = 0,      // u8 request length, bytes, u8 writable length
    kAttach,       // u8 domain, u8 endpoint
    kDetach,       // u8 domain, u8 endpoint, u8 reserved byte
    kMap,          // u8 domain, u32 virt page, u16 pages, u32 phys page, u8 flags, u8 misalign
    kUnmap,        // u8 domain, u32 virt page, u16 pages (0: up to 2^64 - 1)
    kProbe,        // u8 endpoint, u8 writable length
    kExportStart,  // BasicMemoryMapper::start_export_session (endpoint 3's mapper)
    kExport,       // u32 virt page, u16 pages
    kRelease,      // u32 virt page, u16 pages
    kDmabuf,       // u32 phys page, u16 pages
    kDmabufDrop,   // u32 phys page
    kFault,        // u8 op, u8 n, u8 errno selector
    kConfig,
    kOpCount,
};

const GuestMemory& guest_ram() {
    static const GuestMemory mem = [] {
        const RegionSpec regions[] = {{Gpa{0}, 32 * kPageSize}, {Gpa{0x100000}, 32 * kPageSize}};
        return GuestMemory::create(regions).value();
    }();
    return mem;
}

int errno_of(uint8_t sel) {
    static constexpr int kErrnos[] = {EEXIST, ENOSPC, EINVAL, ENOMEM, EFAULT};
    return kErrnos[sel % std::size(kErrnos)];
}

template <class Body>
std::vector<std::byte> request(uint8_t type, const Body& body) {
    std::vector<std::byte> out(sizeof(wire::ReqHead) + sizeof(Body));
    wire::ReqHead head;
    head.type = type;
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

struct Range {
    uint64_t first = 0;
    uint64_t size = 0;
};

class Harness {
public:
    Harness()
        : mem_(guest_ram()),
          backend_(),
          vfio_(std::make_shared<viommu::VfioMapper>(mem_, backend_, 7)),
          basic_a_(std::make_shared<viommu::BasicMemoryMapper>(~uint64_t{0}, 64)),
          basic_b_(std::make_shared<viommu::BasicMemoryMapper>(~uint64_t{0} << kPageShift)),
          dev_(options()) {
        FUZZ_CHECK(dev_.add_endpoint(1, vfio_).has_value());
        FUZZ_CHECK(dev_.add_endpoint(2, vfio_).has_value());
        FUZZ_CHECK(dev_.add_endpoint(3, basic_a_).has_value());
        FUZZ_CHECK(dev_.add_endpoint(4, basic_b_).has_value());
    }

    void run(Reader& in) {
        for (std::size_t n = 0; n < kMaxOps && !in.exhausted(); ++n) {
            step(in);
            check_backend();
        }
    }

private:
    static viommu::ViommuDevice::Options options() {
        viommu::ViommuDevice::Options o;
        o.fault_wait_timeout = std::chrono::milliseconds(0);
        return o;
    }

    void step(Reader& in) {
        switch (in.u8() % kOpCount) {
            case kRaw: {
                const auto bytes = in.bytes(in.u8());
                std::vector<std::byte> req(bytes.size());
                if (!bytes.empty()) std::memcpy(req.data(), bytes.data(), bytes.size());
                (void)send(req, in.u8());
                break;
            }
            case kAttach: {
                wire::ReqAttach b;
                b.domain = in.u8();
                b.endpoint = in.u8();
                (void)send(request(wire::kTypeAttach, b), sizeof(wire::ReqTail));
                break;
            }
            case kDetach: {
                wire::ReqDetach b;
                b.domain = in.u8();
                b.endpoint = in.u8();
                b.reserved[0] = in.u8();
                (void)send(request(wire::kTypeDetach, b), sizeof(wire::ReqTail));
                break;
            }
            case kMap: map(in); break;
            case kUnmap: unmap(in); break;
            case kProbe: {
                wire::ReqProbe b;
                b.endpoint = in.u8();
                (void)send(request(wire::kTypeProbe, b), in.u8());
                break;
            }
            case kExportStart: {
                auto ev = basic_a_->start_export_session();
                if (ev) fault_event_ = std::move(*ev);
                break;
            }
            case kExport: {
                const Range r = pages(in);
                auto regions = basic_a_->export_range(Iova{r.first}, r.size);
                if (regions) {
                    uint64_t total = 0;
                    for (const auto& m : *regions) total += m.len;
                    FUZZ_CHECK(total == r.size);
                }
                break;
            }
            case kRelease: {
                const Range r = pages(in);
                (void)basic_a_->release(Iova{r.first}, r.size);
                break;
            }
            case kDmabuf: {
                const Range r = pages(in);
                const Hva hva{kDmabufHvaBase + r.first};
                if (dev_.register_dmabuf(Gpa{r.first}, r.size, hva)) dmabufs_.push_back(Range{raw(hva), r.size});
                break;
            }
            case kDmabufDrop: (void)dev_.unregister_dmabuf(Gpa{uint64_t{in.u32()} << kPageShift}); break;
            case kFault: {
                const dma::Op op = (in.u8() & 1) != 0 ? dma::Op::Unmap : dma::Op::Map;
                const uint64_t nth = 1 + in.u8() % 4;
                backend_.fail_nth(op, nth, errno_of(in.u8()));
                break;
            }
            case kConfig: {
                (void)dev_.config();
                (void)dev_.page_size_mask();
                break;
            }
            default: break;
        }
    }

    static Range pages(Reader& in) {
        const uint64_t first = uint64_t{in.u32()} << kPageShift;
        const uint64_t n = in.u16();
        return Range{first, n << kPageShift};
    }

    // Sends one request; returns its status, or nullopt when handle() refused it.
    std::optional<uint8_t> send(std::span<const std::byte> req, std::size_t writable_len) {
        std::vector<std::byte> w(writable_len, std::byte{kUntouched});
        auto used = dev_.handle(req, w);
        FUZZ_TRACE("request type %d: %s\n", req.empty() ? -1 : static_cast<int>(req[0]),
                   used ? std::to_string(static_cast<int>(w[*used - sizeof(wire::ReqTail)])).c_str()
                        : used.error().message().c_str());
        if (!used) {
            for (std::byte b : w) FUZZ_CHECK(b == std::byte{kUntouched});
            return std::nullopt;
        }
        FUZZ_CHECK(*used >= sizeof(wire::ReqTail) && *used <= w.size());
        return static_cast<uint8_t>(w[*used - sizeof(wire::ReqTail)]);
    }

    [[nodiscard]] bool vfio_domain(uint32_t domain) const {
        return dev_.endpoint_domain(1) == domain || dev_.endpoint_domain(2) == domain;
    }

    void map(Reader& in) {
        wire::ReqMap b;
        const uint32_t domain = in.u8();
        const uint64_t start = uint64_t{in.u32()} << kPageShift;
        const uint64_t n = in.u16();
        const uint64_t phys = uint64_t{in.u32()} << kPageShift;
        const uint32_t flags = in.u8();
        const uint8_t misalign = in.u8();
        const uint64_t end = start + (n << kPageShift) - 1 + misalign;
        b.domain = domain;
        b.virt_start = start;
        b.virt_end = end;
        b.phys_start = phys;
        b.flags = flags;
        const auto status = send(request(wire::kTypeMap, b), sizeof(wire::ReqTail));
        if (status == wire::kStatusOk && vfio_domain(domain)) {
            FUZZ_CHECK(backend_.is_mapped(Iova{start}, end - start + 1));
        }
    }

    void unmap(Reader& in) {
        wire::ReqUnmap b;
        const uint32_t domain = in.u8();
        const uint64_t start = uint64_t{in.u32()} << kPageShift;
        const uint64_t n = in.u16();
        const uint64_t end = n == 0 ? ~uint64_t{0} : start + (n << kPageShift) - 1;
        b.domain = domain;
        b.virt_start = start;
        b.virt_end = end;
        const auto status = send(request(wire::kTypeUnmap, b), sizeof(wire::ReqTail));
        if (status == wire::kStatusOk && vfio_domain(domain)) {
            for (const auto& m : backend_.mappings()) {
                const uint64_t m_last = raw(m.iova) + m.size - 1;
                FUZZ_CHECK(m_last < start || raw(m.iova) > end);
            }
        }
    }

    // Every backend mapping points into guest RAM or into a dma-buf registered by this input.
    void check_backend() const {
        for (const auto& m : backend_.mappings()) {
            const uint64_t hva = raw(m.hva);
            bool inside = false;
            for (const auto& r : mem_.regions()) {
                const auto base = reinterpret_cast<uintptr_t>(r.host);
                if (hva >= base && m.size <= r.size && hva - base <= r.size - m.size) inside = true;
            }
            for (const auto& d : dmabufs_) {
                if (hva >= d.first && m.size <= d.size && hva - d.first <= d.size - m.size) inside = true;
            }
            FUZZ_CHECK(inside);
        }
    }

    const GuestMemory& mem_;
    dma::FakeBackend backend_;
    std::shared_ptr<viommu::VfioMapper> vfio_;
    std::shared_ptr<viommu::BasicMemoryMapper> basic_a_;
    std::shared_ptr<viommu::BasicMemoryMapper> basic_b_;
    viommu::ViommuDevice dev_;
    EventFd fault_event_;
    std::vector<Range> dmabufs_;
};

// ---- seeds ---------------------------------------------------------------------------------

int run_one(std::span<const uint8_t> data) {
    Reader in(data);
    Harness h;
    h.run(in);
    return 0;
}

void make_seeds(const SeedSink& sink) {
    {  // attach the VFIO endpoints, map RAM of both regions, unmap, probe, detach (refused)
        SeedWriter w;
        w.u8(kAttach).u8(1).u8(1);
        w.u8(kAttach).u8(1).u8(2);
        w.u8(kMap).u8(1).u32(0x100).u16(4).u32(0).u8(wire::kMapFlagRead | wire::kMapFlagWrite).u8(0);
        w.u8(kMap).u8(1).u32(0x200).u16(8).u32(0x100).u8(wire::kMapFlagRead).u8(0);
        w.u8(kMap).u8(1).u32(0x300).u16(1).u32(0x40).u8(wire::kMapFlagRead).u8(0);  // in the gap
        w.u8(kUnmap).u8(1).u32(0x100).u16(4);
        w.u8(kUnmap).u8(1).u32(0x202).u16(1);  // bisects
        w.u8(kProbe).u8(1).u8(wire::kProbeSize + sizeof(wire::ReqTail));
        w.u8(kDetach).u8(1).u8(1).u8(0);
        w.u8(kConfig);
        sink("vfio_map_unmap", w.data());
    }
    {  // a basic domain, an export session, an UNMAP that faults the export, a release
        SeedWriter w;
        w.u8(kAttach).u8(5).u8(3);
        w.u8(kMap).u8(5).u32(0x10).u16(4).u32(0x1000).u8(wire::kMapFlagRead | wire::kMapFlagWrite).u8(0);
        w.u8(kMap).u8(5).u32(0x14).u16(4).u32(0x2000).u8(wire::kMapFlagRead).u8(0);
        w.u8(kExportStart);
        w.u8(kExport).u32(0x10).u16(8);
        w.u8(kUnmap).u8(5).u32(0x10).u16(4);
        w.u8(kRelease).u32(0x10).u16(8);
        w.u8(kDetach).u8(5).u8(3).u8(0);
        w.u8(kAttach).u8(6).u8(4);
        w.u8(kUnmap).u8(6).u32(0).u16(0);
        sink("basic_export_fault", w.data());
    }
    {  // a dma-buf behind a MAP, fault injection, raw requests (short, unknown type, tiny buffer)
        SeedWriter w;
        w.u8(kAttach).u8(2).u8(1);
        w.u8(kDmabuf).u32(0x80000).u16(16);
        w.u8(kMap).u8(2).u32(0x500).u16(2).u32(0x80000).u8(wire::kMapFlagRead).u8(0);
        w.u8(kFault).u8(0).u8(0).u8(1);
        w.u8(kMap).u8(2).u32(0x600).u16(2).u32(0).u8(wire::kMapFlagRead).u8(0);
        w.u8(kFault).u8(1).u8(0).u8(3);
        w.u8(kUnmap).u8(2).u32(0x500).u16(2);
        w.u8(kDmabufDrop).u32(0x80000);
        const uint8_t short_map[] = {wire::kTypeMap, 0, 0, 0, 2, 0, 0, 0};
        w.u8(kRaw).u8(sizeof short_map).bytes(short_map).u8(4);
        const uint8_t unknown[] = {9, 0, 0, 0};
        w.u8(kRaw).u8(sizeof unknown).bytes(unknown).u8(4);
        w.u8(kProbe).u8(1).u8(2);
        sink("dmabuf_faults_raw", w.data());
    }
}

}  // namespace
}  // namespace coiommu::fuzz

COIOMMU_FUZZ_ENTRY_POINTS()
