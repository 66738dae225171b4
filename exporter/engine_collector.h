// The scrape-time collector over the engine's statistics (engine/telemetry/engine_stats.h).
//
// It takes a snapshot source, not the engine, so it builds and tests without the engine:
//   auto collector = std::make_shared<EngineCollector>([&stats] { return stats.snapshot(); },
//                                                      EngineInfo{this_build(), config_info});
// The catalogue it emits (names, types, labels) is exporter/METRICS.md; every label combination
// is present from the first scrape (pre-initialised to 0).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
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

// Maps one snapshot to the catalogue's families. Pure; exposed for tests and benchmarks.
[[nodiscard]] std::vector<prometheus::MetricFamily> engine_families(const telemetry::StatsSnapshot& snapshot,
                                                                    const EngineInfo& info);

class EngineCollector final : public Collector {
public:
    using Source = std::function<telemetry::StatsSnapshot()>;

    // `source` is called once per scrape on a civetweb thread; it must be thread-safe
    // (StatsRegistry::snapshot() is).
    EngineCollector(Source source, EngineInfo info);

    // Errors: EINVAL when the source is empty; exceptions from the source propagate to the
    // caller (CollectorSet / Collect() catch them).
    [[nodiscard]] Status collect_into(std::vector<prometheus::MetricFamily>& out) const override;

private:
    Source source_;
    EngineInfo info_;
};

}  // namespace coiommu::exporter
