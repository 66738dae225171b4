// Statistics for benchmarks that alternate two phases, A and B, in one run (A B, B A, ...) and
// compare them round by round: on a shared host adjacent phases see the same neighbours, so the
// paired difference cancels slow drift that the plain means do not.
//
// Header-only; used by tests/bench/exporter/engine_scrape_bench.cc and
// tests/bench/bpf/engine_usdt_bench.cc.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <numeric>
#include <vector>

namespace coiommu::bench {

// User + system CPU time of this whole process (every thread), seconds.
inline double process_cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    const auto tv = [](const timeval& t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
    };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

inline double mean(const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

// Sample standard deviation (0 for fewer than two values).
inline double stddev(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    const double m = mean(v);
    double acc = 0;
    for (double x : v) acc += (x - m) * (x - m);
    return std::sqrt(acc / static_cast<double>(v.size() - 1));
}

// Nearest-rank percentile, q in [0, 1]; 0 when empty.
inline double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(std::llround(q * static_cast<double>(v.size() - 1))))];
}

// Prints both phases' means and spreads, then B against A: the difference of the means and the
// per-round differences (mean, median, standard error). `a` and `b` hold one value per round.
inline void report_paired(const char* what, const char* a_name, const char* b_name, const std::vector<double>& a,
                          const std::vector<double>& b) {
    const double ma = mean(a), mb = mean(b);
    std::vector<double> paired;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) paired.push_back(100 * (b[i] - a[i]) / a[i]);
    std::printf("\n%s: %s (A) mean %.0f (sd %.1f%%), %s (B) mean %.0f (sd %.1f%%)\n", what, a_name, ma,
                100 * stddev(a) / ma, b_name, mb, 100 * stddev(b) / mb);
    std::printf(
        "  B vs A: means %+.2f%%; paired by round: mean %+.2f%%, median %+.2f%%, standard error %.2f%% (%zu "
        "rounds)\n",
        100 * (mb - ma) / ma, mean(paired), percentile(paired, 0.5),
        stddev(paired) / std::sqrt(static_cast<double>(paired.size())), paired.size());
}

}  // namespace coiommu::bench
