#include "tests/testing/log_capture.h"

#include <fmt/format.h>

namespace coiommu::testing {

LogCapture::LogCapture() {
    log::set_sink([this](log::Level l, std::string_view component, std::string_view message) {
        static constexpr const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
        std::lock_guard lock(mu_);
        lines_.push_back(fmt::format("{} {}: {}", kNames[static_cast<int>(l)], component, message));
    });
}

LogCapture::~LogCapture() { log::set_sink(nullptr); }

std::vector<std::string> LogCapture::lines() const {
    std::lock_guard lock(mu_);
    return lines_;
}

bool LogCapture::contains(const std::string& needle) const {
    std::lock_guard lock(mu_);
    for (const auto& l : lines_) {
        if (l.find(needle) != std::string::npos) return true;
    }
    return false;
}

}  // namespace coiommu::testing
