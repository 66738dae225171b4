// One VM's session: the daemon side of one VMM connection (protocol.h, PROTOCOL.md).
//
// State machine (anything else is a protocol violation: Error reply, then the session closes):
//
//   AwaitHello --Hello--> AwaitMemory --SetMemory--> AwaitTopology --SetTopology|Resume-->
//   AwaitBackend --SetBackend--> AwaitTriggers --SetTriggers (until every vCPU has one)--> Running
//   Running: MmioRead | MmioWrite | BalloonUnpin | GetStats | QueryMapped (any number) --Close--> Closed
//
// The session owns everything of its VM: the adopted guest memory (the VMM's memfds mapped here,
// so VFIO maps use this process's addresses), the DMA backend (the VMM's VFIO container, or a fake
// or null one), the CoiommuDevice (notifymap/topologymap memfds handed back to the VMM), the
// VMM's trigger eventfds and the workers::Engine. teardown() (on Close, end of stream, any
// protocol error, daemon shutdown, or destruction) stops the engine, which unmaps every page it
// mapped, and then releases the rest. Nothing is shared between sessions, so one VM's bad input
// or crashed VMM touches only its own session.
//
// Resumable sessions (kFeatureResume): the session also keeps a HostRecord (engine/dma/
// host_record.h) in a memfd handed to the VMM with SetTopology's reply, and the engine maps and
// unmaps through a RecordingBackend. The record also holds the device registers, saved after every
// register MmioWrite with that request's seq (a write the VMM re-sends after a reconnect is
// answered, not applied twice). Resume rebuilds a session from the VMM's fds; detach() is the
// shutdown that leaves every mapping to the next daemon.
//
// Guest memory must be memfds sealed with F_SEAL_SHRINK: a region the VMM could shrink under
// the daemon's mapping would turn a guest DMA pin into SIGBUS for every session.
//
// Thread-safety: handle() and teardown() from the session's thread only; stats() and state()
// from any thread (the server aggregates every session's statistics for the exporter).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/daemon/protocol.h"
#include "engine/daemon/protocol_io.h"
#include "engine/device/device.h"
#include "engine/dma/backend.h"
#include "engine/dma/host_record.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/config.h"
#include "engine/workers/engine.h"

namespace coiommu::daemon {

// What the daemon's configuration allows a session.
struct SessionPolicy {
    workers::EngineConfig engine;  // the engine every session runs (session id set per session)
    uint64_t features = proto::kAllFeatures | proto::kFeatureResume;  // offered in Hello
    uint64_t max_guest_end = uint64_t{1} << 40;  // highest GPA + 1 a VM may register (per-gfn tables)
};

enum class SessionState : uint8_t {
    AwaitHello,
    AwaitMemory,
    AwaitTopology,
    AwaitBackend,
    AwaitTriggers,
    Running,
    Closed,
};
[[nodiscard]] std::string_view to_string(SessionState s);

// What handle() wants sent back.
struct Reply {
    uint16_t type = 0;  // reply_type(request) or MsgType::Error
    std::vector<std::byte> payload;
    std::vector<int> fds;      // borrowed from the session: valid until the next handle()/teardown()
    bool close_after = false;  // close the session once the reply is sent
};

// Statistics of one session (GetStats), also what the server aggregates.
struct SessionStats {
    telemetry::StatsSnapshot snapshot;
    proto::StatsRepHead head;
};

class Session {
public:
    // `resumes`, when given, counts the resumes this session completes (its engine runs again on
    // an adopted record); it must outlive the session.
    Session(uint32_t id, SessionPolicy policy, std::atomic<uint64_t>* resumes = nullptr);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Handles one received message (its fds are consumed: adopted or closed). Never fails: every
    // problem becomes an Error reply (and close_after for protocol violations and failed setup).
    [[nodiscard]] Reply handle(Message& msg);

    // Stops the engine (unmapping everything it mapped) and releases the VM's resources.
    // Idempotent. Returns the pages the engine had pinned when it stopped.
    uint64_t teardown();
    // Daemon shutdown of a resumable session: stops the engine's threads and releases the VM's
    // resources but leaves every mapping in the backend and in the record, for a daemon the VMM
    // resumes with. A session without a record is torn down instead. Returns the pages left.
    uint64_t detach();
    [[nodiscard]] bool resumable() const { return record_ != nullptr; }

