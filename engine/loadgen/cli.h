// The coiommu-load program as a function, so tests can run it in-process.
//
// Thread-safety: one call at a time per process (it installs a SIGINT handler for the duration).
#pragma once

#include <cstdio>
#include <string_view>
#include <vector>

namespace coiommu::loadgen {

// Runs coiommu-load with argv[1..] = args, writing the progress line and summaries to `out` and
// errors to `err`. Returns the exit status: 0 every run passed; 1 a run failed its checks or could
// not be set up, or an output file could not be written; 2 bad command line (message on `err`).
[[nodiscard]] int run_cli(const std::vector<std::string_view>& args, std::FILE* out, std::FILE* err);

}  // namespace coiommu::loadgen
