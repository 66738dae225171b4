// HostRecord: the crash-consistent record of what one session's host side has DMA-mapped, in a
// memfd that outlives the daemon (the daemon creates it, hands it to the VMM, and a restarted
// daemon gets it back with Resume: engine/daemon/PROTOCOL.md, "Resumable sessions").
//
// Why a memfd: the mappings live in the VMM's container (VFIO type1, iommufd), which survives a
// daemon crash, and the guest's DTT keeps saying PINNED. Whatever the daemon knew only in its own
// memory is gone with it; what it wrote to a shared memfd is not (a store that executed is in the
// page cache, whichever instruction the process was killed at). So every fact a new daemon needs is
// written here, in an order that leaves a recoverable record between any two instructions.
//
// Layout (little-endian, fixed; all of it validated on adopt because the VMM could change it):
//   [0, 4096)   RecordHeader: magic, version, gfn_count, and two copies of the device registers
//               (dtt_root, dtt_level, active, park count, the seq of the last MmioWrite applied),
//               the current one chosen by `device_gen` (a copy is written whole, then published by
//               one release store of the generation: a kill mid-write leaves the old copy current).
//   [4096, ...) one uint32_t per gfn in [0, gfn_count): 0, or at the head gfn of an extent
//               state << 30 | pages, with state Mapping (a map call may be under way or done),
//               Mapped (the map succeeded), Unmapping (an unmap may be under way or done).
// The entries file is sparse: only the 4 KiB pages holding touched words are ever allocated, and
// the scan on resume skips holes with SEEK_DATA.
//
// Protocol per DMA call (RecordingBackend below does it for every map and unmap the engine makes):
//   map:   entry := Mapping|n  ->  backend map  ->  entry := Mapped|n (success) or 0 (failure)
//   unmap: entry := Unmapping|n  ->  backend unmap  ->  entry := 0
// Each entry store is one release store of a 32-bit word. After a crash an entry in Mapping or
// Unmapping is reconciled with one exact unmap of its range: it returns the whole size (the call
// had happened) or nothing (it had not) - the engine never maps over or bisects an extent, so
// there is no third case. Mapped entries are adopted by the new engine as its own.
//
// Thread-safety: entry operations for one head are called by one thread at a time (the caller
// holds the head's page locks); different heads from any threads. Device-state writes from one
// thread (the session's). Reads of a record owned by a dead process: any thread, before use.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/domain.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/dma/backend.h"

namespace coiommu::dma {

inline constexpr uint64_t kRecordMagic = 0x44434552'4d4f4943;  // bytes "CIOMRECD"
inline constexpr uint32_t kRecordVersion = 1;
inline constexpr uint64_t kRecordHeaderBytes = 4096;
// Largest extent an entry can describe (30 bits of pages); the engine's extents are far smaller.
inline constexpr uint64_t kRecordMaxPages = (uint64_t{1} << 30) - 1;

enum class RecordState : uint32_t { Free = 0, Mapping = 1, Mapped = 2, Unmapping = 3 };

// The device registers a restarted daemon must present to the guest unchanged.
struct RecordedDevice {
    uint64_t dtt_root = 0;
    uint64_t dtt_level = 0;
    uint64_t park_count = 0;
    uint64_t last_mmio_seq = 0;  // seq of the last MmioWrite applied (a resent one is not re-applied)
    uint32_t active = 0;         // 1 once ACTIVATE was accepted
    uint32_t pad = 0;
};
static_assert(sizeof(RecordedDevice) == 40);

struct RecordHeader {
    uint64_t magic = kRecordMagic;
    uint32_t version = kRecordVersion;
    uint32_t entry_bytes = sizeof(uint32_t);
    uint64_t gfn_count = 0;
    uint64_t device_gen = 0;  // 0: no device state yet; else device[gen & 1] is current
    RecordedDevice device[2];
};
static_assert(sizeof(RecordHeader) <= kRecordHeaderBytes);

struct RecordedExtent {
    Gfn head{};
    uint64_t pages = 0;
    RecordState state = RecordState::Mapped;
};

class HostRecord {
public:
    // A new, empty record for gfns [0, gfn_count): a memfd sized and sealed against shrinking and
    // growing (the daemon maps it; a VMM that could shrink it would turn a store into SIGBUS).
    // Errors: EINVAL for gfn_count 0 or above 2^40; errno of memfd_create/ftruncate/fcntl/mmap.
    [[nodiscard]] static Result<HostRecord> create(uint64_t gfn_count);
    // Maps a record handed back by a VMM. It is untrusted input: checks the seals, the size, the
    // header (magic, version, entry size, gfn_count == the guest's) and the device generation.
    // Errors: EINVAL (naming what is wrong); errno of fstat/fcntl/mmap.
    [[nodiscard]] static Result<HostRecord> adopt(UniqueFd fd, uint64_t gfn_count);

    HostRecord() = default;
    ~HostRecord();
    HostRecord(HostRecord&& other) noexcept;
    HostRecord& operator=(HostRecord&& other) noexcept;
    HostRecord(const HostRecord&) = delete;
    HostRecord& operator=(const HostRecord&) = delete;

    [[nodiscard]] int fd() const { return fd_.get(); }
    [[nodiscard]] uint64_t gfn_count() const { return gfn_count_; }
    [[nodiscard]] uint64_t size_bytes() const { return bytes_; }

