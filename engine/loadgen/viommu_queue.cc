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
        // A vCPU posts before it kicks, so every mailbox posted before the read is seen by the
        // first pass. Draining until a pass finds nothing takes, in this wake, what was posted
        // behind the scan; a post after the last pass has kicked after the read above, so the
        // next read returns (its batch may already be served: that wake finds nothing).
        while (serve_posted() != 0) {}
    }
}

std::size_t ViommuQueue::serve_posted() {
    std::size_t served = 0;
    for (Mailbox& m : mailboxes_) {
        uint32_t posted = kPosted;
        // Claimed, not just seen: a vCPU whose kick failed takes its batch back with the same CAS.
        if (m.state.load(std::memory_order_relaxed) != kPosted ||
            !m.state.compare_exchange_strong(posted, kServing, std::memory_order_acquire)) {
            continue;
        }
        serve(m);
        ++served;
    }
    return served;
}

void ViommuQueue::serve(Mailbox& m) {
    // In order, each to its own completion, as the device consumes a virtqueue's available ring.
    for (uint32_t i = 0; i < m.count; ++i) {
        Slot& s = m.slots[i];
        writable_.fill(std::byte{0});
        auto used = dev_.handle(std::span<const std::byte>(s.request.data(), s.len), writable_);
        if (!used) {
            s.completion = Completion{used.error().code != 0 ? used.error().code : EIO, 0};
        } else if (*used < sizeof(viommu::wire::ReqTail) || *used > writable_.size()) {
            s.completion = Completion{EPROTO, 0};
        } else {
            s.completion = Completion{0, static_cast<uint8_t>(writable_[*used - sizeof(viommu::wire::ReqTail)])};
        }
    }
    served_.add(m.count);
    // Release: the completions above (and served_) are visible to the vCPU that sees kDone.
    m.state.store(kDone, std::memory_order_release);
}

Result<uint8_t> ViommuQueue::submit(uint32_t vcpu, std::span<const std::byte> request) {
    const std::span<const std::byte> one[] = {request};
    Completion c;
    COIOMMU_TRY(submit_batch(vcpu, one, std::span<Completion>(&c, 1)));
    if (c.error != 0) return make_error(c.error, "virtio-iommu request failed");
    return c.status;
}

Status ViommuQueue::submit_batch(uint32_t vcpu, std::span<const std::span<const std::byte>> requests,
                                 std::span<Completion> completions) {
    if (vcpu >= mailboxes_.size()) return make_error(EINVAL, fmt::format("viommu queue: no mailbox for vcpu {}", vcpu));
    if (requests.empty() || requests.size() > kMaxBatch) {
        return make_error(EINVAL,
                          fmt::format("viommu queue: a batch of {} requests (1..{})", requests.size(), kMaxBatch));
    }
    if (completions.size() < requests.size()) {
        return make_error(EINVAL, "viommu queue: fewer completions than requests");
    }
    for (const auto& r : requests) {
        if (r.size() > kMaxRequestBytes) return make_error(EINVAL, "viommu queue: request too large");
    }
    if (stopping_.load(std::memory_order_acquire)) return make_error(ECANCELED, "viommu queue: stopped");
    Mailbox& m = mailboxes_[vcpu];
    if (m.state.load(std::memory_order_acquire) != kIdle) {
        return make_error(EBUSY, fmt::format("viommu queue: vcpu {} has a request in flight", vcpu));
    }
    for (std::size_t i = 0; i < requests.size(); ++i) {
        std::memcpy(m.slots[i].request.data(), requests[i].data(), requests[i].size());
        m.slots[i].len = static_cast<uint32_t>(requests[i].size());
    }
    m.count = static_cast<uint32_t>(requests.size());
    // Release: the device thread that sees kPosted sees the requests.
    m.state.store(kPosted, std::memory_order_release);
    if (auto st = kick_.signal(); !st) {
        // A drain may have claimed the batch already: then it is served, wait for it.
        uint32_t posted = kPosted;
        if (m.state.compare_exchange_strong(posted, kIdle, std::memory_order_acq_rel)) {
            return coiommu::unexpected(with_context(st.error(), "viommu queue kick"));
        }
    } else {
        kicks_.add();
    }
    COIOMMU_TRY(wait_done(vcpu, m));
    for (std::size_t i = 0; i < requests.size(); ++i) completions[i] = m.slots[i].completion;
    m.state.store(kIdle, std::memory_order_relaxed);
    return ok();
}

Status ViommuQueue::wait_done(uint32_t vcpu, const Mailbox& m) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (uint32_t i = 1;; ++i) {
        if (m.state.load(std::memory_order_acquire) == kDone) return ok();
        if ((i & 63) == 0) {
            if (std::chrono::steady_clock::now() >= deadline) {
                return make_error(ETIMEDOUT, fmt::format("viommu queue: vcpu {} request timed out", vcpu));
            }
            ::sched_yield();  // the device thread may need this core
        }
        cpu_relax();
    }
}

}  // namespace coiommu::loadgen
