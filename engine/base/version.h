// The project's version and the git revision it was built from, for every program's --version.
//
// Thread-safety: pure functions over constants.
#pragma once

#include <string>
#include <string_view>

namespace coiommu {

// "0.1.0".
[[nodiscard]] std::string_view project_version();

// Short commit id of the source tree at build time, "-dirty" appended when it had local changes;
// "unknown" when built outside a git checkout (or what -DCOIOMMU_GIT_REVISION= fixed).
[[nodiscard]] std::string_view git_revision();

// "<program> 0.1.0 (git 1a2b3c4d5e6f)" — the first line of every program's --version.
[[nodiscard]] std::string version_line(std::string_view program);

}  // namespace coiommu
