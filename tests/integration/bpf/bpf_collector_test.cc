// BpfCollector over synthetic bpf/loader snapshots: no libbpf, no privileges (the live tracer is
// covered by tests/integration/bpf/trace_exporter_test.cc).
#include "bpf/metrics/bpf_collector.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>

#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "exporter/collector_set.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using bpf::Log2Hist;
using bpf::ResultClass;
using bpf::VfioOp;

const prometheus::MetricFamily* find_family(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
    for (const auto& f : fs) {
        if (f.name == name) return &f;
    }
    return nullptr;
}

bpf::ProgramInfo program(std::string name, std::string attach, uint32_t id, bool attached) {
    bpf::ProgramInfo p;
    p.program = std::move(name);
    p.attach = std::move(attach);
    p.id = id;
    p.tag = "0123456789abcdef";
    p.attached = attached;
    return p;
}

// A scrape of the vfio_dma tracer alone (what coiommu-trace --exporter serves on a crosvm host).
BpfScrape vfio_only() {
    BpfScrape s;
    s.telemetry.programs = {program("vfio_dma_enter", "tracepoint", 11, true),
                            program("vfio_dma_exit", "tracepoint", 12, true)};
    s.telemetry.vfio_dma.inflight_max_entries = 10240;
    return s;
}

// Everything attached: vfio_dma, the engine USDT program and the fentry hooks.
BpfScrape everything() {
    BpfScrape s = vfio_only();
    s.telemetry.engine = bpf::EngineSnapshot{};
    s.telemetry.kern = bpf::VfioKernSnapshot{};
    s.telemetry.programs.push_back(program("eng_req_start", "usdt", 21, true));
    s.telemetry.programs.push_back(program("vk_do_map", "fentry", 31, true));
    s.slow_threshold = std::chrono::microseconds(500);
    return s;
}

testing::Exposition parse(const std::vector<prometheus::MetricFamily>& fs) {
    auto parsed = testing::parse_exposition(prometheus::TextSerializer().Serialize(fs));
    EXPECT_TRUE(parsed.has_value()) << parsed.error().message();
    return parsed ? *parsed : testing::Exposition{};
}

TEST(BpfCollector, VfioOnlyScrapeHasTheKernelAndProgramFamiliesButNoEngineOnes) {
    const auto fs = bpf_families(vfio_only());
    for (const char* name :
         {"coiommu_bpf_dma_duration_seconds", "coiommu_bpf_dma_calls_total", "coiommu_bpf_dma_bytes_total",
          "coiommu_bpf_dma_argument_read_failures_total", "coiommu_bpf_dma_calls_in_flight",
          "coiommu_bpf_dma_calls_in_flight_limit", "coiommu_bpf_slow_events_total", "coiommu_bpf_events_lost_total",
          "coiommu_bpf_program_info", "coiommu_bpf_program_attached", "coiommu_bpf_program_run_seconds_total",
          "coiommu_bpf_program_runs_total"}) {
        EXPECT_NE(find_family(fs, name), nullptr) << name;
    }
    for (const auto& f : fs) {
        EXPECT_EQ(f.name.rfind("coiommu_bpf_engine_", 0), std::string::npos) << f.name;
        EXPECT_NE(f.name, "coiommu_bpf_kernel_dma_duration_seconds");
        EXPECT_NE(f.name, "coiommu_bpf_slow_threshold_seconds");
    }
    EXPECT_EQ(fs.size(), 12u);
}

TEST(BpfCollector, EngineAndKernelHookFamiliesAppearWhenThoseTracersAreAttached) {
    const auto fs = bpf_families(everything());
    for (const char* name : {"coiommu_bpf_engine_request_duration_seconds", "coiommu_bpf_engine_pages_per_request",
                             "coiommu_bpf_engine_requests_total", "coiommu_bpf_engine_dma_call_duration_seconds",
                             "coiommu_bpf_engine_dma_calls_total", "coiommu_bpf_engine_dma_bytes_total",
                             "coiommu_bpf_engine_unpin_scan_duration_seconds", "coiommu_bpf_engine_unpin_scans_total",
                             "coiommu_bpf_engine_unpin_pages_examined_total", "coiommu_bpf_engine_pages_unpinned_total",
                             "coiommu_bpf_engine_probe_errors_total", "coiommu_bpf_kernel_dma_duration_seconds",
                             "coiommu_bpf_slow_threshold_seconds"}) {
        EXPECT_NE(find_family(fs, name), nullptr) << name;
    }
    EXPECT_EQ(fs.size(), 25u);
}

