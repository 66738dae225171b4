// The MemoryMapper contract: what virtio-iommu asks of one IOMMU domain's backing.
//
// Port of crosvm's virtio-iommu `MemoryMapper` trait (engine/README.md, "virtio-iommu memory
// mappers"). Every range in this file is [start, start + size): ends are exclusive, and an end of
// exactly 2^64 counts as overflow (as Rust's checked_add does).
//
// Two implementations:
//   BasicMemoryMapper (basic_mapper.h)  an IOVA -> GPA table in memory, with export sessions
//   VfioMapper        (vfio_mapper.h)   every map becomes a DMA backend (VFIO) mapping
//
// Exported memory and IOMMU faults. A client that sits behind virtio-iommu (crosvm's VVU
// proxy, a device process using VIRTIO_F_ACCESS_PLATFORM) may *export* mapped IOVA ranges:
// it receives their GPAs and may touch that memory until it *releases* them. The guest can
// unmap exported memory at any time; that is an IOMMU fault:
//   1. the guest sends UNMAP / DETACH / a re-ATTACH that removes exported memory;
//   2. the device calls remove_map() / reset_domain();
//   3. the mapper signals the client's fault event (from start_export_session()) and hands
//      the device a fault-resolved event;
//   4. the device holds the request (does not complete it) and waits on that event, while the
//      mapper keeps serving the client;
//   5. the client sees the fault and releases every exported range;
//   6. the last release signals the fault-resolved event;
//   7. the device completes the original request.
// A session faults at most once: a second fault returns no event, and a faulted session
// exports nothing more. A new session may start once the old one has no exports left.
//
// Outcomes versus errors: AddMapResult::OverlapFailure and RemoveMapResult::OverlapFailure are
// expected outcomes (the guest asked for something the IOMMU model refuses; virtio-iommu turns
// them into status codes). Errors (Result) are bad arguments or backend failures.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/dma/backend.h"

namespace coiommu::viommu {

using dma::Prot;

// A piece of guest-physical memory an exported IOVA range resolves to.
struct MemRegion {
    Gpa gpa{};
    uint64_t len = 0;
    Prot prot = Prot::Read;

    friend bool operator==(const MemRegion&, const MemRegion&) = default;
};

// One guest MAP: [iova, iova + size) -> [gpa, gpa + size).
struct MappingInfo {
    Iova iova{};
    Gpa gpa{};
    uint64_t size = 0;
    Prot prot = Prot::Read;

    // Checked constructor. Errors: EINVAL for size 0 ("can't create 0 sized region"),
    // EOVERFLOW when iova + size or gpa + size exceeds 2^64 - 1.
    [[nodiscard]] static Result<MappingInfo> create(Iova iova, Gpa gpa, uint64_t size, Prot prot);
};

enum class AddMapResult {
    Ok,
    OverlapFailure,  // the range overlaps an existing mapping; nothing changed
};

// Result of remove_map(). Move-only (it may carry an eventfd).
//
// Events that may be absent are EventFds that may be invalid (valid() == false means "no
// event") rather than std::optional<EventFd>: GCC 12 reports false -Wmaybe-uninitialized
// errors on moved optionals holding an fd.
class RemoveMapResult {
public:
    enum class Kind {
        Success,         // the range is unmapped (possibly nothing was mapped there)
        OverlapFailure,  // the range would split a mapping; nothing changed
    };

    // Success. A valid `fault_resolved` means the removal faulted exported memory: the caller
    // must wait on the event before telling the guest the unmap completed.
    [[nodiscard]] static RemoveMapResult success(EventFd fault_resolved = {}) {
        return RemoveMapResult(Kind::Success, std::move(fault_resolved));
    }
    [[nodiscard]] static RemoveMapResult overlap_failure() { return RemoveMapResult(Kind::OverlapFailure, {}); }

    [[nodiscard]] Kind kind() const { return kind_; }
    [[nodiscard]] bool is_success() const { return kind_ == Kind::Success; }
    [[nodiscard]] bool is_overlap_failure() const { return kind_ == Kind::OverlapFailure; }
    // Whether this removal faulted exported memory and carries the fault-resolved event.
    [[nodiscard]] bool has_fault_resolved() const { return fault_resolved_.valid(); }
    [[nodiscard]] const EventFd& fault_resolved() const { return fault_resolved_; }
    [[nodiscard]] EventFd take_fault_resolved() { return std::move(fault_resolved_); }

private:
    RemoveMapResult(Kind kind, EventFd ev) : kind_(kind), fault_resolved_(std::move(ev)) {}
    Kind kind_;
    EventFd fault_resolved_;
};

// A generic interface for IOMMU backends behind virtio-iommu.
//
// Thread-safety: every implementation in this project is safe to call from several threads
// at once (the device's queue thread and an export client); each serialises internally.
class MemoryMapper {
public:
    virtual ~MemoryMapper() = default;

    // Creates a mapping. OverlapFailure if it overlaps an existing one (nothing changed).
    // Errors: as MappingInfo::create for size 0 / overflow; backend failures.
    [[nodiscard]] virtual Result<AddMapResult> add_map(const MappingInfo& map) = 0;

    // Removes every mapping inside [iova, iova + size). OverlapFailure (and nothing removed)
    // when a mapping is only partly inside. Removing a range with no mappings succeeds.
    [[nodiscard]] virtual Result<RemoveMapResult> remove_map(Iova iova, uint64_t size) = 0;

    // Bitmap of the IOMMU page sizes this mapper supports.
    [[nodiscard]] virtual Result<uint64_t> get_mask() const = 0;

    // Whether endpoints can be safely detached from this mapper's domain.
    [[nodiscard]] virtual bool supports_detach() const = 0;

    // Drops every mapping (only needed when supports_detach()). Returns a valid fault-resolved
    // event when exported memory was outstanding (wait on it as for remove_map), else an invalid
    // EventFd. Default: no event.
    [[nodiscard]] virtual EventFd reset_domain() { return {}; }

    // Identifier, unique among instances of the same implementation.
    [[nodiscard]] virtual uint32_t id() const = 0;

    // Starts an export session; returns the client's fault event (signaled on an IOMMU fault).
    // Only one session at a time; a new one needs the previous one to have no exports.
    // Default: ENOTSUP ("not supported").
    [[nodiscard]] virtual Result<EventFd> start_export_session();

    // Maps host memory that is not guest RAM (a dma-buf) at [iova, iova + size).
    // Precondition: [hva, hva + size) stays mapped in this process while it is IOMMU-mapped.
    // Default: ENOTSUP.
    [[nodiscard]] virtual Result<AddMapResult> vfio_dma_map(Iova iova, Hva hva, uint64_t size, Prot prot);

    // Exports [iova, iova + size): returns its GPA regions in IOVA order, merging neighbours
    // that are GPA-contiguous with equal protection. (`export` is a C++ keyword.)
    // Default: ENOTSUP.
    [[nodiscard]] virtual Result<std::vector<MemRegion>> export_range(Iova iova, uint64_t size);

    // Releases one earlier export of exactly [iova, iova + size). A range exported twice must
    // be released twice. Default: ENOTSUP.
    [[nodiscard]] virtual Status release(Iova iova, uint64_t size);

protected:
    MemoryMapper() = default;
    MemoryMapper(const MemoryMapper&) = default;
    MemoryMapper& operator=(const MemoryMapper&) = default;
};

}  // namespace coiommu::viommu
