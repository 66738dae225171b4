#include "engine/loadgen/progress.h"

namespace coiommu::loadgen {

std::size_t window_start(std::span<const Tally> history, uint64_t window_ns) {
    if (history.empty()) return 0;
    const uint64_t last = history.back().t_ns;
    std::size_t start = 0;
    for (std::size_t i = 0; i + 1 < history.size(); ++i) {
        if (last - history[i].t_ns >= window_ns) start = i;
    }
    return start;
}

WindowRates window_rates(std::span<const Tally> history, uint64_t window_ns) {
    WindowRates w;
    if (history.size() < 2) return w;
    const Tally& from = history[window_start(history, window_ns)];
    const Tally& to = history.back();
    if (to.t_ns <= from.t_ns) return w;
    w.window_s = static_cast<double>(to.t_ns - from.t_ns) * 1e-9;
    const auto delta = [](uint64_t a, uint64_t b) { return static_cast<double>(a >= b ? a - b : 0); };
    w.maps_per_s = delta(to.maps, from.maps) / w.window_s;
    w.pins_per_s = delta(to.pages_pinned, from.pages_pinned) / w.window_s;
    return w;
}

}  // namespace coiommu::loadgen
