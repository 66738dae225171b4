// The VMM side of the coiommud protocol (protocol.h, PROTOCOL.md) as a small C++ library: what a
// VMM (or the load generator's --connect transport, or a test) links to drive a running daemon.
//
//   auto c = Client::connect("/run/coiommu/coiommud.sock", "my-vmm");       // + Hello
//   c->set_memory(mem);                                                      // memfds + GPAs
//   auto dev = c->set_topology(vcpus, bdfs);                                 // -> notifymap/topologymap
//   c->set_backend_vfio(std::move(container));  // or set_backend_fake({...})
//   c->set_triggers(trigger_fds);                                            // -> Running
//   ... forward BAR0 traps: c->mmio_write(off, bytes) / c->mmio_read(off, bytes)
//   ... balloon: c->balloon_unpin(ranges)   stats: c->stats()
//   c->close();                                                              // engine unmaps all
//
// Every call is one request and its reply (synchronous). An Error reply from the daemon becomes
// an Error with the daemon's errno and text ("coiommud: ..."); the daemon closes the session
// after protocol errors, so later calls fail with EPIPE/ECONNRESET.
//
// Thread-safety: every method may be called from any thread; calls are serialised (one request
// in flight per connection).
//
// This is the one implementation of the VMM side: the C ABI for VMMs in other languages
// (libcoiommu-client.so, engine/client/) is a thin layer over this class.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/domain.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/daemon/protocol.h"
#include "engine/daemon/protocol_io.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"

namespace coiommu::daemon {

struct HelloInfo {
    uint16_t version = 0;
    uint16_t minor = 0;  // proto::kMinorVersion of the daemon (0: before minor versions)
    uint64_t features = 0;
    uint32_t session_id = 0;
    uint32_t max_message_size = 0;
};

struct DeviceMemfds {
    UniqueFd notifymap;    // map RW at BAR2
    UniqueFd topologymap;  // sealed; map RO at BAR4
    UniqueFd record;       // with kFeatureResume: the host record; keep it for resume()
};

// What the daemon found in the record of a resumed session (proto::ResumeRep).
struct ResumeInfo {
    uint64_t extents = 0;
    uint64_t pages = 0;
    uint64_t in_progress = 0;
    bool active = false;
};

struct BackendInfo {
    std::string name;
    uint64_t entry_limit = 0;
};

struct FakeBackendSpec {
    proto::FakeLatency latency = proto::FakeLatency::None;
    uint64_t entry_limit = 0;  // 0: the daemon's default (65535); must be 0 with shared_state
    // With kFeatureResume: a memfd from dma::FakeBackend::create_shared_state (borrowed for the
    // call) that holds the fake's mappings, so they outlive the daemon as a container's do. -1: none.
    int shared_state = -1;
};

struct RemoteStats {
    telemetry::StatsSnapshot snapshot;
    proto::StatsRepHead head;
};

struct CloseInfo {
    uint64_t dma_entries_after = 0;
    uint64_t pages_unpinned = 0;
};

// A request's seq, taken before the request is sent (Client::reserve_seq).
struct RequestSeq {
    uint64_t value = 0;
};

class Client {
public:
    // Connects (SOCK_SEQPACKET) and says Hello asking for `features`.
    // Errors: connect's errno; the daemon's Error (EPROTONOSUPPORT, EBUSY when it serves its
    // maximum of sessions, EACCES when this uid is not allowed).
    [[nodiscard]] static Result<std::unique_ptr<Client>> connect(const std::string& socket_path,
                                                                 std::string_view name = "coiommu-client",
                                                                 uint64_t features = proto::kAllFeatures);
    // Wraps an already connected socket without saying Hello (tests of raw protocol handling).
    [[nodiscard]] static std::unique_ptr<Client> adopt(UniqueFd sock);

    [[nodiscard]] const HelloInfo& hello_info() const { return hello_; }
    [[nodiscard]] Result<HelloInfo> hello(std::string_view name, uint64_t features);

