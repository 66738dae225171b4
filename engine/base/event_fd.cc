#include "engine/base/event_fd.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace coiommu {

Result<EventFd> EventFd::create(Blocking blocking) {
    const int flags = EFD_CLOEXEC | (blocking == Blocking::Yes ? 0 : EFD_NONBLOCK);
    const int fd = ::eventfd(0, flags);
    if (fd < 0) return make_error(errno, "eventfd");
    return EventFd(UniqueFd(fd));
}

Status EventFd::signal() const {
    const uint64_t one = 1;
    for (;;) {
        const ssize_t n = ::write(fd_.get(), &one, sizeof one);
        if (n == sizeof one) return ok();
        if (n < 0 && errno == EINTR) continue;
        return make_error(n < 0 ? errno : EIO, "eventfd write");
    }
}

Result<uint64_t> EventFd::read() const {
    uint64_t value = 0;
    for (;;) {
        const ssize_t n = ::read(fd_.get(), &value, sizeof value);
        if (n == sizeof value) return value;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return uint64_t{0};
        return make_error(n < 0 ? errno : EIO, "eventfd read");
    }
}

Result<bool> EventFd::wait_for(std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd pfd{fd_.get(), POLLIN, 0};
        const int n = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errno, "eventfd poll");
        if (n == 0) return false;
        auto value = read();
        if (!value) return coiommu::unexpected(value.error());
        if (*value != 0) return true;
        // Another reader consumed it first (blocking fds never get here).
        if (std::chrono::steady_clock::now() >= deadline) return false;
    }
}

Result<bool> EventFd::is_signaled() const {
    pollfd pfd{fd_.get(), POLLIN, 0};
    for (;;) {
        const int n = ::poll(&pfd, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errno, "eventfd poll");
        return n > 0;
    }
}

Result<EventFd> EventFd::duplicate() const {
    const int fd = ::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, "eventfd dup");
    return EventFd(UniqueFd(fd));
}

}  // namespace coiommu
