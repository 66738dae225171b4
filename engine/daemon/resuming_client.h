// ResumingClient: a VMM's session with coiommud that survives the daemon. It sets the session up
// once (Hello, SetMemory, SetTopology, SetBackend, SetTriggers) and, when the connection is lost
// (EPIPE, ECONNRESET, ENOTCONN, end of stream: the daemon died or was restarted), reconnects with
// exponential backoff and resumes (Hello with kFeatureResume, SetMemory, Resume, SetBackend,
// SetTriggers: PROTOCOL.md, "Resumable sessions"), then re-sends the request that failed. The
// guest never sees the restart: its notifymap, its trigger eventfds and the container stay the
// VMM's, and the daemon keeps every pin.
//
//   SessionSpec spec{.socket_path = "/run/coiommu/coiommud.sock", .regions = ..., .vcpus = 4,
//                    .endpoints = {0x08}, .backend = BackendChoice::vfio(container_fd),
//                    .triggers = ioeventfds};
//   auto s = ResumingClient::start(std::move(spec), ReconnectPolicy{});   // reconnecting by default
//   map s->device().notifymap at BAR2; forward BAR0 traps to s->mmio_write(...)
//   ...
//   s->close();
//
// Requests re-sent after a resume: a register MmioWrite keeps its seq, so the daemon applies it
// at most once; trigger writes, BalloonUnpin, GetStats and QueryMapped are safe to repeat; Close
// on a resumed session closes it. A request whose failure is not a lost connection is returned
// as is (the daemon's Error).
//
// Lifetime: every fd in SessionSpec is borrowed and must stay open while the client lives (the
// memfds, the container or iommufd, the fake shared state, the trigger eventfds): they are handed
// over again on every resume. device() is the VMM's from start() on.
//
// Noticing the loss: a request that fails with a lost connection, or - with reconnect On - a
// watcher thread that polls the connection for the daemon's hang-up (POLLRDHUP) between requests.
// The guest's requests do not go through the socket (they are notify slots and eventfds), so a
// VMM whose daemon died while nothing was asked of it would otherwise never resume, and a vCPU
// would spin on its slot; the watcher resumes at once and the new daemon serves the slot.
//
// Thread-safety: every method may be called from any thread. Requests are serialised per
// connection; when one fails because the connection is lost, one caller (or the watcher)
// reconnects while the others wait for it, then all re-send on the new connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/daemon/client.h"

namespace coiommu::daemon {

// The backend the session asks for, again on every resume.
struct BackendChoice {
    proto::BackendKind kind = proto::BackendKind::Fake;
    FakeBackendSpec fake;      // kind Fake; with reconnecting, fake.shared_state is required
    int fd = -1;               // Vfio: the container; Iommufd: the iommufd (borrowed; a dup is sent)
    uint32_t ioas_id = 0;      // Iommufd
    uint64_t entry_limit = 0;  // Vfio, Null: 0 = the daemon's default
};

struct SessionSpec {
    std::string socket_path;
    std::string name = "coiommu-client";
    // kFeatureResume is added when reconnecting, and for a fake backend with a shared state.
    uint64_t features = proto::kAllFeatures;
    std::vector<RegionLayout> regions;  // the guest RAM memfds (borrowed)
    uint32_t vcpus = 1;
    std::vector<uint16_t> endpoints;
    BackendChoice backend;
    std::vector<int> triggers;  // one eventfd per vCPU (borrowed)
};

enum class Reconnect : uint8_t { Off, On };

struct ReconnectPolicy {
    Reconnect reconnect = Reconnect::On;
    std::chrono::milliseconds first_delay{10};  // before the second attempt; doubled each time
    std::chrono::milliseconds max_delay{500};
    // Attempts stop when the daemon has not been back for this long; the request fails then.
    std::chrono::milliseconds give_up_after{30'000};
    // Called once per lost connection, before the first attempt to resume (the daemon is gone, so
    // nothing changes the container or the record until a new daemon resumes): what a VMM logs,
    // and where a test checks the record against the container. Called on the thread that
    // reconnects, with no lock of the client held.
    std::function<void(const Error& why)> on_lost;
    // Called after each successful resume with the daemon's ResumeRep.
    std::function<void(const ResumeInfo&)> on_resumed;
};

class ResumingClient {
public:
    // Connects and sets the session up. Errors: Client's; EINVAL for no vCPUs, a trigger count
    // that is not `vcpus`, a reconnecting fake backend without shared_state (its mappings would die
    // with the daemon); ENOTSUP when reconnecting and the daemon does not offer kFeatureResume;
    // EPROTO when the daemon does not run the engine after SetTriggers.
    [[nodiscard]] static Result<std::unique_ptr<ResumingClient>> start(SessionSpec spec, ReconnectPolicy policy);
    ~ResumingClient();
    ResumingClient(const ResumingClient&) = delete;
    ResumingClient& operator=(const ResumingClient&) = delete;