    // One release store of the head's entry. Preconditions: head + pages <= gfn_count, 1 <= pages
    // <= kRecordMaxPages (RecordingBackend checks both and refuses the call otherwise).
    void set(Gfn head, RecordState state, uint64_t pages);
    [[nodiscard]] RecordState state(Gfn head) const;

    // Every non-free entry, ascending, validated: pages in 1..kRecordMaxPages, the extent inside
    // [0, gfn_count) and inside one of `ram` (sorted or not), no extent overlapping another.
    // Errors: EINVAL naming the first bad entry (a corrupt or forged record); lseek's errno.
    [[nodiscard]] Result<std::vector<RecordedExtent>> extents(std::span<const GfnRange> ram) const;

    // The current device copy (all zero when none was written).
    [[nodiscard]] RecordedDevice device() const;
    // Writes the other copy whole, then publishes it with one release store of the generation.
    void set_device(const RecordedDevice& d);

private:
    HostRecord(UniqueFd fd, void* base, uint64_t bytes, uint64_t gfn_count)
        : fd_(std::move(fd)), base_(base), bytes_(bytes), gfn_count_(gfn_count) {}
    [[nodiscard]] RecordHeader* header() const { return static_cast<RecordHeader*>(base_); }
    [[nodiscard]] uint32_t* entries() const {
        return reinterpret_cast<uint32_t*>(static_cast<std::byte*>(base_) + kRecordHeaderBytes);
    }

    UniqueFd fd_;
    void* base_ = nullptr;
    uint64_t bytes_ = 0;
    uint64_t gfn_count_ = 0;
};

// The bytes a record for gfn_count gfns occupies (header + entries, page rounded).
[[nodiscard]] uint64_t record_bytes(uint64_t gfn_count);

// A DmaBackend that writes every map and unmap of the wrapped backend into a HostRecord, in the
// order described above. IOVA = GPA, so an extent's head gfn is iova >> 12. Everything else
// (info, entry counts, name) is the wrapped backend's; so are the counters that matter (this
// decorator's own counters() stay zero: read the inner backend's).
//
// Thread-safety: as the wrapped backend; callers never map or unmap the same head concurrently.
class RecordingBackend final : public DmaBackend {
public:
    // Both must outlive this object.
    RecordingBackend(DmaBackend& inner, HostRecord& record) : inner_(inner), record_(record) {}

    // Errors: EINVAL when the range is unaligned, wraps, is longer than kRecordMaxPages or lies
    // beyond the record (nothing is called); the wrapped backend's otherwise. The record is
    // updated for every outcome: Mapped -> Mapped, AlreadyMapped/NoSpace/Error -> free.
    [[nodiscard]] Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) override;
    // The entry at the head is Unmapping during the call, then free; Mapped again when the call
    // failed (the mapping is still there, and the engine keeps it as its own).
    [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t size) override;
    [[nodiscard]] Result<ContainerInfo> info() const override { return inner_.info(); }
    [[nodiscard]] uint64_t live_entries() const override { return inner_.live_entries(); }
    [[nodiscard]] uint64_t entry_limit() const override { return inner_.entry_limit(); }
    [[nodiscard]] std::string_view name() const override { return inner_.name(); }

private:
    [[nodiscard]] Status check(Iova iova, uint64_t size) const;

    DmaBackend& inner_;
    HostRecord& record_;
};

// What reconcile() did.
struct ReconcileReport {
    std::vector<RecordedExtent> adopted;  // Mapped entries: live in the backend, now the engine's
    uint64_t rolled_back = 0;             // Mapping/Unmapping entries whose range was unmapped
    uint64_t rolled_back_bytes = 0;       // bytes those unmaps removed (0 where the call never ran)
};

// What audit() found comparing a record with the mappings a backend holds.
struct RecordAudit {
    uint64_t mapped_extents = 0;  // Mapped entries
    uint64_t mapped_pages = 0;
    uint64_t in_progress = 0;  // Mapping/Unmapping entries (either answer of the backend is fine)
    uint64_t missing = 0;      // Mapped entries the backend does not hold exactly
    uint64_t orphans = 0;      // backend mappings no entry describes (a leak after a restart)
    [[nodiscard]] bool consistent() const { return missing == 0 && orphans == 0; }
};

struct LiveMapping {
    Iova iova{};
    uint64_t size = 0;
};

// Compares the record with `live`, the mappings the backend holds (IOVA = GPA): every Mapped entry
// must be one mapping of exactly its range, every mapping must be an entry's range (Mapped or in
// progress). Meaningful when nothing maps or unmaps meanwhile (the daemon is gone, or stopped).
// Errors: the validation's EINVAL (as extents()).
[[nodiscard]] Result<RecordAudit> audit(const HostRecord& record, std::span<const GfnRange> ram,
                                        std::span<const LiveMapping> live);

// After a restart: validates the record against the guest's RAM (`ram`), then settles every
// in-progress entry with one exact-range unmap of `backend` (not the recording wrapper) and frees
// it, and returns the Mapped extents for the engine to adopt.
// Errors: the validation's EINVAL (nothing was changed); the backend's unmap error (EINVAL when
// the range would bisect a mapping: the record lies about what is mapped).
[[nodiscard]] Result<ReconcileReport> reconcile(HostRecord& record, DmaBackend& backend, std::span<const GfnRange> ram);

}  // namespace coiommu::dma