TEST(BpfCollector, EveryOpAndResultClassIsPresentFromTheFirstScrape) {
    const auto e = parse(bpf_families(vfio_only()));
    for (const char* op : {"map", "unmap", "ioas_map", "ioas_unmap"}) {
        for (const char* result : {"ok", "eexist", "enospc", "enomem", "einval", "other"}) {
            EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", op}, {"result", result}}), 0.0)
                << op << " " << result;
        }
        EXPECT_EQ(e.value("coiommu_bpf_dma_bytes_total", {{"op", op}}), 0.0) << op;
        EXPECT_EQ(e.value("coiommu_bpf_dma_duration_seconds_count", {{"op", op}}), 0.0) << op;
    }
    EXPECT_EQ(e.find("coiommu_bpf_dma_calls_total").size(), 24u);
}

TEST(BpfCollector, CallsAndBytesAreExportedPerOpAndResult) {
    BpfScrape s = vfio_only();
    auto& map = s.telemetry.vfio_dma.calls[static_cast<size_t>(VfioOp::VfioMap)];
    map.by_result[static_cast<size_t>(ResultClass::Ok)] = 40;
    map.by_result[static_cast<size_t>(ResultClass::Enospc)] = 2;
    map.bytes = 42 * 4096;
    s.telemetry.vfio_dma.calls[static_cast<size_t>(VfioOp::IoasUnmap)]
        .by_result[static_cast<size_t>(ResultClass::Other)] = 5;
    const auto e = parse(bpf_families(s));
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "ok"}}), 40.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "map"}, {"result", "enospc"}}), 2.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_calls_total", {{"op", "ioas_unmap"}, {"result", "other"}}), 5.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_bytes_total", {{"op", "map"}}), 42.0 * 4096);
}

TEST(BpfCollector, LatencyHistogramUsesTheLog2SlotsAsSecondsBounds) {
    BpfScrape s = vfio_only();
    Log2Hist& h = s.telemetry.vfio_dma.latency_ns[static_cast<size_t>(VfioOp::VfioMap)];
    h.slots[3] = 1;   // <= 8 ns: below the range, folded into the first bound (256 ns)
    h.slots[10] = 4;  // <= 1024 ns
    h.slots[37] = 2;  // above 2^36 ns: only in +Inf
    h.slots[bpf::kOverflowSlot] = 1;
    h.sum = 123456789;
    h.count = 7;  // lags the slots (a writer raced the read): _count must come from the slots
    const auto fs = bpf_families(s);
    const auto* f = find_family(fs, "coiommu_bpf_dma_duration_seconds");
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->type, prometheus::MetricType::Histogram);
    const auto& m = f->metric[static_cast<size_t>(VfioOp::VfioMap)];
    ASSERT_EQ(m.label.size(), 1u);
    EXPECT_EQ(m.label[0].value, "map");
    const auto& hist = m.histogram;
    ASSERT_EQ(hist.bucket.size(), 29u);  // 2^8 .. 2^36 ns, every one emitted
    EXPECT_DOUBLE_EQ(hist.bucket.front().upper_bound, 256e-9);
    EXPECT_DOUBLE_EQ(hist.bucket.back().upper_bound, std::ldexp(1e-9, 36));
    EXPECT_EQ(hist.bucket[0].cumulative_count, 1u);  // le=256ns holds the 8 ns value
    EXPECT_EQ(hist.bucket[1].cumulative_count, 1u);  // le=512ns: empty, backfilled
    EXPECT_EQ(hist.bucket[2].cumulative_count, 5u);  // le=1024ns
    EXPECT_EQ(hist.bucket.back().cumulative_count, 5u);
    EXPECT_EQ(hist.sample_count, 8u);  // +Inf == _count == the sum of the slots
    EXPECT_DOUBLE_EQ(hist.sample_sum, 123456789e-9);
}

