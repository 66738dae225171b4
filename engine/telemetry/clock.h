// Clocks for the stats: a monotonic clock for durations, the wall clock for `_timestamp` gauges.
// Both read the vDSO (no syscall) and cannot fail for these clock ids.
#pragma once

#include <cstdint>
#include <ctime>

namespace coiommu::telemetry {

// Nanoseconds on CLOCK_MONOTONIC: subtract two readings to time a request or a DMA call.
[[nodiscard]] inline uint64_t monotonic_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// Nanoseconds since the Unix epoch on CLOCK_REALTIME (EngineGauges::last_unpin_run_unix_ns).
[[nodiscard]] inline uint64_t unix_time_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace coiommu::telemetry