    // The notifymap, topologymap and host record SetTopology returned (the same after resumes).
    [[nodiscard]] const DeviceMemfds& device() const { return dev_; }
    [[nodiscard]] const SessionSpec& spec() const { return spec_; }
    [[nodiscard]] HelloInfo hello_info() const;
    [[nodiscard]] BackendInfo backend_info() const;
    [[nodiscard]] uint64_t resumes() const;
    // The daemon's ResumeRep of the latest resume (nullopt before the first).
    [[nodiscard]] std::optional<ResumeInfo> last_resume() const;
    // Closed, disconnected, or lost for good (reconnect Off, or resuming gave up): every request
    // fails from now on.
    [[nodiscard]] bool ended() const;

    [[nodiscard]] Status mmio_write(uint64_t offset, std::span<const std::byte> data);
    [[nodiscard]] Status mmio_read(uint64_t offset, std::span<std::byte> data);
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const GfnRange> ranges);
    [[nodiscard]] Result<RemoteStats> stats();
    [[nodiscard]] Result<bool> query_mapped(Iova iova, uint64_t size);
    // Orderly close (the daemon unmaps everything); no reconnect afterwards. Errors: as a request.
    [[nodiscard]] Result<CloseInfo> close();
    // Drops the connection without Close, as a VMM that died would: the daemon tears the session
    // down. No reconnect afterwards; later requests fail with EPIPE. Idempotent.
    void disconnect();

    // Whether `code` says the connection to the daemon is gone.
    [[nodiscard]] static bool connection_lost(int code);
    // Whether an attempt to connect and resume that failed with `code` is worth repeating: the
    // daemon is not back yet (no socket, refused, busy, out of fds) or went away again.
    [[nodiscard]] static bool worth_retrying(int code);

private:
    ResumingClient(SessionSpec spec, ReconnectPolicy policy) : spec_(std::move(spec)), policy_(std::move(policy)) {}
    [[nodiscard]] Status set_up();
    [[nodiscard]] Result<std::shared_ptr<Client>> connect_and_resume(uint64_t first_seq);
    [[nodiscard]] Result<BackendInfo> choose_backend(Client& c) const;
    [[nodiscard]] Result<bool> hand_over_triggers(Client& c) const;
    // The connection to use and its generation; EPIPE once closed or given up.
    [[nodiscard]] Result<std::pair<std::shared_ptr<Client>, uint64_t>> current() const;
    // After a request on generation `gen` failed with a lost connection: resumes on a new one
    // unless another thread already has. Errors: the last attempt's when giving up.
    [[nodiscard]] Status recover(uint64_t gen, const Error& why);
    // The watcher thread's body: polls the current connection for a hang-up, recovers.
    void watch_connection();
    template <class F>
    auto with_retry(F&& f) -> decltype(f(std::declval<Client&>()));

    SessionSpec spec_;
    ReconnectPolicy policy_;
    DeviceMemfds dev_;

    mutable std::mutex mu_;  // guards the fields below
    std::shared_ptr<Client> client_;
    uint64_t gen_ = 0;  // bumped by every resume
    uint64_t resumes_ = 0;
    std::optional<ResumeInfo> last_resume_;
    BackendInfo backend_;
    std::optional<Error> ended_;  // closed, disconnected or given up: every request fails with it
    bool closing_ = false;        // Close sent: the daemon's hang-up after it is no loss
    std::mutex recover_mu_;       // one reconnecting thread at a time
    EventFd stop_watch_;          // wakes the watcher to end it
    std::thread watcher_;         // reconnect On only
};

}  // namespace coiommu::daemon