TEST(BpfCollector, HistogramsAreCumulativeWithInfEqualToCountInTheExposition) {
    BpfScrape s = everything();
    for (size_t k = 0; k < bpf::kHistSlots; ++k) {
        s.telemetry.vfio_dma.latency_ns[1].slots[k] = k + 1;
        s.telemetry.engine->request_latency_ns[0].slots[k] = 2 * k;
        s.telemetry.engine->request_pages[1].slots[k] = k % 3;
        s.telemetry.kern->latency_ns[0].slots[k] = 1;
    }
    const auto e = parse(bpf_families(s));
    const auto problems = testing::check_histograms(e);
    EXPECT_TRUE(problems.empty()) << problems.front();
    constexpr uint64_t kTriangle = bpf::kHistSlots * (bpf::kHistSlots + 1) / 2;  // exact: one factor is even
    const double n = static_cast<double>(kTriangle);
    EXPECT_EQ(e.value("coiommu_bpf_dma_duration_seconds_count", {{"op", "unmap"}}), n);
    EXPECT_EQ(e.value("coiommu_bpf_dma_duration_seconds_bucket", {{"op", "unmap"}, {"le", "+Inf"}}), n);
}

TEST(BpfCollector, SlowEventsCountReceivedAndLostEventsAndTheThresholdShowsWhenOn) {
    BpfScrape s = vfio_only();
    s.slow_events_received = 17;
    s.telemetry.vfio_dma.drops.ringbuf_full = 3;
    EXPECT_EQ(parse(bpf_families(s)).value("coiommu_bpf_slow_events_total"), 20.0);
    s.slow_threshold = std::chrono::microseconds(250);
    const auto e = parse(bpf_families(s));
    EXPECT_DOUBLE_EQ(e.value("coiommu_bpf_slow_threshold_seconds"), 250e-6);
}

TEST(BpfCollector, EventsLostAreLabelledByTheMapThatWasFull) {
    BpfScrape s = everything();
    s.telemetry.vfio_dma.drops.inflight_full = 4;
    s.telemetry.vfio_dma.drops.ringbuf_full = 5;
    s.telemetry.vfio_dma.drops.read_fault = 6;
    const auto e = parse(bpf_families(s));
    EXPECT_EQ(e.value("coiommu_bpf_events_lost_total", {{"map", "vfio_dma_flight"}}), 4.0);
    EXPECT_EQ(e.value("coiommu_bpf_events_lost_total", {{"map", "vfio_dma_events"}}), 5.0);
    EXPECT_EQ(e.value("coiommu_bpf_dma_argument_read_failures_total"), 6.0);
}