    // nullopt unless Running.
    [[nodiscard]] std::optional<SessionStats> stats() const;
    // The engine's totals when it was torn down (zero before), including the unmaps of teardown.
    [[nodiscard]] telemetry::ShardTotals final_totals() const;
    [[nodiscard]] SessionState state() const { return state_.load(std::memory_order_acquire); }
    [[nodiscard]] uint32_t id() const { return id_; }
    [[nodiscard]] const std::string& client_name() const { return client_name_; }

private:
    Reply on_hello(const Message& m);
    Reply on_set_memory(Message& m);
    Reply on_set_topology(const Message& m);
    Reply on_resume(Message& m);
    Reply on_set_backend(Message& m);
    Reply on_set_triggers(Message& m);
    Reply on_mmio_read(const Message& m);
    Reply on_mmio_write(const Message& m);
    // After a register write: the device's registers and the request's seq into the record.
    void save_device(uint64_t seq);
    // A resumed session, when its last trigger arrived: settle and hand the record to the engine.
    [[nodiscard]] Status resume_engine();
    Reply on_balloon(const Message& m);
    Reply on_stats(const Message& m);
    Reply on_query_mapped(const Message& m);
    Reply on_close(const Message& m);

    [[nodiscard]] Status start_engine();
    enum class Mappings : uint8_t { Unmap, Keep };
    // teardown() / detach(), also reporting the backend's live entries after the engine stopped.
    uint64_t release(Mappings how, uint64_t* live_after);
    [[nodiscard]] dma::DmaBackend& engine_backend() {
        return recording_ ? static_cast<dma::DmaBackend&>(*recording_) : *backend_;
    }
    [[nodiscard]] std::optional<SessionStats> stats_locked() const;
    void set_state(SessionState s) { state_.store(s, std::memory_order_release); }

    const uint32_t id_;
    const SessionPolicy policy_;
    std::atomic<uint64_t>* const resumes_;
    std::string client_name_;
    uint64_t features_ = 0;
    std::atomic<SessionState> state_{SessionState::AwaitHello};

    // The VM's resources, in construction order (destroyed in reverse by teardown()).
    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<device::CoiommuDevice> device_;
    std::unique_ptr<dma::DmaBackend> backend_;
    dma::DmaBackend* fake_ = nullptr;                   // backend_ when it can answer QueryMapped
    std::vector<EventFd> triggers_;                     // the VMM's ioeventfds, one per vCPU
    std::unique_ptr<dma::HostRecord> record_;           // with kFeatureResume
    std::unique_ptr<dma::RecordingBackend> recording_;  // backend_ seen through record_
    bool resumed_ = false;                              // built by Resume, not SetTopology

    mutable std::mutex engine_mu_;  // guards engine_ against stats() from other threads
    std::unique_ptr<workers::Engine> engine_;
    telemetry::ShardTotals final_totals_{};  // guarded by engine_mu_
};

// Limits of the I/O loop.
struct SessionLimits {
    // The VMM must reach Running within this time (a silent or slow peer cannot hold a session
    // slot and its fds forever).
    std::chrono::milliseconds setup_timeout{10'000};
    // A reply that cannot be sent within this time (the VMM does not read) closes the session.
    std::chrono::milliseconds io_timeout{5'000};
};

// Why serve() returned.
enum class SessionEnd : uint8_t { Closed, PeerGone, ProtocolError, SetupTimeout, IoError, Stopped };
[[nodiscard]] std::string_view to_string(SessionEnd e);

// Runs `session` over the connected SOCK_SEQPACKET socket `sock` until Close, end of stream, a
// protocol error, a timeout, or `stop_fd` becoming readable; then tears the session down (on
// `stop_fd`, a resumable session is detached instead: its VMM resumes it with the next daemon).
SessionEnd serve(Session& session, int sock, int stop_fd, const SessionLimits& limits);

}  // namespace coiommu::daemon
