// A cheap clock for the load generator's per-operation latencies.
//
// Timing every emulated DMA map and unmap takes four clock reads per operation. vDSO
// clock_gettime costs 50 ns in this project's nested VM (perf showed 68% of the generator's time
// in it with the null backend); rdtsc costs 22 ns. So when the CPU's TSC is invariant
// (constant_tsc and nonstop_tsc in /proc/cpuinfo), ticks are converted to nanoseconds with a
// factor calibrated against CLOCK_MONOTONIC at setup; otherwise this falls back to
// CLOCK_MONOTONIC.
//
// Thread-safety: immutable after calibrate(); now()/ns() may be called from any thread. The TSC
// of all CPUs is synchronised on the machines where the flags above are set.
#pragma once

#include <cstdint>

#include "engine/telemetry/clock.h"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace coiommu::loadgen {

class TscClock {
public:
    // Calibrates over about `window_ns` (busy-waiting): call at setup, not on a hot path.
    [[nodiscard]] static TscClock calibrate(uint64_t window_ns = 20'000'000);

    // A raw timestamp (TSC ticks, or ns in the fallback).
    [[nodiscard]] uint64_t now() const noexcept {
#if defined(__x86_64__)
        if (use_tsc_) return __rdtsc();
#endif
        return telemetry::monotonic_ns();
    }
    // Nanoseconds between two timestamps of now() (0 if `to` precedes `from`).
    [[nodiscard]] uint64_t ns(uint64_t from, uint64_t to) const noexcept {
        if (to <= from) return 0;
        if (!use_tsc_) return to - from;
        __extension__ using U128 = unsigned __int128;
        return static_cast<uint64_t>((static_cast<U128>(to - from) * mult_) >> kShift);
    }

    [[nodiscard]] bool uses_tsc() const { return use_tsc_; }
    // TSC frequency in GHz (ticks per ns); 1 in the fallback.
    [[nodiscard]] double ticks_per_ns() const;

private:
    static constexpr unsigned kShift = 32;
    bool use_tsc_ = false;
    uint64_t mult_ = uint64_t{1} << kShift;  // ns per tick, fixed point 32.32
};

}  // namespace coiommu::loadgen