    // Every region of `mem` with its memfd (memfds created by GuestMemory::create are sealed
    // against shrinking, as the daemon requires).
    [[nodiscard]] Status set_memory(const GuestMemory& mem);
    // The same from plain descriptors (a VMM that owns its RAM, the C ABI): each fd is borrowed for
    // the call and must be a memfd sealed with F_SEAL_SHRINK. Errors: EINVAL for 0 or more than
    // kMaxRegions regions; the daemon's Error (EINVAL for an unsealed memfd, overlap, misalignment).
    [[nodiscard]] Status set_memory(std::span<const RegionLayout> regions);
    [[nodiscard]] Result<DeviceMemfds> set_topology(uint32_t vcpus, std::span<const uint16_t> endpoints);
    // Resume (kFeatureResume) in place of set_topology, on a new connection to a restarted daemon,
    // after hello() and set_memory() of the same guest: the same vCPUs and endpoints, and the
    // three fds set_topology returned (borrowed for the call). Then set_backend_* with the same
    // container (or fake state) and set_triggers with the same eventfds. Errors: ENOTSUP when the
    // daemon does not offer kFeatureResume; the daemon's Error (EINVAL: the record or the device
    // memfds do not match this guest).
    [[nodiscard]] Result<ResumeInfo> resume(uint32_t vcpus, std::span<const uint16_t> endpoints, int notifymap,
                                            int topologymap, int record);
    [[nodiscard]] Result<BackendInfo> set_backend_fake(const FakeBackendSpec& spec);
    [[nodiscard]] Result<BackendInfo> set_backend_null(uint64_t entry_limit = 0);
    // `container` is a VFIO container with its groups attached and its IOMMU type set.
    [[nodiscard]] Result<BackendInfo> set_backend_vfio(UniqueFd container, uint64_t entry_limit = 0);
    // `iommufd` is the VMM's /dev/iommu fd and `ioas_id` an IOAS in it with the devices attached
    // (protocol 1.1). Errors: ENOTSUP when the daemon does not offer kFeatureIommufdBackend (an
    // older daemon, or --backends without iommufd); the daemon's Error (ENOENT: no such IOAS).
    [[nodiscard]] Result<BackendInfo> set_backend_iommufd(UniqueFd iommufd, uint32_t ioas_id);
    // Sends the per-vCPU trigger eventfds (in chunks of kMaxFdsPerMessage). Returns whether the
    // daemon is now running the engine (true once every vCPU has its trigger).
    [[nodiscard]] Result<bool> set_triggers(std::span<const int> eventfds);

    [[nodiscard]] Status mmio_write(uint64_t offset, std::span<const std::byte> data);
    // The same with a seq taken earlier (reserve_seq): a VMM that re-sends a register write after
    // a resume sends it with its first seq, so the daemon applies it at most once (PROTOCOL.md,
    // "Resumable sessions").
    [[nodiscard]] Status mmio_write(RequestSeq seq, uint64_t offset, std::span<const std::byte> data);
    [[nodiscard]] Status mmio_read(uint64_t offset, std::span<std::byte> data);
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges);
    // Errors: EPROTO when the daemon's statistics layout differs from this build's.
    [[nodiscard]] Result<RemoteStats> stats();
    // Whether [iova, iova+size) is mapped in the session's backend (fake only).
    [[nodiscard]] Result<bool> query_mapped(Iova iova, uint64_t size);
    // Orderly close: the daemon stops the engine (unmapping everything) and answers.
    [[nodiscard]] Result<CloseInfo> close();

    // One raw request and its reply (for tests and extensions). An Error reply is an Error.
    [[nodiscard]] Result<Message> call(proto::MsgType type, std::span<const std::byte> payload,
                                       std::span<const int> fds = {});
    // Sends raw bytes as one datagram (tests of malformed input).
    [[nodiscard]] Status send_raw(std::span<const std::byte> datagram, std::span<const int> fds = {});
    // Receives one datagram (tests). nullopt at end of stream.
    [[nodiscard]] Result<std::optional<Message>> receive();

    [[nodiscard]] int fd() const { return sock_.get(); }
    void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

    // Request numbering. A resumed session carries on the numbering of the connection it
    // replaces: set_next_seq() on the new connection before its Hello.
    [[nodiscard]] uint64_t next_seq();
    void set_next_seq(uint64_t seq);
    // Takes the next seq for a request sent later with it (mmio_write(RequestSeq, ...)).
    [[nodiscard]] RequestSeq reserve_seq();

private:
    explicit Client(UniqueFd sock) : sock_(std::move(sock)) {}
    [[nodiscard]] Result<Message> call_locked(proto::MsgType type, uint64_t seq, std::span<const std::byte> payload,
                                              std::span<const int> fds);
    [[nodiscard]] Result<BackendInfo> set_backend(const proto::SetBackendReq& req, std::span<const int> fds);

    std::mutex mu_;
    UniqueFd sock_;
    uint64_t next_seq_ = 1;
    HelloInfo hello_;
    std::vector<std::byte> buf_;
    std::chrono::milliseconds timeout_{30'000};
};

// Connects a SOCK_SEQPACKET socket to `path`. Errors: socket/connect errno (ENAMETOOLONG for a
// path longer than sun_path).
[[nodiscard]] Result<UniqueFd> connect_seqpacket(const std::string& path);

}  // namespace coiommu::daemon
