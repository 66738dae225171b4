// The collector interface of the exporter: a prometheus::Collectable that can also say that
// part of a scrape failed, without throwing.
//
// Implementations build MetricFamily values at scrape time from snapshots (engine stats shards,
// BPF maps, /proc); they never sit on a hot path. A CollectorSet runs several of them, times each
// and counts their errors (coiommu_exporter_collect_*{collector}).
#pragma once

#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "engine/base/result.h"

namespace coiommu::exporter {

class Collector : public prometheus::Collectable {
public:
    // Appends this collector's families to `out`. Returns an Error when part of the data could
    // not be read; whatever was read is still appended (a partial scrape beats none). Must not
    // throw except std::bad_alloc. Called from civetweb worker threads, possibly concurrently
    // with itself when registered on two endpoints: implementations are thread-safe.
    [[nodiscard]] virtual Status collect_into(std::vector<prometheus::MetricFamily>& out) const = 0;

    // prometheus::Collectable, for registering a collector directly with an Exposer:
    // collect_into() with errors logged (rate-limited) and every exception caught.
    std::vector<prometheus::MetricFamily> Collect() const final;
};

}  // namespace coiommu::exporter
