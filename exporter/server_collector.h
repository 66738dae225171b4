// coiommud's connection and session counters (daemon::ServerCounters) at scrape time: how many
// VMMs were served, resumed and lost, and every connection the daemon turned away, by reason. These
// are the numbers an operator needs when a tenant cannot connect (the session and fd budgets, the
// Hello deadline) or after a daemon restart (did the VMs resume?).
//
// Like EngineCollector it takes a source, not the daemon::Server, so it builds and tests alone.
// Every family is process-wide (no `vm` label) and every `reason` is present from the first scrape.
//
// Thread-safety: collect_into may run concurrently with itself; the source must be thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include <prometheus/metric_family.h>

#include "exporter/collector.h"

namespace coiommu::exporter {

// Why the daemon closed a connection without serving it (coiommu_connections_refused_total{reason}).
enum class Refusal : uint8_t {
    Credentials,     // the peer's uid is not allowed (allowed_uids)
    Busy,            // max_sessions reached
    UidBusy,         // max_sessions_per_uid reached
    FdBudget,        // a Hello or setup message beyond an fd budget
    OutOfFds,        // accept4 EMFILE/ENFILE: accepted on the spare fd and refused
    BadHandshake,    // the first message was not a valid Hello
    HelloTimeout,    // no Hello before the deadline
    EvictedPending,  // pushed out of a full pool of connections before Hello
    kCount,
};
inline constexpr std::size_t kRefusals = static_cast<std::size_t>(Refusal::kCount);
[[nodiscard]] std::string_view to_string(Refusal r);

struct ServerStats {
    uint64_t accepted = 0;       // sessions started (Hello answered)
    uint64_t resumed = 0;        // sessions that resumed a previous daemon's record
    uint64_t ended = 0;          // sessions reaped, whatever the reason
    uint64_t failed = 0;         // of those, ended by a protocol error, timeout or I/O error
    uint64_t accept_pauses = 0;  // the listener was unwatched for 100 ms (no fd to accept with)
    std::array<uint64_t, kRefusals> refused{};
};

[[nodiscard]] std::vector<prometheus::MetricFamily> server_families(const ServerStats& stats);

class ServerCollector final : public Collector {
public:
    using Source = std::function<ServerStats()>;
    explicit ServerCollector(Source source) : source_(std::move(source)) {}
    // Errors: EINVAL when constructed without a source (nothing is appended then).
    [[nodiscard]] Status collect_into(std::vector<prometheus::MetricFamily>& out) const override;

private:
    Source source_;
};

}  // namespace coiommu::exporter
