// exporter/METRICS.md is the reference the README and dashboards quote: it must list exactly the
// families the collectors emit.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "engine/telemetry/engine_stats.h"
#include "bpf/metrics/bpf_collector.h"
#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/process_collector.h"
#include "exporter/server_collector.h"
#include "tests/testing/expect.h"

namespace coiommu::exporter {
namespace {

std::set<std::string> documented_names() {
    std::ifstream in(std::string(COIOMMU_SOURCE_DIR) + "/exporter/METRICS.md");
    EXPECT_TRUE(in.good()) << "cannot read exporter/METRICS.md";
    std::set<std::string> names;
    const std::regex first_cell(R"(^\| `([a-z_][a-z0-9_]*)` \|)");
    std::string line;
    while (std::getline(in, line)) {
        std::smatch m;
        if (std::regex_search(line, m, first_cell)) names.insert(m[1]);
    }
    return names;
}

std::set<std::string> emitted_names() {
    const telemetry::StatsRegistry stats(1);
    auto set = std::make_shared<CollectorSet>();
    EXPECT_OK(set->add("engine", std::make_shared<EngineCollector>([&] { return stats.snapshot(); }, EngineInfo{})));
    EXPECT_OK(set->add("server", std::make_shared<ServerCollector>([] { return ServerStats{}; })));
    EXPECT_OK(set->add("process", std::make_shared<ProcessCollector>()));
    // Every BPF tracer attached (vfio_dma, engine USDT, fentry hooks) and slow events on: the
    // conditional families are emitted too.
    EXPECT_OK(set->add("bpf", std::make_shared<BpfCollector>([]() -> Result<BpfScrape> {
                           BpfScrape s;
                           s.telemetry.engine = bpf::EngineSnapshot{};
                           s.telemetry.kern = bpf::VfioKernSnapshot{};
                           s.slow_threshold = std::chrono::milliseconds(1);
                           return s;
                       })));
    std::set<std::string> names;
    for (const auto& f : set->Collect()) names.insert(f.name);
    return names;
}

TEST(MetricsDoc, ListsEveryEmittedFamily) {
    const auto documented = documented_names();
    for (const auto& name : emitted_names()) EXPECT_EQ(documented.count(name), 1u) << name << " is not in METRICS.md";
}

TEST(MetricsDoc, DocumentsNoFamilyThatIsNotEmitted) {
    const auto emitted = emitted_names();
    for (const auto& name : documented_names()) {
        if (name.rfind("exposer_", 0) == 0) continue;  // prometheus-cpp's own
        EXPECT_EQ(emitted.count(name), 1u) << name << " is documented but not emitted";
    }
}

}  // namespace
}  // namespace coiommu::exporter
