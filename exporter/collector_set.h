// A Collectable over any number of named collectors: the one object registered with the
// Exposer. It is the seam where collectors are plugged in (engine stats, process, and the BPF
// collector over bpf/loader's snapshot API when the tracer is attached).
//
// Per scrape, for each collector in insertion order: run it, time it, catch everything it throws,
// drop a family whose name an earlier collector already emitted (two families with one name make
// the exposition invalid), then append the set's own metrics:
//   coiommu_exporter_collect_duration_seconds{collector}  gauge  last scrape's time in it
//   coiommu_exporter_collect_errors_total{collector}      counter failed or partial collections
//   coiommu_exporter_collector_success{collector}         gauge  1 if the last scrape was clean
// Thread-safety: all methods may be called from any thread; scrapes are serialised internally.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "engine/base/result.h"

namespace coiommu::exporter {

class Collector;

class CollectorSet final : public prometheus::Collectable {
public:
    // `name` becomes the `collector` label value: [a-z0-9_]+, unique in the set.
    // Errors: EINVAL (null collectable, bad name), EEXIST (name taken).
    [[nodiscard]] Status add(std::string name, std::shared_ptr<const prometheus::Collectable> collectable);
    // Errors: ENOENT when no collector has that name.
    [[nodiscard]] Status remove(std::string_view name);
    [[nodiscard]] std::size_t size() const;

    std::vector<prometheus::MetricFamily> Collect() const override;

private:
    struct Entry {
        std::string name;
        std::shared_ptr<const prometheus::Collectable> collectable;
        const Collector* typed = nullptr;  // non-null when the collectable is one of ours
        uint64_t errors = 0;
        double last_duration_seconds = 0.0;
        bool last_ok = true;
    };

    mutable std::mutex mu_;
    mutable std::vector<Entry> entries_;  // mutable: per-scrape bookkeeping, guarded by mu_
};

}  // namespace coiommu::exporter
