#include "exporter/exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <new>
#include <utility>

#include <CivetServer.h>
#include <fmt/format.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>

#include "engine/base/log.h"
#include "engine/base/unique_fd.h"

namespace coiommu::exporter {
namespace {

constexpr std::string_view kLog = "exporter";

// civetweb reports start-up failures (bind errors) through log_message on the thread that
// constructs the server; they are captured here so the Error can quote them. Later messages come
// from civetweb's worker threads and go to the project log.
thread_local std::string* t_startup_messages = nullptr;

int civetweb_log(const mg_connection* /*conn*/, const char* message) {
    std::string_view text = message != nullptr ? message : "";
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    if (t_startup_messages != nullptr) {
        if (!t_startup_messages->empty()) *t_startup_messages += "; ";
        *t_startup_messages += text;
    } else {
        CLOG_WARN_RL(kLog, "civetweb: {}", text);
    }
    return 1;  // handled: civetweb prints nothing itself
}

const CivetCallbacks& callbacks() {
    static const CivetCallbacks cb = [] {
        CivetCallbacks c;
        c.log_message = &civetweb_log;
        return c;
    }();
    return cb;
}

// Re-creates the bind civetweb attempted, to name the errno it hit (civetweb only says
// "cannot bind"). Returns 0 when the address binds fine now (the failure was something else or
// transient).
int probe_bind_errno(const ListenAddress& a) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (a.family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(a.port);
        if (::inet_pton(AF_INET, a.host.c_str(), &sin->sin_addr) != 1) return EINVAL;
        len = sizeof(sockaddr_in);
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(a.port);
        if (::inet_pton(AF_INET6, a.host.c_str(), &sin6->sin6_addr) != 1) return EINVAL;
        len = sizeof(sockaddr_in6);
    }
    UniqueFd fd(::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return errno;
    const int one = 1;
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as civetweb does
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) return errno;
    return 0;
}

std::string describe_bind_errno(int err) {
    switch (err) {
        case EADDRINUSE: return "address in use";
        case EACCES: return "permission denied (privileged port?)";
        case EADDRNOTAVAIL: return "address not available on this host";
        default: return std::strerror(err);
    }
}

}  // namespace

std::string ListenAddress::to_string() const {
    return family == AF_INET6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

Result<ListenAddress> parse_listen_address(std::string_view text) {
    const auto bad = [&](std::string_view why) {
        return make_error(EINVAL, fmt::format("listen address '{}': {} (want IPv4:port or [IPv6]:port)", text, why));
    };
    ListenAddress a;
    std::string_view port_text;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) return bad("missing ']'");
        a.host = std::string(text.substr(1, close - 1));
        if (close + 1 >= text.size() || text[close + 1] != ':') return bad("missing ':port'");
        port_text = text.substr(close + 2);
        a.family = AF_INET6;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return bad("missing ':port'");
        a.host = std::string(text.substr(0, colon));
        port_text = text.substr(colon + 1);
        a.family = AF_INET;
    }
    unsigned char buf[sizeof(in6_addr)];
    if (a.host.empty() || ::inet_pton(a.family, a.host.c_str(), buf) != 1) return bad("host is not an IP literal");
    unsigned port = 0;
    const auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() || port > 65535) {
        return bad("port is not a number in 0..65535");
    }
    a.port = static_cast<uint16_t>(port);
    return a;
}

Exposer::Exposer(std::unique_ptr<prometheus::Exposer> impl, ListenAddress bound)
    : impl_(std::move(impl)), bound_(std::move(bound)) {}

Exposer::Exposer(Exposer&&) noexcept = default;
Exposer& Exposer::operator=(Exposer&&) noexcept = default;

Exposer::~Exposer() {
    // Stop serving before the collectables go: no scrape may start after this.
    try {
        impl_.reset();
    } catch (...) {
        CLOG_ERROR(kLog, "exception while stopping the HTTP server (ignored)");
    }
}

Result<Exposer> Exposer::start(const ExposerOptions& options) {
    auto parsed = parse_listen_address(options.address);
    if (!parsed) return coiommu::unexpected(parsed.error());
    if (options.threads == 0) return make_error(EINVAL, "exporter: threads must be at least 1");

    std::string startup_messages;
    std::unique_ptr<prometheus::Exposer> impl;
    std::string failure;
    t_startup_messages = &startup_messages;
    try {
        impl = std::make_unique<prometheus::Exposer>(
            std::vector<std::string>{"listening_ports", parsed->to_string(), "num_threads",
                                     std::to_string(options.threads)},
            &callbacks());
    } catch (const std::bad_alloc&) {
        t_startup_messages = nullptr;
        return make_error(ENOMEM, fmt::format("exporter: start HTTP server on {}", parsed->to_string()));
    } catch (const std::exception& e) {
        failure = e.what();
    } catch (...) {
        failure = "unknown exception";
    }
    t_startup_messages = nullptr;

    if (!impl) {
        const int err = probe_bind_errno(*parsed);
        const std::string detail = startup_messages.empty() ? failure : startup_messages;
        if (err != 0) {
            return make_error(err, fmt::format("exporter: cannot listen on {}: {} (civetweb: {})", parsed->to_string(),
                                               describe_bind_errno(err), detail));
        }
        return make_error(EIO,
                          fmt::format("exporter: cannot start HTTP server on {}: {}", parsed->to_string(), detail));
    }

    ListenAddress bound = *parsed;
    try {
        const std::vector<int> ports = impl->GetListeningPorts();
        if (ports.empty() || ports.front() <= 0 || ports.front() > 65535) {
            return make_error(EIO,
                              fmt::format("exporter: server on {} reports no listening port", parsed->to_string()));
        }
        bound.port = static_cast<uint16_t>(ports.front());
    } catch (const std::exception& e) {
        return make_error(EIO, fmt::format("exporter: listening ports of {}: {}", parsed->to_string(), e.what()));
    }
    CLOG_INFO(kLog, "serving metrics on http://{}{}", bound.to_string(), kMetricsPath);
    return Exposer(std::move(impl), std::move(bound));
}

Status Exposer::register_collectable(std::shared_ptr<prometheus::Collectable> collectable, std::string_view uri) {
    if (!impl_) return make_error(EINVAL, "exporter: register on a moved-from exposer");
    if (!collectable) return make_error(EINVAL, "exporter: register a null collectable");
    if (uri.empty() || uri.front() != '/')
        return make_error(EINVAL, fmt::format("exporter: uri '{}' must start with '/'", uri));
    try {
        impl_->RegisterCollectable(collectable, std::string(uri));
        registrations_.push_back({std::move(collectable), std::string(uri)});
    } catch (const std::bad_alloc&) {
        return make_error(ENOMEM, fmt::format("exporter: register collectable at {}", uri));
    } catch (const std::exception& e) {
        return make_error(EIO, fmt::format("exporter: register collectable at {}: {}", uri, e.what()));
    }
    return ok();
}

Status Exposer::remove_collectable(const std::shared_ptr<prometheus::Collectable>& collectable, std::string_view uri) {
    if (!impl_) return make_error(EINVAL, "exporter: remove on a moved-from exposer");
    try {
        impl_->RemoveCollectable(collectable, std::string(uri));
    } catch (const std::exception& e) {
        return make_error(EIO, fmt::format("exporter: remove collectable at {}: {}", uri, e.what()));
    }
    std::erase_if(registrations_, [&](const Registration& r) { return r.collectable == collectable && r.uri == uri; });
    return ok();
}

std::string Exposer::url(std::string_view uri) const { return fmt::format("http://{}{}", bound_.to_string(), uri); }

}  // namespace coiommu::exporter
