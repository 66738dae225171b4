#include "engine/daemon/observability.h"

#include <fmt/format.h>

namespace coiommu::daemon {

std::string tracing_unavailable(const DaemonConfig& cfg, std::string_view why) {
    if (cfg.tracing == TracingMode::Off) return "off (--tracing off)";
    return fmt::format("not available: {}", why);
}

}  // namespace coiommu::daemon
