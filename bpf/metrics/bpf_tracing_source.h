// The BpfCollector source over a live bpf::Tracing (library coiommu::bpf_metrics, with
// bpf_collector.h).
//
//   bpf::Tracing tracing = bpf::Tracing::start(opts).value();
//   SlowEventCounter slow;   // the ring-buffer poller does slow.add() per event
//   set->add("bpf", std::make_shared<BpfCollector>(tracing_source(tracing, &slow, opts.vfio_dma.slow_threshold)));
#pragma once

#include <chrono>
#include <optional>

#include "bpf/loader/tracing.h"
#include "bpf/metrics/bpf_collector.h"

namespace coiommu::exporter {

// Each call takes bpf::Tracing::snapshot() (maps and program info; never resets a map) and the
// counter's value. `tracing` and `slow_events` (may be null) must outlive the collector, and
// nobody may attach_engine() while scrapes run (Tracing is not synchronised against that).
[[nodiscard]] BpfCollector::Source tracing_source(const bpf::Tracing& tracing, const SlowEventCounter* slow_events,
                                                  std::optional<std::chrono::nanoseconds> slow_threshold);

}  // namespace coiommu::exporter
