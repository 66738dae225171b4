#include "engine/loadgen/units.h"

#include <cmath>

#include <fmt/format.h>

#include "engine/base/addr.h"

namespace coiommu::loadgen {

std::string human_count(double v) {
    if (!std::isfinite(v)) return "-";
    if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
    if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
    if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
    return fmt::format("{:.0f}", v);
}

std::string human_ns(uint64_t ns) {
    const auto d = static_cast<double>(ns);
    if (ns >= 1'000'000'000) return fmt::format("{:.2f}s", d / 1e9);
    if (ns >= 1'000'000) return fmt::format("{:.2f}ms", d / 1e6);
    if (ns >= 1'000) return fmt::format("{:.1f}us", d / 1e3);
    return fmt::format("{}ns", ns);
}

double pages_to_mib(double pages) { return pages * static_cast<double>(kPageSize) / (1024.0 * 1024.0); }

}  // namespace coiommu::loadgen
