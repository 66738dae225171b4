// coiommu-load: the load generator (see engine/loadgen/cli.h and --help).
#include <cstdio>
#include <exception>
#include <string_view>
#include <vector>

#include "engine/loadgen/cli.h"

int main(int argc, char** argv) {
    std::vector<std::string_view> args(argv + 1, argv + argc);
    try {
        return coiommu::loadgen::run_cli(args, stdout, stderr);
    } catch (const std::exception& e) {  // third-party code (TBB, the standard library) may throw
        std::fprintf(stderr, "coiommu-load: %s\n", e.what());
        return 1;
    }
}
