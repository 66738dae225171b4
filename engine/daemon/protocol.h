// The coiommud <-> VMM wire protocol, version 1 (engine/daemon/PROTOCOL.md is the prose spec).
//
// Transport: a Unix SOCK_SEQPACKET socket; one message = one datagram = a Header followed by
// `length` payload bytes; file descriptors ride along as one SCM_RIGHTS control message.
// Every integer is little-endian, fixed width, naturally aligned, with explicit padding (which
// must be zero). The VMM sends requests; the daemon answers each one, in order, with either the
// reply (type | kReplyBit, same seq) or an Error message (same seq).
//
// Order: Hello -> SetMemory -> SetTopology (or Resume) -> SetBackend -> SetTriggers (one or more,
// until every vCPU has its trigger) -> Running: MmioRead / MmioWrite / BalloonUnpin / GetStats /
// QueryMapped, any number, in any order -> Close. Resume (minor 2, kFeatureResume) takes the place
// of SetTopology when a VMM reconnects to a restarted daemon (PROTOCOL.md, "Resumable sessions"). A message out of this
// order, a malformed one, or one with the wrong number of fds gets an Error reply and the session is closed.
//
// Thread-safety: plain data and constexpr functions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

namespace coiommu::daemon::proto {

static_assert(std::endian::native == std::endian::little,
              "the wire structs are sent as they are in memory: little-endian hosts only");

inline constexpr uint32_t kMagic = 0x4d4f4943;  // bytes "CIOM"
inline constexpr uint16_t kVersion = 1;
// Additions within version 1 that change no existing layout (PROTOCOL.md, "Versioning"). The
// daemon reports its minor in HelloRep; a VMM uses an addition only when the minor and the
// feature bit say so. 1: the iommufd backend (SetBackend kind 4, kFeatureIommufdBackend).
// 2: resumable sessions (kFeatureResume: the host record fd in SetTopology's reply, Resume, a
// shared-state fd for the fake backend).
inline constexpr uint16_t kMinorVersion = 2;
// Bound on one datagram (header + payload). A bigger one is truncated by the kernel and refused.
inline constexpr std::size_t kMaxMessageSize = 64 * 1024;
// Bound on the fds of one message (the kernel's SCM_MAX_FD is 253).
inline constexpr std::size_t kMaxFdsPerMessage = 64;
inline constexpr uint32_t kMaxRegions = kMaxFdsPerMessage;  // memory regions per SetMemory
inline constexpr uint32_t kMaxBalloonRanges = 1024;         // ranges per BalloonUnpin
inline constexpr uint32_t kMaxMmioLen = 8;                  // bytes per BAR0 access
inline constexpr uint32_t kMaxErrorText = 1024;             // bytes of text in an Error
inline constexpr uint32_t kClientNameSize = 32;

enum class MsgType : uint16_t {
    Hello = 1,
    SetMemory = 2,
    SetTopology = 3,
    SetBackend = 4,
    SetTriggers = 5,
    MmioRead = 6,
    MmioWrite = 7,
    BalloonUnpin = 8,
    GetStats = 9,
    QueryMapped = 10,
    Close = 11,
    Resume = 12,     // minor 2
    Error = 0x7fff,  // daemon -> VMM only, instead of a reply
};
inline constexpr uint16_t kReplyBit = 0x8000;

[[nodiscard]] constexpr uint16_t reply_type(MsgType t) {
    return static_cast<uint16_t>(static_cast<uint16_t>(t) | kReplyBit);
}
// The request type for a raw header value, nullopt when unknown (replies and Error included).
[[nodiscard]] std::optional<MsgType> request_type(uint16_t raw);
[[nodiscard]] std::string_view to_string(MsgType t);

struct Header {
    uint32_t magic = kMagic;
    uint16_t version = kVersion;
    uint16_t type = 0;    // MsgType, | kReplyBit in replies
    uint32_t flags = 0;   // reserved, 0
    uint32_t length = 0;  // payload bytes after the header
    uint64_t seq = 0;     // chosen by the VMM, echoed by the reply
};
static_assert(sizeof(Header) == 24 && std::is_trivially_copyable_v<Header>);
inline constexpr std::size_t kMaxPayload = kMaxMessageSize - sizeof(Header);

// Feature bits (Hello). The daemon answers with the subset it offers.
inline constexpr uint64_t kFeatureVfioBackend = 1u << 0;
inline constexpr uint64_t kFeatureFakeBackend = 1u << 1;
inline constexpr uint64_t kFeatureNullBackend = 1u << 2;
inline constexpr uint64_t kFeatureQueryMapped = 1u << 3;     // QueryMapped (fake backend only)
inline constexpr uint64_t kFeatureIommufdBackend = 1u << 4;  // minor 1
inline constexpr uint64_t kAllFeatures =
    kFeatureVfioBackend | kFeatureFakeBackend | kFeatureNullBackend | kFeatureQueryMapped | kFeatureIommufdBackend;
// Minor 2: resumable sessions. Opt-in, outside kAllFeatures: a VMM that asks for it must keep the
// record fd and resume after a daemon restart, because a daemon shutdown then leaves its
// mappings in place (detach) instead of unmapping them.
inline constexpr uint64_t kFeatureResume = 1u << 5;

// --- Hello (0 fds) -------------------------------------------------------------------------------
struct HelloReq {
    uint16_t min_version = kVersion;
    uint16_t max_version = kVersion;
    uint32_t pad = 0;
    uint64_t features = 0;                // what the VMM would like to use
    char client_name[kClientNameSize]{};  // for logs, NUL-padded
};
static_assert(sizeof(HelloReq) == 48);

struct HelloRep {
    uint16_t version = kVersion;     // chosen
    uint16_t minor = kMinorVersion;  // 0 from daemons before minor versions existed (was padding)
    uint32_t max_message_size = kMaxMessageSize;
    uint64_t features = 0;  // offered (requested & supported & allowed by configuration)
    uint32_t max_fds = kMaxFdsPerMessage;
    uint32_t session_id = 0;
};
static_assert(sizeof(HelloRep) == 24);

// --- SetMemory (count fds: one memfd per region, in order) ---------------------------------------
struct MemRegionWire {
    uint64_t gpa = 0;        // page aligned
    uint64_t size = 0;       // page multiple, non-zero
    uint64_t fd_offset = 0;  // page aligned; where the region starts in its fd
};
static_assert(sizeof(MemRegionWire) == 24);
struct SetMemoryReq {
    uint32_t count = 0;  // 1..kMaxRegions
    uint32_t pad = 0;
    // followed by MemRegionWire[count]
};
static_assert(sizeof(SetMemoryReq) == 8);
// Reply: empty.

// --- SetTopology (0 fds) -------------------------------------------------------------------------
struct SetTopologyReq {
    uint32_t vcpus = 0;           // 1..1024
    uint16_t endpoint_count = 0;  // 1..4095
    uint16_t pad = 0;
    // followed by uint16_t bdf[endpoint_count] (bus << 8 | devfn)
};
static_assert(sizeof(SetTopologyReq) == 8);
// Reply: 2 fds, notifymap (map RW at BAR2) then topologymap (sealed; map RO at BAR4); with
// kFeatureResume a third, the host record (keep it, unmapped, for Resume; engine/dma/host_record.h).
struct SetTopologyRep {
    uint64_t notifymap_size = 0;
    uint64_t topologymap_size = 0;
};
static_assert(sizeof(SetTopologyRep) == 16);

// --- Resume (3 fds: the notifymap, the topologymap and the host record of the session being
// resumed, as SetTopology's reply gave them; only with kFeatureResume) ---------------------------
// Payload: SetTopologyReq (the same vCPUs and endpoints as the original SetTopology) + BDFs.
// The daemon validates the record against the guest memory of SetMemory (untrusted input), then
// continues as after SetTopology: SetBackend (the same container / IOAS / fake state), SetTriggers.
// When the last trigger arrives it settles the record's in-progress entries against the backend,
// adopts the mapped extents, restores the device registers and re-serves every vCPU's slot.
struct ResumeRep {
    uint64_t extents = 0;      // mapped extents in the record (adopted when the engine starts)
    uint64_t pages = 0;        // pages in those extents
    uint64_t in_progress = 0;  // entries a DMA call was under way for (settled when the engine starts)
    uint32_t active = 0;       // the device had accepted ACTIVATE
    uint32_t pad = 0;
};
static_assert(sizeof(ResumeRep) == 32);

// --- SetBackend (1 fd for vfio: the container, IOMMU type already set; 1 fd for iommufd: the
// iommufd, whose IOAS `param` names; fake: 0, or with kFeatureResume 1, the memfd that holds its
// mapping set so that it outlives the daemon like a container (FakeBackend::create_shared_state,
// its entry limit is the state's); null: 0) ------------------------------------------------------
enum class BackendKind : uint32_t { Vfio = 1, Fake = 2, Null = 3, Iommufd = 4 };
enum class FakeLatency : uint32_t { None = 0, Typical = 1 };
struct SetBackendReq {
    uint32_t kind = 0;         // BackendKind
    uint32_t param = 0;        // fake: FakeLatency; iommufd: the IOAS id (non-zero); else 0
    uint64_t entry_limit = 0;  // 0: default (fake/null 65535; vfio: the kernel's); iommufd: 0
};
static_assert(sizeof(SetBackendReq) == 16);
struct SetBackendRep {
    uint64_t entry_limit = 0;
    char name[16]{};  // "vfio", "iommufd", "fake", "null"
};
static_assert(sizeof(SetBackendRep) == 24);

// --- SetTriggers (count fds: eventfds for vCPUs first_vcpu .. first_vcpu+count-1) ----------------
struct SetTriggersReq {
    uint32_t first_vcpu = 0;  // must be the next vCPU without a trigger (sent in order)
    uint32_t count = 0;       // 1..kMaxFdsPerMessage
};
static_assert(sizeof(SetTriggersReq) == 8);
struct SetTriggersRep {
    uint32_t triggers_set = 0;  // vCPUs with a trigger so far
    uint32_t running = 0;       // 1 once every vCPU has one: the engine exists, BAR0 is served
};
static_assert(sizeof(SetTriggersRep) == 8);

// --- MmioRead / MmioWrite (0 fds): BAR0 accesses the VMM trapped ---------------------------------
struct MmioReadReq {
    uint64_t offset = 0;  // relative to BAR0
    uint32_t len = 0;     // 1..8
    uint32_t pad = 0;
};
static_assert(sizeof(MmioReadReq) == 16);
struct MmioReadRep {
    uint32_t len = 0;
    uint32_t pad = 0;
    uint8_t data[kMaxMmioLen]{};  // the device's answer (untouched bytes are 0)
};
static_assert(sizeof(MmioReadRep) == 16);
struct MmioWriteReq {
    uint64_t offset = 0;
    uint32_t len = 0;  // 1..8
    uint32_t pad = 0;
    uint8_t data[kMaxMmioLen]{};
};
static_assert(sizeof(MmioWriteReq) == 24);
// Reply: empty, sent once the device (and the engine, for ACTIVATE/PARK/UNPARK) has acted.

// --- BalloonUnpin (0 fds) ------------------------------------------------------------------------
struct GfnRangeWire {
    uint64_t start_gfn = 0;
    uint64_t count = 0;
};
static_assert(sizeof(GfnRangeWire) == 16);
struct BalloonReq {
    uint32_t count = 0;  // 0..kMaxBalloonRanges
    uint32_t pad = 0;
    // followed by GfnRangeWire[count]
};
static_assert(sizeof(BalloonReq) == 8);
struct BalloonRep {
    uint32_t result = 0;  // 0 Success (the balloon may release), 1 Failed (it must not)
    uint32_t pad = 0;
};
static_assert(sizeof(BalloonRep) == 8);

// --- GetStats (0 fds) ----------------------------------------------------------------------------
// Reply: StatsRepHead, then telemetry::ShardTotals (totals_bytes) and telemetry::GaugeValues
// (gauges_bytes) as they are in memory; a receiver whose sizes differ refuses the reply.
struct StatsRepHead {
    uint32_t totals_bytes = 0;
    uint32_t gauges_bytes = 0;
    uint64_t shards = 0;
    uint32_t active = 0;  // the device accepted ACTIVATE
    uint32_t park_count = 0;
    uint64_t backend_live_entries = 0;
    uint64_t backend_entry_limit = 0;
    uint64_t backend_map_calls = 0;
    uint64_t backend_unmap_calls = 0;
    uint64_t bad_mmio_accesses = 0;  // device counters
    uint64_t activate_refused = 0;
    uint64_t trigger_signalled = 0;
};
static_assert(sizeof(StatsRepHead) == 80);

// --- QueryMapped (0 fds; only with kFeatureQueryMapped and the fake backend) ---------------------
struct QueryMappedReq {
    uint64_t iova = 0;
    uint64_t size = 0;
};
static_assert(sizeof(QueryMappedReq) == 16);
struct QueryMappedRep {
    uint32_t mapped = 0;  // every byte of [iova, iova+size) is mapped in the session's backend
    uint32_t pad = 0;
};
static_assert(sizeof(QueryMappedRep) == 8);

// --- Close (0 fds) -------------------------------------------------------------------------------
// The daemon stops the engine (which unmaps everything it mapped), replies, and closes.
struct CloseRep {
    uint64_t dma_entries_after = 0;  // live mappings left in the backend (0 unless vfio was shared)
    uint64_t pages_unpinned = 0;     // pages the engine unmapped at teardown (still pinned at Close)
};
static_assert(sizeof(CloseRep) == 16);

// --- Error (0 fds; daemon -> VMM) ----------------------------------------------------------------
struct ErrorRep {
    int32_t code = 0;           // errno value
    uint16_t request_type = 0;  // the request's raw type (0 when it could not be read)
    uint16_t text_len = 0;      // <= kMaxErrorText
    // followed by text_len bytes of UTF-8 (no NUL)
};
static_assert(sizeof(ErrorRep) == 8);

// Every wire struct is copied with memcpy.
static_assert(std::is_trivially_copyable_v<HelloReq> && std::is_trivially_copyable_v<StatsRepHead> &&
              std::is_trivially_copyable_v<MmioWriteReq> && std::is_trivially_copyable_v<ErrorRep>);

}  // namespace coiommu::daemon::proto
