// coiommu-synthetic-exporter: serves the exporter's full catalogue over a synthetic engine load (one
// VM, vm="synthetic"), for the live-Prometheus harness (scripts/prometheus-live.sh) and dashboard
// tests while no real engine runs. Prints "listening <host:port>" on stdout once serving, then runs until SIGINT/
// SIGTERM or --duration.
//
// usage: coiommu-synthetic-exporter [--address 127.0.0.1:0] [--duration SECONDS] [--pace-us N]
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "engine/base/log.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/engine_stats.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#include "tests/integration/exporter/synthetic_load.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

int usage() {
    std::fprintf(stderr,
                 "usage: coiommu-synthetic-exporter [--address HOST:PORT] [--duration SECONDS] [--pace-us N]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    using namespace coiommu;
    std::string address = "127.0.0.1:0";
    long duration_s = 0;
    long pace_us = 50;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (i + 1 >= argc) return usage();
        if (arg == "--address") {
            address = argv[++i];
        } else if (arg == "--duration") {
            duration_s = std::strtol(argv[++i], nullptr, 10);
        } else if (arg == "--pace-us") {
            pace_us = std::strtol(argv[++i], nullptr, 10);
        } else {
            return usage();
        }
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);

    telemetry::StatsRegistry stats(1);
    exporter::ConfigInfo config;
    config.backend = "fake";
    auto set = std::make_shared<exporter::CollectorSet>();
    auto added = set->add("engine", std::make_shared<exporter::EngineCollector>(
                                        [&] { return stats.snapshot(); },
                                        exporter::EngineInfo{exporter::this_build(), config}, "synthetic"));
    if (added) added = set->add("process", std::make_shared<exporter::ProcessCollector>());
    if (!added) {
        std::fprintf(stderr, "%s\n", added.error().message().c_str());
        return 1;
    }
    auto exposer = exporter::Exposer::start({.address = address});
    if (!exposer) {
        std::fprintf(stderr, "%s\n", exposer.error().message().c_str());
        return 1;
    }
    if (auto st = exposer->register_collectable(set); !st) {
        std::fprintf(stderr, "%s\n", st.error().message().c_str());
        return 1;
    }
    exporter::testing::SyntheticLoad load(stats, std::chrono::microseconds(pace_us));
    std::printf("listening %s\n", exposer->address().c_str());
    std::fflush(stdout);

    const uint64_t deadline =
        duration_s > 0 ? telemetry::monotonic_ns() + static_cast<uint64_t>(duration_s) * 1'000'000'000u : 0;
    while (g_stop == 0 && (deadline == 0 || telemetry::monotonic_ns() < deadline)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
}
