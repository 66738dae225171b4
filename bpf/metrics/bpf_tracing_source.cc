#include "bpf/metrics/bpf_tracing_source.h"

#include <utility>

namespace coiommu::exporter {

BpfCollector::Source tracing_source(const bpf::Tracing& tracing, const SlowEventCounter* slow_events,
                                    std::optional<std::chrono::nanoseconds> slow_threshold) {
    return [&tracing, slow_events, slow_threshold]() -> Result<BpfScrape> {
        auto snap = tracing.snapshot();
        if (!snap) return coiommu::unexpected(snap.error());
        BpfScrape scrape;
        scrape.telemetry = std::move(*snap);
        scrape.slow_events_received = slow_events != nullptr ? slow_events->value() : 0;
        scrape.slow_threshold = slow_threshold;
        return scrape;
    };
}

}  // namespace coiommu::exporter
