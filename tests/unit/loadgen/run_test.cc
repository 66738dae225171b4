// Short runs (0.4 s) of every workload and strategy against the FakeBackend with its latency
// model: the safety invariant held, every request completed, the host pinned only pages the guest
// asked for, the counts add up, teardown leaves nothing mapped, and the JSON report parses and
// carries every field. Tests of one process share a cell's run (ctest runs one test per process).
#include "engine/loadgen/run.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "engine/loadgen/report.h"
#include "tests/testing/expect.h"
#include "tests/unit/loadgen/json_parse.h"

namespace coiommu::loadgen {
namespace {

using workers::Variant;

LoadOptions quick_options() {
    LoadOptions o;
    o.vcpus = 2;
    o.ram_bytes = uint64_t{64} << 20;
    o.duration = std::chrono::milliseconds(400);
    o.buffer_pages = 8;
    o.ring_buffers = 16;
    o.balloon_pages = 256;
    o.balloon_interval = std::chrono::milliseconds(20);
    o.log_level = log::Level::Error;
    return o;
}

struct Cell {
    WorkloadKind workload;
    StrategyKind strategy;
    Variant engine;
};

std::string cell_name(const Cell& c) {
    std::string n = RunSpec{c.workload, c.strategy, c.engine}.label();
    for (char& ch : n) {
        if (ch == '/') ch = '_';
    }
    return n;
}

// Runs each cell once per process.
const RunResult& result_of(const Cell& c) {
    static std::map<std::string, RunResult> cache;
    const std::string key = cell_name(c);
    auto it = cache.find(key);
    if (it == cache.end()) {
        const LoadOptions o = quick_options();
        auto r = run_once(o, RunSpec{c.workload, c.strategy, c.engine}, RunControl{});
        EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
        it = cache.emplace(key, r ? std::move(*r) : RunResult{}).first;
    }
    return it->second;
}

std::string failed_checks(const RunResult& r) {
    std::string out;
    for (const Check& c : r.checks) {
        if (!c.passed) out += c.name + ": " + c.detail + "\n";
    }
    return out;
}

const Cell kCells[] = {
    {WorkloadKind::Stream, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Ring, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Zipf, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Random, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Balloon, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Mix, StrategyKind::Coiommu, Variant::Fast},
    {WorkloadKind::Random, StrategyKind::Coiommu, Variant::Seed},
    {WorkloadKind::Balloon, StrategyKind::Coiommu, Variant::Seed},
    {WorkloadKind::Stream, StrategyKind::Strict, Variant::Fast},
    {WorkloadKind::Zipf, StrategyKind::Strict, Variant::Fast},
    {WorkloadKind::Mix, StrategyKind::Strict, Variant::Fast},
    {WorkloadKind::Ring, StrategyKind::Static, Variant::Fast},
    {WorkloadKind::Balloon, StrategyKind::Static, Variant::Fast},
};

const Check* find_check(const RunResult& r, std::string_view name) {
    for (const Check& c : r.checks) {
        if (c.name == name) return &c;
    }
    return nullptr;
}

// ctest runs every test in its own process, so each cell's run is one test that looks at every
// property of its result (a run per property would multiply the suite's time).
class ShortRun : public ::testing::TestWithParam<Cell> {};

TEST_P(ShortRun, IsSound) {
    const Cell& c = GetParam();
    const RunResult& r = result_of(c);

    // Every final check passed (each names what it compared).
    EXPECT_TRUE(r.passed()) << failed_checks(r);
    ASSERT_FALSE(r.checks.empty());

    // It did work.
    EXPECT_GT(r.maps, 0u);
    EXPECT_EQ(r.pages_mapped, r.maps * 8);
    EXPECT_GT(r.timeline.size(), 2u);

    // The safety invariant was checked around every emulated DMA and held.
    EXPECT_TRUE(r.invariant_checked);
    EXPECT_EQ(r.invariant_checks, 2 * r.maps);
    EXPECT_EQ(r.invariant_violations, 0u);

    // Every request completed (none timed out, none found its slot still busy).
    EXPECT_EQ(r.requests_completed, r.notifications);
    EXPECT_EQ(r.failures_by_reason[static_cast<std::size_t>(MapFailure::Timeout)], 0u);
    EXPECT_EQ(r.failures_by_reason[static_cast<std::size_t>(MapFailure::SlotBusy)], 0u);
    if (c.strategy != StrategyKind::Static) {
        EXPECT_GT(r.notifications, 0u);
    }

    // Every map was unmapped again.
    EXPECT_EQ(r.unmaps, r.maps);
    EXPECT_EQ(r.pages_unmapped, r.pages_mapped);

    // Pinned memory never exceeded what the guest mapped.
    if (c.strategy == StrategyKind::Coiommu) {
        EXPECT_LE(r.pinned_peak_pages, r.guest_touched_pages);
        const Check* within = find_check(r, "pinned_within_guest_mapped");
        ASSERT_NE(within, nullptr);
        EXPECT_TRUE(within->passed) << within->detail;
    } else if (c.strategy == StrategyKind::Strict) {
        EXPECT_LE(r.pinned_peak_pages, uint64_t{2} * 5 * 8);  // 2 vCPUs x (lifetime 4 + 1) x 8 pages
    } else {
        EXPECT_EQ(r.pinned_peak_pages, (uint64_t{64} << 20) / kPageSize);
    }

    // The counts add up: pinned - unpinned = pinned now, for the backend's counters, the fake
    // container's own record of its mappings and the engine's counters and gauge.
    EXPECT_EQ(r.pages_pinned_total - r.pages_unpinned_total, r.pinned_end_pages);
    const Check* live = find_check(r, "backend_mappings_match_counts");
    ASSERT_NE(live, nullptr);
    EXPECT_TRUE(live->passed) << live->detail;
    if (r.engine) {
        EXPECT_EQ(r.engine->pages_pinned - r.engine->pages_unpinned, r.engine->pinned_pages);
        EXPECT_EQ(r.engine->pinned_pages, r.pinned_end_pages);
    }
    EXPECT_EQ(r.engine.has_value(), c.strategy == StrategyKind::Coiommu);

    // Teardown left no mapping behind.
    EXPECT_EQ(r.checks.back().name, "teardown_left_no_mapping");
    EXPECT_TRUE(r.checks.back().passed) << r.checks.back().detail;

    // CPU time of both vCPU threads is reported.
    int vcpus = 0;
    for (const ThreadCpu& t : r.cpu) vcpus += t.name.rfind("load_vcpu", 0) == 0 && t.cpu_s > 0;
    EXPECT_EQ(vcpus, 2);
}

INSTANTIATE_TEST_SUITE_P(Cells, ShortRun, ::testing::ValuesIn(kCells),
                         [](const ::testing::TestParamInfo<Cell>& i) { return cell_name(i.param); });

// ---- workload-specific stories -------------------------------------------------------------------------

TEST(BalloonRun, CoiommuGivesBalloonedPagesBack) {
    // A request may fail when a coalesced extent reaches past the chunk into a page still in use
    // (the engine unpins an extent only as a whole): most succeed, and a Success really unmapped
    // every page of the chunk.
    const RunResult& r = result_of({WorkloadKind::Balloon, StrategyKind::Coiommu, Variant::Fast});
    EXPECT_GT(r.balloon_requests, 0u);
    EXPECT_GT(r.balloon_success, r.balloon_requests / 2);
    EXPECT_EQ(r.balloon_violations, 0u);
}

TEST(BalloonRun, StaticPinningCannotGivePagesBack) {
    const RunResult& r = result_of({WorkloadKind::Balloon, StrategyKind::Static, Variant::Fast});
    EXPECT_GT(r.balloon_requests, 0u);
    EXPECT_EQ(r.balloon_failed, r.balloon_requests);
}

TEST(RingRun, CoiommuStopsAskingOnceTheRingIsPinned) {
    // 2 vCPUs x 16 buffers: after the first lap every map finds its pages PINNED, so there is at
    // most one request per ring buffer however many laps the run makes.
    const RunResult& r = result_of({WorkloadKind::Ring, StrategyKind::Coiommu, Variant::Fast});
    EXPECT_LE(r.notifications, 32u);
    EXPECT_GT(r.maps, 2u * 32);
}

TEST(StrictRun, EveryMapAndUnmapIsAnIommuRequest) {
    const RunResult& r = result_of({WorkloadKind::Stream, StrategyKind::Strict, Variant::Fast});
    EXPECT_EQ(r.notifications, r.maps + r.unmaps);
    EXPECT_EQ(r.dma_map_calls, r.maps);
    EXPECT_EQ(r.dma_unmap_calls, r.unmaps);
}

TEST(Run, NullBackendSkipsTheInvariantAndSaysSo) {
    LoadOptions o = quick_options();
    o.backend = BackendKind::Null;
    o.duration = std::chrono::milliseconds(200);
    ASSERT_OK_AND_ASSIGN(RunResult r,
                         run_once(o, RunSpec{WorkloadKind::Ring, StrategyKind::Coiommu, Variant::Fast}, RunControl{}));
    EXPECT_FALSE(r.invariant_checked);
    EXPECT_NE(r.invariant_note.find("skipped"), std::string::npos);
    EXPECT_TRUE(r.passed()) << failed_checks(r);
}

TEST(Run, TimedLifetimeRuns) {
    LoadOptions o = quick_options();
    o.lifetime = Lifetime{0, std::chrono::microseconds(200)};
    o.duration = std::chrono::milliseconds(200);
    ASSERT_OK_AND_ASSIGN(RunResult r,
                         run_once(o, RunSpec{WorkloadKind::Random, StrategyKind::Strict, Variant::Fast}, RunControl{}));
    EXPECT_TRUE(r.passed()) << failed_checks(r);
    EXPECT_GT(r.maps, 0u);
}

TEST(Run, RateLimitsTheOperations) {
    LoadOptions o = quick_options();
    o.rate = 1000;  // 1000 maps/s over both vCPUs
    o.duration = std::chrono::milliseconds(500);
    ASSERT_OK_AND_ASSIGN(RunResult r,
                         run_once(o, RunSpec{WorkloadKind::Ring, StrategyKind::Static, Variant::Fast}, RunControl{}));
    // Never faster than the rate; slower only when the machine cannot keep up (a loaded CI box
    // under a sanitizer), hence the generous lower bound.
    EXPECT_LE(r.maps_per_s, 1100);
    EXPECT_GE(r.maps_per_s, 500);
}

TEST(Run, CancelEndsTheRunEarly) {
    LoadOptions o = quick_options();
    o.duration = std::chrono::seconds(30);
    std::atomic<bool> cancel{true};
    RunControl c;
    c.cancel = &cancel;
    ASSERT_OK_AND_ASSIGN(RunResult r, run_once(o, RunSpec{WorkloadKind::Ring, StrategyKind::Static, Variant::Fast}, c));
    EXPECT_LT(r.duration_s, 1.0);
}

TEST(Run, ATooSmallGuestIsASetupError) {
    LoadOptions o = quick_options();
    o.ram_bytes = uint64_t{16} << 20;
    o.vcpus = 64;
    o.buffer_pages = 4096;
    EXPECT_ERR(run_once(o, RunSpec{}, RunControl{}), EINVAL);
}

// ---- the JSON report of real runs --------------------------------------------------------------------------

const char* const kRunFields[] = {"label",
                                  "workload",
                                  "strategy",
                                  "engine",
                                  "backend",
                                  "served_by",
                                  "passed",
                                  "setup_s",
                                  "duration_s",
                                  "operations.maps",
                                  "operations.map_failures",
                                  "operations.unmaps",
                                  "operations.unmap_failures",
                                  "operations.pages_mapped",
                                  "operations.pages_unmapped",
                                  "operations.skipped",
                                  "operations.maps_per_s",
                                  "operations.pages_per_s",
                                  "requests.sent",
                                  "requests.completed",
                                  "requests.pages_requested",
                                  "latency_ns.map.p50",
                                  "latency_ns.map.p90",
                                  "latency_ns.map.p99",
                                  "latency_ns.map.p999",
                                  "latency_ns.map.max",
                                  "latency_ns.map.min",
                                  "latency_ns.map.mean",
                                  "latency_ns.map.count",
                                  "latency_ns.request.p99",
                                  "latency_ns.unmap.p99",
                                  "latency_ns.balloon.p99",
                                  "memory.pinned_peak_pages",
                                  "memory.pinned_mean_pages",
                                  "memory.pinned_end_pages",
                                  "memory.pinned_peak_mib",
                                  "memory.pinned_mean_mib",
                                  "memory.pages_pinned",
                                  "memory.pages_unpinned",
                                  "memory.pins_per_s",
                                  "memory.guest_touched_pages",
                                  "dma.map_calls",
                                  "dma.unmap_calls",
                                  "dma.map_failures",
                                  "dma.unmap_failures",
                                  "dma.entries_peak",
                                  "dma.entry_limit",
                                  "failures.not_pinned",
                                  "failures.timeout",
                                  "failures.slot_busy",
                                  "failures.dtt_no_memory",
                                  "failures.map_count_cap",
                                  "failures.out_of_range",
                                  "failures.iommu_status",
                                  "failures.iommu_error",
                                  "failures.other",
                                  "invariant.checked",
                                  "invariant.note",
                                  "invariant.checks",
                                  "invariant.violations",
                                  "balloon.requests",
                                  "balloon.success",
                                  "balloon.failed",
                                  "balloon.aborted",
                                  "balloon.violations",
                                  "balloon.pages",
                                  "checks",
                                  "cpu.process_s",
                                  "cpu.threads",
                                  "timeline"};

const char* const kEngineFields[] = {"config",
                                     "requests_single",
                                     "requests_batch",
                                     "requests_failed",
                                     "pages_requested",
                                     "pages_pinned",
                                     "pages_already_pinned",
                                     "pages_unpinned",
                                     "pinned_pages",
                                     "dma_map_calls",
                                     "dma_unmap_calls",
                                     "request_p50_ns",
                                     "request_p99_ns",
                                     "balloon_success",
                                     "balloon_failed",
                                     "lru_scans",
                                     "pin_failures.vfio_map",
                                     "pin_failures.no_space",
                                     "pin_failures.invalid_request",
                                     "pin_failures.other",
                                     "unpin_attempts.unpinned",
                                     "unpin_attempts.not_pinned",
                                     "unpin_attempts.not_unpinned",
                                     "unpin_attempts.failed",
                                     "unpin_attempts.parked"};

const char* const kTimelineFields[] = {"t_s",      "pinned_pages", "dma_entries", "maps",       "pages_mapped",
                                       "failures", "maps_per_s",   "pins_per_s",  "map_p99_ns", "engine_pinned_pages"};

TEST(JsonReport, ParsesAndCarriesEveryField) {
    const RunResult& coiommu_run = result_of({WorkloadKind::Mix, StrategyKind::Coiommu, Variant::Fast});
    std::vector<RunResult> runs{coiommu_run, result_of({WorkloadKind::Mix, StrategyKind::Strict, Variant::Fast})};
    const auto parsed = test::JsonParser::parse(render_json(quick_options(), runs));
    ASSERT_TRUE(parsed.has_value()) << "the report is not valid JSON";
    const test::JsonValue& doc = *parsed;

    ASSERT_TRUE(doc["runs"].is_array());
    ASSERT_EQ(doc["runs"].array().size(), 2u);
    for (const test::JsonValue& run : doc["runs"].array()) {
        for (const char* f : kRunFields) EXPECT_NE(run.path(f), nullptr) << f;
        ASSERT_GT(run["timeline"].array().size(), 2u);
        for (const char* f : kTimelineFields) EXPECT_NE(run["timeline"].array()[0].get(f), nullptr) << f;
        ASSERT_FALSE(run["checks"].array().empty());
        EXPECT_TRUE(run["checks"].array()[0]["name"].is_string());
        EXPECT_TRUE(run["checks"].array()[0]["passed"].is_bool());
        ASSERT_FALSE(run.at("cpu.threads").array().empty());
        EXPECT_TRUE(run.at("cpu.threads").array()[0]["cpu_s"].is_number());
    }

    // Engine figures for the coiommu run only.
    const test::JsonValue& coiommu = doc["runs"].array()[0];
    const test::JsonValue& strict = doc["runs"].array()[1];
    ASSERT_TRUE(coiommu["engine_stats"].is_object());
    for (const char* f : kEngineFields) EXPECT_NE(coiommu["engine_stats"].path(f), nullptr) << f;
    ASSERT_NE(strict.get("engine_stats"), nullptr);
    EXPECT_TRUE(strict["engine_stats"].is_null());
    EXPECT_EQ(coiommu["engine"].string(), "fast");
    EXPECT_TRUE(strict["engine"].is_null());

    // The numbers are the run's.
    EXPECT_EQ(coiommu.at("operations.maps").number(), static_cast<double>(coiommu_run.maps));
    EXPECT_EQ(coiommu.at("memory.pinned_peak_pages").number(), static_cast<double>(coiommu_run.pinned_peak_pages));
    EXPECT_EQ(coiommu.at("latency_ns.map.p99").number(), static_cast<double>(coiommu_run.map_latency.p99));
    EXPECT_EQ(coiommu["label"].string(), "coiommu/fast/mix");

    // Options and the comparison (no seed run here: the ratios are null).
    EXPECT_EQ(doc["tool"].string(), "coiommu-load");
    EXPECT_TRUE(doc["ok"].is_bool());
    for (const char* f : {"vcpus", "ram_bytes", "workloads", "buffer_pages", "lifetime_ops", "think_us", "rate",
                          "duration_s", "seed", "engines", "strategies", "backend", "engine_opts", "engine_config",
                          "latency_model", "entry_limit", "zipf_s", "ring_buffers", "balloon_pages"}) {
        EXPECT_NE(doc.path(std::string("options.") + f), nullptr) << f;
    }
    ASSERT_EQ(doc["comparison"].array().size(), 2u);
    EXPECT_TRUE(doc["comparison"].array()[0]["pages_per_s_vs_seed"].is_null());
}

}  // namespace
}  // namespace coiommu::loadgen
