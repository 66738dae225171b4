// ViommuQueue: the request path of a virtio-iommu in strict mode, as the load generator emulates
// it. Each vCPU posts its MAP / UNMAP requests (the wire bytes) in its own mailbox, kicks the
// device (one eventfd: the virtqueue notification, a VM exit on real hardware) and spins until
// the device has written every reply; one device thread (crosvm's virtio-iommu worker) blocks on
// the kick and then drains: it serves every posted mailbox through ViommuDevice::handle(), and
// scans again until a whole pass finds nothing posted, so requests posted while it was serving
// are taken in the same wake.
//
// A mailbox holds a batch of up to kMaxBatch requests posted with one kick, served in order as a
// virtqueue's available ring is: a guest that queues several requests before it notifies (a
// Linux >= 6.8 guest queues many MAP/UNMAP requests before one kick) pays one notification.
//
// So every strict DMA map and unmap pays what the CoIOMMU paper charges vIOMMU with: a
// notification, a wake of the device thread, the request decoding and the container's map/unmap,
// serialised on one queue.
//
// Thread-safety: submit() / submit_batch() from any number of threads, each with its own `vcpu`
// index (one batch in flight per mailbox); stop() and the counters from any thread.
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
    static constexpr std::size_t kMaxBatch = 16;  // requests one mailbox holds (one kick)

    // How the device completed one request of a batch.
    struct Completion {
        int error = 0;       // 0: the device wrote a tail; else handle()'s errno (used length 0)
        uint8_t status = 0;  // the tail's status (wire::kStatus*) when error == 0
    };

    // Starts the device thread. `dev` is borrowed and must outlive the queue.
    // Errors: EINVAL for 0 vcpus; eventfd/thread creation errors.
    [[nodiscard]] static Result<std::unique_ptr<ViommuQueue>> start(viommu::ViommuDevice& dev, uint32_t vcpus,
                                                                    std::chrono::nanoseconds timeout);
    ~ViommuQueue();
    ViommuQueue(const ViommuQueue&) = delete;
    ViommuQueue& operator=(const ViommuQueue&) = delete;

    // Sends `request` (head + body) from `vcpu`'s mailbox and waits for the reply: a batch of one.
    // Returns the tail's status byte (wire::kStatus*). Errors: submit_batch()'s, and the request's
    // Completion::error (ViommuDevice::handle()'s errno: the request completed with used length 0).
    [[nodiscard]] Result<uint8_t> submit(uint32_t vcpu, std::span<const std::byte> request);

    // Posts `requests` (each head + body) in `vcpu`'s mailbox, kicks once and waits until the
    // device has served them all, in order; completions[i] is how requests[i] ended. A request
    // that fails or answers a non-OK status does not stop the ones after it.
    // Errors (then no completion is meaningful): EINVAL for a bad vcpu, an empty batch or one of
    // more than kMaxBatch requests, a request over kMaxRequestBytes, or fewer completions than
    // requests (nothing is posted); ETIMEDOUT when the device did not serve the batch within the
    // timeout (the mailbox stays busy: later submits from this vCPU fail with EBUSY); ECANCELED
    // after stop(); the kick's write error (nothing stays posted).
    [[nodiscard]] Status submit_batch(uint32_t vcpu, std::span<const std::span<const std::byte>> requests,
                                      std::span<Completion> completions);

    // Stops and joins the device thread. Idempotent.
    void stop();

    // Successful kicks (one per batch), returns of the device's wait on the kick (a wake may
    // find nothing: the kick of a batch an earlier drain already served), requests served.
    [[nodiscard]] uint64_t kicks() const { return kicks_.load(); }
    [[nodiscard]] uint64_t wakeups() const { return wakeups_.load(); }
    [[nodiscard]] uint64_t served() const { return served_.load(); }

private:
    enum State : uint32_t { kIdle = 0, kPosted = 1, kServing = 2, kDone = 3 };
    struct Slot {
        uint32_t len = 0;
        std::array<std::byte, kMaxRequestBytes> request{};
        Completion completion{};
    };
    struct alignas(64) Mailbox {
        std::atomic<uint32_t> state{kIdle};
        uint32_t count = 0;  // slots posted
        std::array<Slot, kMaxBatch> slots{};
    };

    ViommuQueue(viommu::ViommuDevice& dev, uint32_t vcpus, std::chrono::nanoseconds timeout, EventFd kick);
    void run();
    // One pass over the mailboxes; returns how many posted ones it served.
    std::size_t serve_posted();
    void serve(Mailbox& m);
    [[nodiscard]] Status wait_done(uint32_t vcpu, const Mailbox& m) const;

    viommu::ViommuDevice& dev_;
    std::vector<Mailbox> mailboxes_;
    const std::chrono::nanoseconds timeout_;
    EventFd kick_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
    std::array<std::byte, 8> writable_{};  // the device thread's: one request's tail
    telemetry::Counter kicks_;
    telemetry::Counter wakeups_;
    telemetry::Counter served_;
};

}  // namespace coiommu::loadgen
