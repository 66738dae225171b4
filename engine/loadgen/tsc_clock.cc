#include "engine/loadgen/tsc_clock.h"

#include <fstream>
#include <string>

namespace coiommu::loadgen {
namespace {

// Whether /proc/cpuinfo advertises a TSC that ticks at a constant rate through P- and C-states.
bool invariant_tsc() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("flags", 0) != 0) continue;
        const std::string padded = line + " ";
        return padded.find(" constant_tsc ") != std::string::npos && padded.find(" nonstop_tsc ") != std::string::npos;
    }
    return false;
}

}  // namespace

TscClock TscClock::calibrate(uint64_t window_ns) {
    TscClock c;
#if defined(__x86_64__)
    if (!invariant_tsc()) return c;
    const uint64_t ns0 = telemetry::monotonic_ns();
    const uint64_t t0 = __rdtsc();
    uint64_t ns1 = ns0;
    while (ns1 - ns0 < window_ns) ns1 = telemetry::monotonic_ns();
    const uint64_t t1 = __rdtsc();
    if (t1 <= t0) return c;
    // ns per tick in 32.32 fixed point: the 20 ms window gives a relative error near 1e-6.
    __extension__ using U128 = unsigned __int128;
    c.mult_ = static_cast<uint64_t>((static_cast<U128>(ns1 - ns0) << kShift) / (t1 - t0));
    c.use_tsc_ = c.mult_ != 0;
#else
    (void)window_ns;
#endif
    return c;
}

double TscClock::ticks_per_ns() const {
    if (!use_tsc_) return 1.0;
    return static_cast<double>(uint64_t{1} << kShift) / static_cast<double>(mult_);
}

}  // namespace coiommu::loadgen
