// The scrape-time collector over the engine's statistics (engine/telemetry/engine_stats.h), one
// engine per VM.
//
// It takes a snapshot source, not the engines, so it builds and tests without them:
//   // every VM of a daemon (coiommud: exporter/daemon_metrics.cc over daemon::Server)
//   auto c = std::make_shared<EngineCollector>([&] { return per_vm_snapshots(); }, info);
//   // one engine, exported as the single VM "load"
//   auto c = std::make_shared<EngineCollector>([&stats] { return stats.snapshot(); }, info, "load");
//
// Every per-engine family carries a `vm` label (exporter/METRICS.md, "The vm label"):
//  - a listed VM's value is its name made safe (vm_label_base()), made unique among the VMs listed
//    now by a "#2", "#3", ... suffix; a VM keeps its value for as long as its source key is listed;
//  - counters and histograms also carry the reserved value "(ended)": the final totals of every VM
//    that is no longer listed (VmSnapshots::ended), so the sum over `vm` never decreases;
//  - gauges exist only for listed VMs.
// The build, configuration and session-count families have no `vm` label. Every label
// combination of a listed VM, and of "(ended)", is present (at 0 until something happens).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/metric_family.h>

#include "engine/telemetry/engine_stats.h"
#include "exporter/collector.h"

namespace coiommu::exporter {

// coiommu_build_info{version, revision}
struct BuildInfo {
    std::string version;
    std::string revision;
};
// This binary's version (CMake project version) and git revision at configure time.
[[nodiscard]] BuildInfo this_build();

// coiommu_config_info{unpin_policy, coalesce, backend} and the numeric unpin settings.
struct ConfigInfo {
    std::string unpin_policy = "lru";  // "off" | "lru" (crosvm CoIommuUnpinPolicy)
    std::string coalesce = "on";       // "on" | "off": contiguous gfns mapped as one extent
    std::string backend = "vfio";      // "vfio" | "fake" | "null"
    double unpin_interval_seconds = 60.0;
    uint64_t unpin_gen_threshold = 10;
};

struct EngineInfo {
    BuildInfo build;
    ConfigInfo config;
};

// One VM as a source reports it.
struct VmSnapshot {
    uint64_t key = 0;  // stable for the VM's lifetime, unique among the VMs of one report (a session id)
    std::string name;  // as the VMM gave it: untrusted, any bytes
    telemetry::StatsSnapshot snapshot;
};

// What a per-VM source returns at each scrape.
struct VmSnapshots {
    std::vector<VmSnapshot> vms;     // the VMs served now
    telemetry::ShardTotals ended{};  // the final totals of every VM no longer listed; never decreases
    uint64_t active_sessions = 0;    // VMM connections served now (coiommu_active_sessions)
};

// The reserved `vm` values. No VM's value can equal them: vm_label_base() never yields '(' or ')'.
inline constexpr std::string_view kEndedVmLabel = "(ended)";
inline constexpr std::string_view kUnnamedVmLabel = "(unnamed)";
// The longest base a VM name becomes (the protocol's Hello name field is 32 bytes).
inline constexpr std::size_t kMaxVmLabelBase = 32;

// A VM name as a label value: its first kMaxVmLabelBase bytes, each byte outside [A-Za-z0-9._-]
// (quotes, backslashes, spaces, control characters, any byte of a multi-byte or invalid UTF-8
// sequence) replaced by '_'; kUnnamedVmLabel for an empty name. Pure.
[[nodiscard]] std::string vm_label_base(std::string_view name);

// Assigns each listed VM its `vm` value, remembering it per key. Not thread-safe (EngineCollector
// serialises its calls).
class VmLabeler {
public:
    // One value per element of `vms`, in order, all distinct. A key seen in the previous call keeps
    // its value; keys no longer listed are forgotten (their value may be given again). New keys,
    // in ascending key order, take vm_label_base(name) if no listed VM holds it, else the first
    // free "base#N" for N = 2, 3, ... A key listed twice in one call (a source bug) gets a fresh
    // value for its second entry.
    [[nodiscard]] std::vector<std::string> assign(std::span<const VmSnapshot> vms);

private:
    std::map<uint64_t, std::string> by_key_;
};

// One VM's series as engine_families() emits them.
struct LabelledSnapshot {
    std::string_view vm;  // the `vm` value (distinct per element, not a reserved value)
    const telemetry::StatsSnapshot* snapshot = nullptr;
};

// Maps one scrape to the catalogue's families: per VM, plus "(ended)" for `ended`. Pure; exposed
// for tests and benchmarks. Preconditions: every snapshot pointer is valid.
[[nodiscard]] std::vector<prometheus::MetricFamily> engine_families(std::span<const LabelledSnapshot> vms,
                                                                    const telemetry::ShardTotals& ended,
                                                                    uint64_t active_sessions, const EngineInfo& info);
// One engine as the single VM `vm` (vm_label_base() applies), nothing ended, active_sessions from
// the snapshot's gauge.
[[nodiscard]] std::vector<prometheus::MetricFamily> engine_families(const telemetry::StatsSnapshot& snapshot,
                                                                    const EngineInfo& info, std::string_view vm = {});

class EngineCollector final : public Collector {
public:
    using VmSource = std::function<VmSnapshots()>;
    using Source = std::function<telemetry::StatsSnapshot()>;

    // `source` is called once per scrape on a civetweb thread; it must be thread-safe
    // (daemon::Server and StatsRegistry::snapshot() are).
    EngineCollector(VmSource source, EngineInfo info);
    // One engine, exported as the single VM `vm_name` ("" is "(unnamed)").
    EngineCollector(Source source, EngineInfo info, std::string vm_name = {});

    // Errors: EINVAL when the source is empty; exceptions from the source propagate to the
    // caller (CollectorSet / Collect() catch them). Thread-safe.
    [[nodiscard]] Status collect_into(std::vector<prometheus::MetricFamily>& out) const override;

private:
    VmSource source_;
    EngineInfo info_;
    mutable std::mutex labels_mu_;  // serialises labels_ across concurrent scrapes
    mutable VmLabeler labels_;
};

}  // namespace coiommu::exporter
