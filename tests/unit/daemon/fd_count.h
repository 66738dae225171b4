// Open file descriptors of this process (/proc/self/fd), for leak checks.
#pragma once

#include <dirent.h>

#include <cstddef>

namespace coiommu::daemon::testing {

inline std::size_t open_fds() {
    std::size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return 0;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    return n - 1;  // the DIR's own fd
}

}  // namespace coiommu::daemon::testing
