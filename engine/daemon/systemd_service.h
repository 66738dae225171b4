// coiommud under systemd: socket activation (coiommud.socket) and readiness (Type=notify).
// Outside systemd (no $LISTEN_FDS, no $NOTIFY_SOCKET) every call is a no-op, so the same binary
// runs by hand, in the demo and in tests.
//
// Thread-safety: call from the main thread, before other threads read the environment.
#pragma once

#include <string>
#include <string_view>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu::daemon {

struct ActivatedListener {
    UniqueFd fd;       // invalid: not socket-activated
    std::string path;  // the socket's path as systemd bound it
};

// Takes the one listening socket systemd passed (and unsets $LISTEN_FDS for children).
// Errors: EINVAL when systemd passed more than one fd or one that is not a listening
// AF_UNIX SOCK_SEQPACKET socket (coiommud.socket must say ListenSequentialPacket=).
[[nodiscard]] Result<ActivatedListener> take_activated_listener();

// READY=1 with a STATUS= line: sent once the socket is listening, so a VMM ordered
// After=coiommud.service never races the daemon's start.
void notify_ready(std::string_view status);
// RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload expects) and READY=1 afterwards.
void notify_reloading();
void notify_stopping();
void notify_status(std::string_view status);

}  // namespace coiommu::daemon
