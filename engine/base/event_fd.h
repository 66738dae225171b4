// EventFd: an owned Linux eventfd (counter semantics, not semaphore).
//
// Used for per-vCPU triggers (the VMM registers them as KVM ioeventfds), kill/wake events and
// virtio-iommu fault / fault-resolved events. Thread-safe: the kernel object is; the wrapper
// holds only the fd.
#pragma once

#include <chrono>
#include <cstdint>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu {

enum class Blocking : bool { No = false, Yes = true };

class EventFd {
public:
    // Creates a new eventfd (EFD_CLOEXEC; EFD_NONBLOCK when blocking == No).
    [[nodiscard]] static Result<EventFd> create(Blocking blocking = Blocking::No);
    // Takes ownership of an eventfd received from elsewhere (e.g. over SCM_RIGHTS).
    [[nodiscard]] static EventFd adopt(UniqueFd fd) { return EventFd(std::move(fd)); }

    EventFd() = default;

    // Adds 1 to the counter. Errors: errno of write(2).
    [[nodiscard]] Status signal() const;
    // Reads and resets the counter. On a non-blocking fd with a zero counter returns 0
    // (EAGAIN is an outcome, not an error).
    [[nodiscard]] Result<uint64_t> read() const;
    // Waits until the counter is non-zero, up to `timeout`; consumes it. Returns false on timeout.
    [[nodiscard]] Result<bool> wait_for(std::chrono::milliseconds timeout) const;
    // Whether the counter is currently non-zero, without consuming it.
    [[nodiscard]] Result<bool> is_signaled() const;
    // A second descriptor for the same eventfd (dup, CLOEXEC).
    [[nodiscard]] Result<EventFd> duplicate() const;

    [[nodiscard]] int fd() const { return fd_.get(); }
    [[nodiscard]] bool valid() const { return fd_.valid(); }

private:
    explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
};

}  // namespace coiommu
