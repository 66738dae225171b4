// Captures log lines for the duration of a test (restores stderr logging on destruction).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "engine/base/log.h"

namespace coiommu::testing {

class LogCapture {
public:
    LogCapture();
    ~LogCapture();
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    // Lines as "LEVEL component: message".
    [[nodiscard]] std::vector<std::string> lines() const;
    // Whether any captured line contains `needle`.
    [[nodiscard]] bool contains(const std::string& needle) const;

private:
    mutable std::mutex mu_;
    std::vector<std::string> lines_;
};

}  // namespace coiommu::testing
