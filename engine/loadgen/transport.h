// VmLink: the seam between the emulated VM (guest driver, vCPU threads) and whoever serves its
// CoIOMMU device. The load generator's guest side talks to the host side only through this
// interface and through the shared memory and fds it hands out, exactly what a VMM hands a guest:
//
//   notifymap_fd()       the BAR2 notify slots (the guest maps it RW)
//   topologymap_fd()     the BAR4 endpoint list (the guest reads its BDFs there)
//   trigger_fd(vcpu)     the per-vCPU trigger eventfds (KVM ioeventfds on BAR0 + 0x18 + vcpu)
//   mmio_read/mmio_write trapped BAR0 accesses (dtt_root, dtt_level, cmd)
//   balloon_unpin()      the balloon device's unpin request (ranges -> Success / Failed)
//   stats()              the engine's telemetry snapshot
//
// InProcessLink (in_process_link.h) builds the device model and the Engine in this process.
// SocketLink (socket_link.h, `--connect SOCKET`) drives a running coiommud through the same
// interface; the run driver then reads the backend figures from the daemon's statistics. Guest memory is created by
// the load generator and handed to the link (in-process by reference, over a socket as memfds).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "engine/base/result.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/workers/pin_engine.h"

namespace coiommu::loadgen {

class VmLink {
public:
    virtual ~VmLink() = default;

    [[nodiscard]] virtual uint32_t vcpus() const = 0;
    // Borrowed fds, valid while the link lives.
    [[nodiscard]] virtual int notifymap_fd() const = 0;
    // This process's own mapping of the notify slots when the device lives in this process, for
    // the guest to share (as a VM's vCPUs and the device share the same host pages); empty when
    // the guest must map notifymap_fd() itself. Valid while the link lives.
    [[nodiscard]] virtual std::span<uint64_t> notify_slots() const { return {}; }
    [[nodiscard]] virtual int topologymap_fd() const = 0;
    // Precondition: vcpu < vcpus().
    [[nodiscard]] virtual int trigger_fd(uint32_t vcpu) const = 0;

    // A guest access to BAR0. Errors: the transport's (an in-process link never fails).
    [[nodiscard]] virtual Status mmio_write(uint64_t offset, std::span<const std::byte> data) = 0;
    [[nodiscard]] virtual Status mmio_read(uint64_t offset, std::span<std::byte> data) = 0;
    // Whether the device accepted ACTIVATE (the engine runs). Errors: the transport's.
    [[nodiscard]] virtual Result<bool> active() = 0;

    // Force-unpins the ranges (balloon inflation). Errors: the engine's (EAGAIN when not active,
    // ECANCELED when stopping) or the transport's.
    [[nodiscard]] virtual Result<telemetry::BalloonResult> balloon_unpin(std::span<const workers::GfnRange> ranges) = 0;
    // The engine's statistics now. Errors: the transport's.
    [[nodiscard]] virtual Result<telemetry::StatsSnapshot> stats() = 0;
    // "variant=fast,workers=1,..." of the serving engine, for reports.
    [[nodiscard]] virtual std::string engine_description() const = 0;
    // True once whatever serves this link is gone for good (a socket link: the daemon's end of the
    // connection failed); nullptr for links that cannot lose their host. Read with relaxed loads.
    [[nodiscard]] virtual const std::atomic<bool>* lost_flag() const { return nullptr; }

    // Stops serving: the engine stops and unmaps everything it mapped (in-process), or the
    // session closes (socket). Idempotent.
    virtual void shutdown() = 0;
};

}  // namespace coiommu::loadgen
