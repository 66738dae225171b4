#include "engine/base/version.h"

#include <fmt/format.h>

#include "coiommu_revision.h"  // generated into the build tree: COIOMMU_GIT_REVISION

namespace coiommu {

std::string_view project_version() { return COIOMMU_PROJECT_VERSION; }

std::string_view git_revision() { return COIOMMU_GIT_REVISION; }

std::string version_line(std::string_view program) {
    return fmt::format("{} {} (git {})", program, project_version(), git_revision());
}

}  // namespace coiommu
