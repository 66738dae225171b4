// The rates of the once-a-second progress line: counts over the last full second of samples,
// not the last 100 ms interval scaled up.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace coiommu::loadgen {

// Cumulative counts at one instant of the run.
struct Tally {
    uint64_t t_ns = 0;          // monotonic
    uint64_t maps = 0;          // guest DMA maps so far
    uint64_t pages_pinned = 0;  // pages newly mapped in the backend so far
};

struct WindowRates {
    double maps_per_s = 0;
    double pins_per_s = 0;
    double window_s = 0;  // the time the rates cover (0: no rates yet)
};

// The index in `history` (oldest first, t_ns ascending, not empty) of the tally the window ends at
// `history.back()` starts from: the newest one at least `window_ns` older than the last, or the
// oldest when the history is shorter than the window.
[[nodiscard]] std::size_t window_start(std::span<const Tally> history, uint64_t window_ns);

// (last - start) / elapsed over the window of window_start(). Zero rates when `history` holds
// fewer than two tallies or no time passed.
[[nodiscard]] WindowRates window_rates(std::span<const Tally> history, uint64_t window_ns);

}  // namespace coiommu::loadgen
