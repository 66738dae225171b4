// ViommuQueue: the request path of a virtio-iommu in strict mode, as the load generator emulates
// it. Each vCPU posts its MAP / UNMAP request (the wire bytes) in its own mailbox, kicks the
// device (one eventfd: the virtqueue notification, a VM exit on real hardware) and spins until
// the device has written the reply; one device thread (crosvm's virtio-iommu worker) blocks on
// the kick, serves every posted mailbox through ViommuDevice::handle() and marks it done.
//
// So every strict DMA map and unmap pays what the CoIOMMU paper charges vIOMMU with: a
// notification, a wake of the device thread, the request decoding and the container's map/unmap,
// serialised on one queue.
//
// Thread-safety: submit() from any number of threads, each with its own `vcpu` index (one request
// in flight per mailbox); stop() from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/base/result.h"
#include "engine/telemetry/counters.h"
#include "engine/viommu/viommu_device.h"

namespace coiommu::loadgen {

class ViommuQueue {
public:
    static constexpr std::size_t kMaxRequestBytes = 128;

    // Starts the device thread. `dev` is borrowed and must outlive the queue.
    // Errors: EINVAL for 0 vcpus; eventfd/thread creation errors.
    [[nodiscard]] static Result<std::unique_ptr<ViommuQueue>> start(viommu::ViommuDevice& dev, uint32_t vcpus,
                                                                    std::chrono::nanoseconds timeout);
    ~ViommuQueue();
    ViommuQueue(const ViommuQueue&) = delete;
    ViommuQueue& operator=(const ViommuQueue&) = delete;

    // Sends `request` (head + body) from `vcpu`'s mailbox and waits for the reply. Returns the
    // tail's status byte (wire::kStatus*). Errors: EINVAL for a bad vcpu or an oversized request;
    // ViommuDevice::handle()'s errors (the request completed with used length 0); ETIMEDOUT when
    // the device did not answer within the timeout (the mailbox stays busy: later submits from
    // this vCPU fail with EBUSY); ECANCELED after stop().
    [[nodiscard]] Result<uint8_t> submit(uint32_t vcpu, std::span<const std::byte> request);

    // Stops and joins the device thread. Idempotent.
    void stop();

    [[nodiscard]] uint64_t kicks() const { return kicks_.load(); }
    [[nodiscard]] uint64_t wakeups() const { return wakeups_.load(); }

private:
    enum State : uint32_t { kIdle = 0, kPosted = 1, kDone = 2 };
    struct alignas(64) Mailbox {
        std::atomic<uint32_t> state{kIdle};
        uint32_t request_len = 0;
        std::array<std::byte, kMaxRequestBytes> request{};
        std::array<std::byte, 8> writable{};
        int error = 0;       // handle()'s errno (0: replied)
        uint8_t status = 0;  // the tail's status when error == 0
    };

    ViommuQueue(viommu::ViommuDevice& dev, uint32_t vcpus, std::chrono::nanoseconds timeout, EventFd kick);
    void run();
    void serve(Mailbox& m);

    viommu::ViommuDevice& dev_;
    std::vector<Mailbox> mailboxes_;
    const std::chrono::nanoseconds timeout_;
    EventFd kick_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
    telemetry::Counter kicks_;
    telemetry::Counter wakeups_;
};

}  // namespace coiommu::loadgen
