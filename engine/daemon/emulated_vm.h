// An emulated VM that drives a running coiommud exactly as a VMM with a CoIOMMU guest would:
// the VMM part (guest RAM memfd, SetMemory/SetTopology/SetBackend, per-vCPU trigger eventfds,
// BAR0 writes and balloon requests forwarded over the socket) and the guest part (the DTT and
// the guest driver of engine/emulator on N vCPU threads, running a mixed DMA workload).
//
// Workload: each vCPU maps buffers of 1..max_buffer_pages contiguous pages, 80% from a hot set
// (the first eighth of RAM: temporal locality, mostly already pinned) and 20% from a stream that
// moves through the rest of RAM (one 1 MiB chunk per 500 stream buffers: new pins, and pages the
// LRU unpinner gives back once the stream has passed), holds up to `outstanding` of them and
// unmaps the oldest (lazy unpinning: no notification). A balloon
// thread inflates one 1 MiB chunk at a time (BalloonUnpin, then deflates it a moment later);
// vCPUs never DMA into an inflated chunk, as a real guest never does.
//
// With CheckInvariant::Yes every successful map is followed by a QueryMapped of the buffer (the
// safety invariant: a page the guest was told is PINNED is mapped in the DMA backend); the
// session must use the fake backend.
//
// Used by `coiommud --demo` and the daemon tests. Thread-safety: start/stop/close from one
// thread; counters() from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/daemon/client.h"
#include "engine/emulator/guest_driver.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/histogram.h"

namespace coiommu::daemon {

enum class CheckInvariant : bool { No, Yes };

struct EmulatedVmOptions {
    std::string socket_path;
    std::string name = "emulated-vm";
    uint32_t vcpus = 4;
    uint64_t ram_bytes = uint64_t{512} << 20;  // >= 64 MiB, page multiple
    proto::BackendKind backend = proto::BackendKind::Fake;
    proto::FakeLatency latency = proto::FakeLatency::Typical;
    uint64_t entry_limit = 0;  // 0: the daemon's default
    uint32_t max_buffer_pages = 16;
    uint32_t outstanding = 16;
    uint32_t rate_per_vcpu = 0;                       // DMA maps per second per vCPU; 0 = as fast as possible
    std::chrono::milliseconds balloon_interval{250};  // 0: no balloon thread
    CheckInvariant check_invariant = CheckInvariant::No;
    uint64_t seed = 1;
    std::vector<uint16_t> endpoints{0x0008};  // 00:01.0
};

struct VmCounters {
    uint64_t maps = 0, map_failures = 0, unmaps = 0, unmap_failures = 0, pages_mapped = 0;
    uint64_t notifications = 0;
    uint64_t invariant_checks = 0, invariant_violations = 0, check_errors = 0;
    uint64_t balloon_success = 0, balloon_failed = 0, balloon_errors = 0;
    // Guest-visible latency of every map, and of the maps that sent a pin request (the round
    // trip through the daemon): log-linear, so percentiles are within 1/16, not powers of two.
    telemetry::LogLinearSnapshot map_latency_ns;
    telemetry::LogLinearSnapshot pin_map_latency_ns;
};

class EmulatedVm {
public:
    // Connects, sets the session up (memory, topology, backend, triggers), programs BAR0 as the
    // guest driver's probe does (dtt_root, dtt_level, ACTIVATE), checks the device went active
    // and starts the vCPU (and balloon) threads. Errors: EINVAL for bad options; the client's.
    [[nodiscard]] static Result<std::unique_ptr<EmulatedVm>> start(const EmulatedVmOptions& options);
    ~EmulatedVm();
    EmulatedVm(const EmulatedVm&) = delete;
    EmulatedVm& operator=(const EmulatedVm&) = delete;

    // Stops the threads; every vCPU unmaps what it still holds. Idempotent.
    void stop();
    // stop(), then the orderly Close (the daemon's engine unmaps everything).
    [[nodiscard]] Result<CloseInfo> close();

    [[nodiscard]] VmCounters counters() const;
    [[nodiscard]] Client& client() { return *client_; }
    [[nodiscard]] const BackendInfo& backend() const { return backend_; }

private:
    struct Shared;   // counters and chunk claims, shared with the threads
    struct Layout {  // where start() puts the data chunks, batch pages and the DTT pool
        uint64_t data_chunks = 0;
        uint64_t batch_stride = 0;
        uint64_t pool_pages = 0;
        Gpa batch_base{};
        Gpa pool_base{};
    };
    explicit EmulatedVm(const EmulatedVmOptions& o);
    [[nodiscard]] static Result<Layout> plan_layout(const EmulatedVmOptions& o);
    [[nodiscard]] Status connect_vmm();
    [[nodiscard]] Result<std::vector<emulator::VcpuDriver>> probe_guest(const Layout& l);
    [[nodiscard]] Status activate_device();
    void vcpu_loop(uint32_t index, emulator::VcpuDriver drv);
    void balloon_loop();

    EmulatedVmOptions opts_;
    GuestMemory mem_;
    std::unique_ptr<Client> client_;
    DeviceMemfds dev_;
    BackendInfo backend_;
    std::vector<EventFd> triggers_;
    std::vector<int> trigger_fds_;  // triggers_' fds, as the VMM and the guest driver borrow them
    std::unique_ptr<emulator::GuestDtt> dtt_;
    std::unique_ptr<emulator::GuestDriver> driver_;
    std::unique_ptr<Shared> shared_;
    uint64_t data_chunks_ = 0;
    std::atomic<bool> stop_{false};
    std::vector<std::thread> threads_;
    bool closed_ = false;
};

}  // namespace coiommu::daemon