TEST(BpfCollector, ProgramsCarryInfoLabelsAttachStateAndRunTimeInSeconds) {
    BpfScrape s = vfio_only();
    s.telemetry.programs[1].attached = false;
    s.telemetry.programs[0].run_time_ns = 2'500'000'000;
    s.telemetry.programs[0].run_cnt = 1000;
    const auto e = parse(bpf_families(s));
    EXPECT_EQ(
        e.value("coiommu_bpf_program_info",
                {{"program", "vfio_dma_enter"}, {"id", "11"}, {"tag", "0123456789abcdef"}, {"attach", "tracepoint"}}),
        1.0);
    EXPECT_EQ(e.value("coiommu_bpf_program_attached", {{"program", "vfio_dma_enter"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_bpf_program_attached", {{"program", "vfio_dma_exit"}}), 0.0);
    EXPECT_DOUBLE_EQ(e.value("coiommu_bpf_program_run_seconds_total", {{"program", "vfio_dma_enter"}}), 2.5);
    EXPECT_EQ(e.value("coiommu_bpf_program_runs_total", {{"program", "vfio_dma_enter"}}), 1000.0);
}

TEST(BpfCollector, EngineSnapshotIsExportedUnderItsOwnBpfEnginePrefix) {
    BpfScrape s = everything();
    s.telemetry.engine->requests[1] = {9, 1};
    s.telemetry.engine->dma_calls[0] = {30, 3, 33 * 4096};
    s.telemetry.engine->scans[0] = {5, 500, 50};
    s.telemetry.engine->bad_kind = 8;
    s.telemetry.engine->request_pages[1].slots[4] = 10;  // 16 pages
    const auto e = parse(bpf_families(s));
    EXPECT_EQ(e.value("coiommu_bpf_engine_requests_total", {{"kind", "batch"}, {"result", "ok"}}), 9.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_requests_total", {{"kind", "batch"}, {"result", "failed"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_dma_calls_total", {{"op", "map"}, {"result", "failed"}}), 3.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_dma_bytes_total", {{"op", "map"}}), 33.0 * 4096);
    EXPECT_EQ(e.value("coiommu_bpf_engine_unpin_scans_total", {{"kind", "lru"}}), 5.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_unpin_pages_examined_total", {{"kind", "lru"}}), 500.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_pages_unpinned_total", {{"kind", "lru"}}), 50.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_probe_errors_total"), 8.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_pages_per_request_bucket", {{"kind", "batch"}, {"le", "16"}}), 10.0);
    EXPECT_EQ(e.value("coiommu_bpf_engine_pages_per_request_bucket", {{"kind", "batch"}, {"le", "8"}}), 0.0);
}

TEST(BpfCollector, ProgramsSharingANameAreDroppedAndReported) {
    BpfScrape s = vfio_only();
    s.telemetry.programs.push_back(program("vfio_dma_enter", "usdt", 99, false));
    const BpfCollector c([s]() -> Result<BpfScrape> { return s; });
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), EEXIST);
    const auto* attached = find_family(out, "coiommu_bpf_program_attached");
    ASSERT_NE(attached, nullptr);
    EXPECT_EQ(attached->metric.size(), 2u);
    EXPECT_NE(find_family(out, "coiommu_bpf_dma_calls_total"), nullptr);  // the rest is still there
}

TEST(BpfCollector, ASourceErrorAppendsNothingAndIsReturned) {
    const BpfCollector c([]() -> Result<BpfScrape> { return make_error(EBADF, "read map"); });
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), EBADF);
    EXPECT_TRUE(out.empty());
}

TEST(BpfCollector, AnEmptySourceIsInvalid) {
    const BpfCollector c{BpfCollector::Source{}};
    std::vector<prometheus::MetricFamily> out;
    EXPECT_ERR(c.collect_into(out), EINVAL);
}

TEST(BpfCollector, AFailingSourceShowsAsAnUnsuccessfulCollectorInTheSet) {
    int calls = 0;
    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK(set->add("bpf", std::make_shared<BpfCollector>([&calls]() -> Result<BpfScrape> {
                           if (++calls == 2) return make_error(EIO, "map read");
                           return vfio_only();
                       })));
    auto first = parse(set->Collect());
    EXPECT_EQ(first.value("coiommu_exporter_collector_success", {{"collector", "bpf"}}), 1.0);
    auto second = parse(set->Collect());
    EXPECT_EQ(second.value("coiommu_exporter_collector_success", {{"collector", "bpf"}}), 0.0);
    EXPECT_EQ(second.value("coiommu_exporter_collect_errors_total", {{"collector", "bpf"}}), 1.0);
    EXPECT_TRUE(second.find("coiommu_bpf_dma_calls_total").empty());
}

TEST(BpfCollector, FullScrapePassesPromtoolCheckMetricsWithNoFindings) {
    BpfScrape s = everything();
    s.telemetry.vfio_dma.latency_ns[0].slots[12] = 3;
    s.telemetry.programs[0].run_time_ns = 1000;
    auto set = std::make_shared<CollectorSet>();
    ASSERT_OK(set->add("bpf", std::make_shared<BpfCollector>([s]() -> Result<BpfScrape> { return s; })));
    const std::string text = prometheus::TextSerializer().Serialize(set->Collect());
    auto lint = testing::promtool_check_metrics(text);
    if (!lint && lint.error().code == ENOENT) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
    ASSERT_TRUE(lint.has_value()) << lint.error().message();
    EXPECT_EQ(lint->exit_status, 0) << lint->output;
    EXPECT_EQ(lint->output, "") << lint->output;
}

}  // namespace
}  // namespace coiommu::exporter
