// The HTTP endpoint Prometheus scrapes: an RAII owner of a prometheus::Exposer (civetweb).
//
//   auto exposer = Exposer::start({.address = "127.0.0.1:0"});   // port 0: ephemeral (tests)
//   if (!exposer) { CLOG_ERROR("exporter", "{}", exposer.error().message()); ... }
//   (void)exposer->register_collectable(collector_set);           // served at /metrics
//   ... exposer->port() ...
//
// Every prometheus-cpp / civetweb exception is caught here and returned as an Error; nothing
// throws out of this class. civetweb's own log lines go to the project log ("exporter").
// Thread-safety: start/register/remove from one owner thread; port()/address()/url() are
// const and safe from any thread. Scrapes run on civetweb's worker threads.
// Known limit: with Debian's civetweb 1.15, destroying an Exposer that has served a request can
// take up to 2 s (a civetweb bug, fixed in civetweb 1.16): mg_stop waits out a
// 2 s poll quantum. Harmless for the daemon; tests that start many exposers pay it each time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace prometheus {
class Collectable;
class Exposer;
}  // namespace prometheus

namespace coiommu::exporter {

// The default listen address: loopback only, port 9464 (the OpenTelemetry Prometheus exporter's
// conventional port). Exposing it beyond the host is a deliberate configuration change.
inline constexpr std::string_view kDefaultListenAddress = "127.0.0.1:9464";
inline constexpr std::string_view kMetricsPath = "/metrics";

// "host:port" where host is an IPv4 literal or a bracketed IPv6 literal ("[::1]:9464"); port
// 0..65535 (0 = let the kernel pick). Host names are not resolved.
struct ListenAddress {
    std::string host;  // without brackets
    uint16_t port = 0;
    int family = 0;  // AF_INET or AF_INET6

    // "127.0.0.1:9464" / "[::1]:9464"
    [[nodiscard]] std::string to_string() const;
};

// Errors: EINVAL with a message naming what is wrong.
[[nodiscard]] Result<ListenAddress> parse_listen_address(std::string_view text);

struct ExposerOptions {
    std::string address{kDefaultListenAddress};
    std::size_t threads = 2;  // civetweb worker threads (scrapes served in parallel), >= 1
};

class Exposer {
public:
    // Binds and starts serving. Errors: EINVAL (bad address/options), EADDRINUSE ("address in
    // use"), EACCES (privileged port), EADDRNOTAVAIL (not a local address), or EIO with
    // civetweb's message when the cause cannot be told.
    [[nodiscard]] static Result<Exposer> start(const ExposerOptions& options);

    Exposer(Exposer&&) noexcept;
    Exposer& operator=(Exposer&&) noexcept;
    Exposer(const Exposer&) = delete;
    Exposer& operator=(const Exposer&) = delete;
    ~Exposer();  // stops the server (joins civetweb's threads)

    // Serves `collectable` at `uri`. The exposer keeps a strong reference until removed or
    // destroyed, so a collector cannot silently vanish from the scrape. Errors: EINVAL (null or
    // bad uri, moved-from exposer), ENOMEM/EIO if prometheus-cpp throws.
    [[nodiscard]] Status register_collectable(std::shared_ptr<prometheus::Collectable> collectable,
                                              std::string_view uri = kMetricsPath);
    [[nodiscard]] Status remove_collectable(const std::shared_ptr<prometheus::Collectable>& collectable,
                                            std::string_view uri = kMetricsPath);

    // The port actually bound (the ephemeral one when started with port 0).
    [[nodiscard]] uint16_t port() const noexcept { return bound_.port; }
    // The bound address, "127.0.0.1:41234".
    [[nodiscard]] std::string address() const { return bound_.to_string(); }
    // "http://127.0.0.1:41234/metrics"
    [[nodiscard]] std::string url(std::string_view uri = kMetricsPath) const;

private:
    struct Registration {
        std::shared_ptr<prometheus::Collectable> collectable;
        std::string uri;
    };

    Exposer(std::unique_ptr<prometheus::Exposer> impl, ListenAddress bound);

    std::unique_ptr<prometheus::Exposer> impl_;
    ListenAddress bound_;
    std::vector<Registration> registrations_;
};

}  // namespace coiommu::exporter
