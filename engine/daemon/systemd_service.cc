#include "engine/daemon/systemd_service.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <systemd/sd-daemon.h>

namespace coiommu::daemon {

Result<ActivatedListener> take_activated_listener() {
    ActivatedListener out;
    // unset_environment=1: the VMMs and tools this daemon never starts must not see them either.
    const int n = sd_listen_fds(1);
    if (n < 0) return make_error(-n, "sd_listen_fds");
    if (n == 0) return out;
    if (n > 1) return make_error(EINVAL, fmt::format("socket activation passed {} fds; coiommud takes one", n));
    const int fd = SD_LISTEN_FDS_START;
    out.fd = UniqueFd(fd);
    const int is_unix = sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, nullptr, 0);
    if (is_unix < 0) return make_error(-is_unix, "sd_is_socket_unix");
    if (is_unix == 0) {
        return make_error(EINVAL,
                          "the activated socket is not a listening AF_UNIX SOCK_SEQPACKET socket "
                          "(coiommud.socket needs ListenSequentialPacket=)");
    }
    sockaddr_un addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return make_error(errno, "getsockname on the activated socket");
    }
    out.path.assign(addr.sun_path, ::strnlen(addr.sun_path, sizeof addr.sun_path));
    return out;
}

void notify_ready(std::string_view status) {
    (void)sd_notifyf(0, "READY=1\nSTATUS=%.*s", static_cast<int>(status.size()), status.data());
}

void notify_reloading() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const unsigned long long usec =
        static_cast<unsigned long long>(ts.tv_sec) * 1'000'000ULL + static_cast<unsigned long long>(ts.tv_nsec) / 1000;
    (void)sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
}

void notify_stopping() { (void)sd_notify(0, "STOPPING=1"); }

void notify_status(std::string_view status) {
    (void)sd_notifyf(0, "STATUS=%.*s", static_cast<int>(status.size()), status.data());
}

}  // namespace coiommu::daemon
