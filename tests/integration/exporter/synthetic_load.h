// A synthetic engine for exporter tests: a thread that fills a StatsRegistry the way the engine
// will (requests of both kinds, DMA calls with latencies, failures of every reason now and then,
// unpin scans, balloon and virtio-iommu traffic), so every metric of the catalogue has data.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "engine/telemetry/engine_stats.h"

namespace coiommu::exporter::testing {

class SyntheticLoad {
public:
    // `pace`: pause between synthetic requests (0 = flat out).
    explicit SyntheticLoad(telemetry::StatsRegistry& stats,
                           std::chrono::microseconds pace = std::chrono::microseconds(50));
    ~SyntheticLoad();  // stops and joins
    SyntheticLoad(const SyntheticLoad&) = delete;
    SyntheticLoad& operator=(const SyntheticLoad&) = delete;

    [[nodiscard]] uint64_t requests() const noexcept { return requests_.load(std::memory_order_relaxed); }

private:
    void run();
    void one_request(telemetry::StatsShard& s, uint64_t i);

    telemetry::StatsRegistry& stats_;
    std::chrono::microseconds pace_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> requests_{0};
    std::thread thread_;
};

}  // namespace coiommu::exporter::testing
