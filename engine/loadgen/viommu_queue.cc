#include "engine/loadgen/viommu_queue.h"

#include <pthread.h>
#include <sched.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/viommu/protocol.h"

namespace coiommu::loadgen {
namespace {

constexpr std::string_view kLog = "loadgen";

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

}  // namespace

Result<std::unique_ptr<ViommuQueue>> ViommuQueue::start(viommu::ViommuDevice& dev, uint32_t vcpus,
                                                        std::chrono::nanoseconds timeout) {
    if (vcpus == 0) return make_error(EINVAL, "viommu queue: no vCPUs");
    auto kick = EventFd::create(Blocking::Yes);
    if (!kick) return coiommu::unexpected(with_context(kick.error(), "viommu queue kick"));
    std::unique_ptr<ViommuQueue> q(new ViommuQueue(dev, vcpus, timeout, std::move(*kick)));
    q->thread_ = std::thread([raw = q.get()] {
        ::pthread_setname_np(::pthread_self(), "viommu_queue");
        raw->run();
    });
    return q;
}

ViommuQueue::ViommuQueue(viommu::ViommuDevice& dev, uint32_t vcpus, std::chrono::nanoseconds timeout, EventFd kick)
    : dev_(dev), mailboxes_(vcpus), timeout_(timeout), kick_(std::move(kick)) {}

ViommuQueue::~ViommuQueue() { stop(); }

void ViommuQueue::stop() {
    if (stopping_.exchange(true)) {
        if (thread_.joinable()) thread_.join();
        return;
    }
    if (auto st = kick_.signal(); !st) CLOG_ERROR(kLog, "viommu queue: stop kick: {}", st.error().message());
    if (thread_.joinable()) thread_.join();
}

void ViommuQueue::run() {
    for (;;) {
        auto n = kick_.read();  // blocks until some vCPU kicks (or stop())
        if (!n) {
            CLOG_ERROR(kLog, "viommu queue: reading the kick: {}", n.error().message());
            return;
        }
        if (stopping_.load(std::memory_order_acquire)) return;
        wakeups_.add();
        // A vCPU posts before it kicks, so every mailbox posted before this read is seen by this
        // scan; one posted during the scan has kicked again and is seen by the next one.
        for (Mailbox& m : mailboxes_) {
            if (m.state.load(std::memory_order_acquire) == kPosted) serve(m);
        }
    }
}

void ViommuQueue::serve(Mailbox& m) {
    m.writable.fill(std::byte{0});
    auto used = dev_.handle(std::span<const std::byte>(m.request.data(), m.request_len), m.writable);
    if (!used) {
        m.error = used.error().code != 0 ? used.error().code : EIO;
    } else if (*used < sizeof(viommu::wire::ReqTail) || *used > m.writable.size()) {
        m.error = EPROTO;
    } else {
        m.error = 0;
        m.status = static_cast<uint8_t>(m.writable[*used - sizeof(viommu::wire::ReqTail)]);
    }
    // Release: the reply fields above are visible to the vCPU that sees kDone.
    m.state.store(kDone, std::memory_order_release);
}

Result<uint8_t> ViommuQueue::submit(uint32_t vcpu, std::span<const std::byte> request) {
    if (vcpu >= mailboxes_.size()) return make_error(EINVAL, fmt::format("viommu queue: no mailbox for vcpu {}", vcpu));
    if (request.size() > kMaxRequestBytes) return make_error(EINVAL, "viommu queue: request too large");
    if (stopping_.load(std::memory_order_acquire)) return make_error(ECANCELED, "viommu queue: stopped");
    Mailbox& m = mailboxes_[vcpu];
    if (m.state.load(std::memory_order_acquire) != kIdle) {
        return make_error(EBUSY, fmt::format("viommu queue: vcpu {} has a request in flight", vcpu));
    }
    std::memcpy(m.request.data(), request.data(), request.size());
    m.request_len = static_cast<uint32_t>(request.size());
    // Release: the device thread that sees kPosted sees the request bytes.
    m.state.store(kPosted, std::memory_order_release);
    kicks_.add();
    if (auto st = kick_.signal(); !st) {
        m.state.store(kIdle, std::memory_order_relaxed);
        return coiommu::unexpected(with_context(st.error(), "viommu queue kick"));
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (uint32_t i = 1;; ++i) {
        if (m.state.load(std::memory_order_acquire) == kDone) break;
        if ((i & 63) == 0) {
            if (std::chrono::steady_clock::now() >= deadline) {
                return make_error(ETIMEDOUT, fmt::format("viommu queue: vcpu {} request timed out", vcpu));
            }
            ::sched_yield();  // the device thread may need this core
        }
        cpu_relax();
    }
    const int err = m.error;
    const uint8_t status = m.status;
    m.state.store(kIdle, std::memory_order_relaxed);
    if (err != 0) return make_error(err, "virtio-iommu request failed");
    return status;
}

}  // namespace coiommu::loadgen
