// Number formatting shared by the run driver's progress line and the reports: counts and
// durations with units, pages in MiB. Kept apart from report.h so that run.cc (which report.h
// depends on for RunResult) needs nothing of the reports.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

namespace coiommu::loadgen {

// "950", "12.3k", "4.56M", "1.2G".
[[nodiscard]] std::string human_count(double v);
// "850ns", "12.3us", "4.56ms", "1.23s".
[[nodiscard]] std::string human_ns(uint64_t ns);
[[nodiscard]] double pages_to_mib(double pages);

}  // namespace coiommu::loadgen
