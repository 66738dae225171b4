#include "exporter/engine_collector.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <prometheus/check_names.h>
#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

using namespace telemetry;

EngineInfo test_info() {
    EngineInfo info;
    info.build = {"0.1.0", "abc123"};
    info.config = ConfigInfo{"lru", "on", "fake", 60.0, 10};
    return info;
}

const prometheus::MetricFamily* find_family(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
    for (const auto& f : fs) {
        if (f.name == name) return &f;
    }
    return nullptr;
}

// One engine, exported as the VM "vm1".
constexpr const char* kVm = "vm1";

// `match` plus vm="vm1".
std::map<std::string, std::string> on_vm(std::map<std::string, std::string> match = {}) {
    match["vm"] = kVm;
    return match;
}

testing::Exposition parse(const std::vector<prometheus::MetricFamily>& families) {
    const std::string text = prometheus::TextSerializer().Serialize(families);
    auto parsed = testing::parse_exposition(text);
    EXPECT_TRUE(parsed.has_value()) << parsed.error().message();
    return parsed ? *parsed : testing::Exposition{};
}

testing::Exposition scrape_text(const StatsSnapshot& s) { return parse(engine_families(s, test_info(), kVm)); }

TEST(EngineCollector, EmitsTheCatalogue) {
    const StatsRegistry stats(1);
    const auto fs = engine_families(stats.snapshot(), test_info());
    for (const char* name : {"coiommu_build_info",
                             "coiommu_config_info",
                             "coiommu_unpin_interval_seconds",
                             "coiommu_unpin_gen_threshold",
                             "coiommu_pin_requests_total",
                             "coiommu_pin_attempts_total",
                             "coiommu_pages_pinned_total",
                             "coiommu_pages_already_pinned_total",
                             "coiommu_pin_failures_total",
                             "coiommu_guest_dma_map_failures_total",
                             "coiommu_pin_request_duration_seconds",
                             "coiommu_pages_per_request",
                             "coiommu_dma_calls_total",
                             "coiommu_dma_call_failures_total",
                             "coiommu_dma_bytes_total",
                             "coiommu_dma_call_duration_seconds",
                             "coiommu_dma_mappings",
                             "coiommu_dma_entry_limit",
                             "coiommu_pinned_pages",
                             "coiommu_pinned_bytes",
                             "coiommu_pin_queue_depth",
                             "coiommu_pages_unpinned_total",
                             "coiommu_unpin_attempts_total",
                             "coiommu_unpin_scans_total",
                             "coiommu_unpin_scan_duration_seconds",
                             "coiommu_unpin_last_run_timestamp_seconds",
                             "coiommu_unpin_worker_parked",
                             "coiommu_balloon_requests_total",
                             "coiommu_viommu_requests_total",
                             "coiommu_viommu_request_failures_total",
                             "coiommu_viommu_fault_events_total",
                             "coiommu_guest_ram_bytes",
                             "coiommu_vcpus",
                             "coiommu_active_sessions"}) {
        EXPECT_NE(find_family(fs, name), nullptr) << name;
    }
    EXPECT_EQ(fs.size(), 34u);
}

TEST(EngineCollector, NamesFollowThePrometheusConventions) {
    const StatsRegistry stats(1);
    const std::regex snake("^[a-z][a-z0-9_]*[a-z0-9]$");
    const std::regex abbreviated_unit("_(ms|us|ns|msec|usec|nsec|secs|kb|mb|gb|kib|mib|pct|percent)(_|$)");
    std::set<std::string> names;
    for (const auto& f : engine_families(stats.snapshot(), test_info())) {
        SCOPED_TRACE(f.name);
        EXPECT_TRUE(names.insert(f.name).second) << "duplicate family";
        EXPECT_TRUE(prometheus::CheckMetricName(f.name));
        EXPECT_TRUE(std::regex_match(f.name, snake));
        EXPECT_EQ(f.name.rfind("coiommu_", 0), 0u) << "missing the coiommu_ prefix";
        EXPECT_FALSE(std::regex_search(f.name, abbreviated_unit)) << "abbreviated or non-base unit";
        EXPECT_FALSE(f.help.empty());
        const bool ends_total = f.name.size() > 6 && f.name.compare(f.name.size() - 6, 6, "_total") == 0;
        EXPECT_EQ(f.type == prometheus::MetricType::Counter, ends_total) << "_total iff counter";
        if (f.type == prometheus::MetricType::Histogram && f.name.find("duration") != std::string::npos) {
            EXPECT_EQ(f.name.compare(f.name.size() - 8, 8, "_seconds"), 0) << "durations in seconds";
        }
        EXPECT_FALSE(f.name.ends_with("_info") && f.type != prometheus::MetricType::Gauge);
    }
}

TEST(EngineCollector, LabelsAreBoundedAndNeverIdentifiers) {
    const StatsRegistry stats(1);
    const std::set<std::string> forbidden{"pid", "tid", "gfn", "gpa", "iova", "hva", "address", "addr", "vcpu", "le"};
    for (const auto& f : engine_families(stats.snapshot(), test_info())) {
        SCOPED_TRACE(f.name);
        EXPECT_LE(f.metric.size(), 10u) << "cardinality above ~10 series";
        EXPECT_GE(f.metric.size(), 1u) << "family without samples";
        std::set<std::vector<std::pair<std::string, std::string>>> seen;
        for (const auto& m : f.metric) {
            std::vector<std::pair<std::string, std::string>> key;
            for (const auto& l : m.label) {
                EXPECT_TRUE(prometheus::CheckLabelName(l.name)) << l.name;
                EXPECT_EQ(forbidden.count(l.name), 0u) << l.name;
                key.emplace_back(l.name, l.value);
            }
            EXPECT_TRUE(seen.insert(key).second) << "duplicate series";
        }
    }
}

TEST(EngineCollector, EveryLabelCombinationIsPreinitialisedToZero) {
    const StatsRegistry stats(1);
    const auto e = scrape_text(stats.snapshot());
    // For the VM and for the ended VMs alike.
    for (const std::string& vm : {std::string(kVm), std::string(kEndedVmLabel)}) {
        SCOPED_TRACE(vm);
        const std::map<std::string, std::string> m{{"vm", vm}};
        EXPECT_EQ(e.find("coiommu_pin_requests_total", m).size(), kRequestKinds);
        EXPECT_EQ(e.find("coiommu_pin_failures_total", m).size(), kPinFailureReasons);
        EXPECT_EQ(e.find("coiommu_unpin_attempts_total", m).size(), kUnpinResults);
        EXPECT_EQ(e.find("coiommu_unpin_scans_total", m).size(), kScanKinds);
        EXPECT_EQ(e.find("coiommu_balloon_requests_total", m).size(), kBalloonResults);
        EXPECT_EQ(e.find("coiommu_dma_calls_total", m).size(), kDmaOps);
        EXPECT_EQ(e.find("coiommu_guest_dma_map_failures_total", m).size(), 2u);
        EXPECT_EQ(e.find("coiommu_pin_request_duration_seconds_count", m).size(), kRequestKinds);
    }
    EXPECT_EQ(e.value("coiommu_pin_failures_total", on_vm({{"reason", "no_space"}})), 0.0);
    EXPECT_EQ(e.value("coiommu_unpin_attempts_total", on_vm({{"result", "parked"}})), 0.0);
}

TEST(EngineCollector, CountersCarryTheSnapshotTotals) {
    StatsRegistry stats(2);
    stats.shard(0).requests[RequestKind::Batch].add(3);
    stats.shard(1).requests[RequestKind::Batch].add(4);
    stats.shard(0).pin_failures[PinFailureReason::NoSpace].add(2);
    stats.shard(1).unpin_attempts[UnpinResult::NotUnpinned].add(9);
    stats.shard(1).dma_calls[DmaOp::Unmap].add(5);
    stats.shard(0).requests_failed.add(1);
    stats.shard(0).viommu_request_failures[DmaOp::Map].add(6);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_pin_requests_total", on_vm({{"kind", "batch"}})), 7.0);
    EXPECT_EQ(e.value("coiommu_pin_requests_total", on_vm({{"kind", "single"}})), 0.0);
    EXPECT_EQ(e.value("coiommu_pin_failures_total", on_vm({{"reason", "no_space"}})), 2.0);
    EXPECT_EQ(e.value("coiommu_unpin_attempts_total", on_vm({{"result", "not_unpinned"}})), 9.0);
    EXPECT_EQ(e.value("coiommu_dma_calls_total", on_vm({{"op", "unmap"}})), 5.0);
    EXPECT_EQ(e.value("coiommu_guest_dma_map_failures_total", on_vm({{"iommu", "coiommu"}})), 1.0);
    EXPECT_EQ(e.value("coiommu_guest_dma_map_failures_total", on_vm({{"iommu", "virtio_iommu"}})), 6.0);
}

TEST(EngineCollector, GaugesAreConvertedToBaseUnits) {
    StatsRegistry stats(1);
    stats.gauges().pinned_pages.set(256);
    stats.gauges().last_unpin_run_unix_ns.set(1'700'000'000'500'000'000ull);
    stats.gauges().dma_entry_limit.set(65535);
    stats.gauges().unpin_worker_parked.set(1);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_pinned_pages", on_vm()), 256.0);
    EXPECT_EQ(e.value("coiommu_pinned_bytes", on_vm()), 256.0 * 4096.0);
    EXPECT_DOUBLE_EQ(e.value("coiommu_unpin_last_run_timestamp_seconds", on_vm()), 1'700'000'000.5);
    EXPECT_EQ(e.value("coiommu_dma_entry_limit", on_vm()), 65535.0);
    EXPECT_EQ(e.value("coiommu_unpin_worker_parked", on_vm()), 1.0);
}

TEST(EngineCollector, HistogramsAreInSecondsWithInfEqualToCount) {
    StatsRegistry stats(1);
    stats.shard(0).dma_call_latency_ns[DmaOp::Map].observe(2'000);          // 2 µs
    stats.shard(0).dma_call_latency_ns[DmaOp::Map].observe(3'000'000'000);  // 3 s
    stats.shard(0).pages_per_request.observe(64);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_TRUE(testing::check_histograms(e).empty());
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_count", on_vm({{"op", "map"}})), 2.0);
    EXPECT_DOUBLE_EQ(e.value("coiommu_dma_call_duration_seconds_sum", on_vm({{"op", "map"}})), 3.000002);
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_bucket", on_vm({{"op", "map"}, {"le", "2.048e-06"}})), 1.0);
    EXPECT_EQ(e.value("coiommu_pages_per_request_bucket", on_vm({{"le", "64"}})), 1.0);
}

TEST(EngineCollector, BuildAndConfigInfoAreOneWithTheirLabels) {
    const StatsRegistry stats(1);
    const auto e = scrape_text(stats.snapshot());
    EXPECT_EQ(e.value("coiommu_build_info", {{"version", "0.1.0"}, {"revision", "abc123"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_config_info", {{"unpin_policy", "lru"}, {"coalesce", "on"}, {"backend", "fake"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_unpin_interval_seconds"), 60.0);
}

TEST(EngineCollector, ThisBuildReportsTheProjectVersion) {
    const BuildInfo b = this_build();
    EXPECT_FALSE(b.version.empty());
    EXPECT_NE(b.version, "unknown");
    EXPECT_FALSE(b.revision.empty());
}

TEST(EngineCollector, CollectIntoCallsTheSourceOncePerScrape) {
    StatsRegistry stats(1);
    int calls = 0;
    const EngineCollector c(
        [&] {
            ++calls;
            return stats.snapshot();
        },
        test_info());
    std::vector<prometheus::MetricFamily> out;
    EXPECT_OK(c.collect_into(out));
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(out.size(), 34u);
}

TEST(EngineCollector, EmptySourceIsAnError) {
    const EngineCollector per_vm(EngineCollector::VmSource{}, test_info());
    const EngineCollector one_engine(EngineCollector::Source{}, test_info());
    for (const EngineCollector* c : {&per_vm, &one_engine}) {
        std::vector<prometheus::MetricFamily> out;
        EXPECT_ERR(c->collect_into(out), EINVAL);
        EXPECT_TRUE(c->Collect().empty());
    }
}

// --- the vm label ---

const std::set<std::string> kProcessWideFamilies{"coiommu_build_info", "coiommu_config_info",
                                                 "coiommu_unpin_interval_seconds", "coiommu_unpin_gen_threshold",
                                                 "coiommu_active_sessions"};

VmSnapshot vm_snapshot(uint64_t key, std::string name, uint64_t pages_pinned = 0) {
    VmSnapshot v;
    v.key = key;
    v.name = std::move(name);
    v.snapshot.totals.pages_pinned = pages_pinned;
    v.snapshot.gauges.pinned_pages = pages_pinned;
    return v;
}

TEST(VmLabel, KeepsAnOrdinaryNameAsItIs) {
    EXPECT_EQ(vm_label_base("web-01.example_2"), "web-01.example_2");
    EXPECT_EQ(vm_label_base("VM7"), "VM7");
}

TEST(VmLabel, AnEmptyNameIsTheReservedUnnamedValue) { EXPECT_EQ(vm_label_base(""), kUnnamedVmLabel); }

TEST(VmLabel, HostileBytesBecomeUnderscoresAndTheLengthIsBounded) {
    EXPECT_EQ(vm_label_base("a\"b\\c\nd e{f}"), "a_b_c_d_e_f_");
    EXPECT_EQ(vm_label_base("\xff\xfe\xc3(x)"), "____x_");  // invalid UTF-8 and the reserved '(' ')'
    EXPECT_EQ(vm_label_base("caf\xc3\xa9"), "caf__");       // valid UTF-8 too: one '_' per byte
    EXPECT_EQ(vm_label_base(std::string(100, 'x')), std::string(kMaxVmLabelBase, 'x'));
}

TEST(VmLabel, NoNameCanBecomeAReservedValue) {
    EXPECT_NE(vm_label_base(kEndedVmLabel), kEndedVmLabel);
    EXPECT_NE(vm_label_base(kUnnamedVmLabel), kUnnamedVmLabel);
}

TEST(VmLabeler, DuplicateNamesTakeNumberedSuffixesInKeyOrder) {
    VmLabeler labeler;
    const std::vector<VmSnapshot> vms{vm_snapshot(9, "dup"), vm_snapshot(3, "dup"), vm_snapshot(5, "dup")};
    EXPECT_EQ(labeler.assign(vms), (std::vector<std::string>{"dup#3", "dup", "dup#2"}));
}

TEST(VmLabeler, AValueStaysWithItsVmAfterTheOriginalLeaves) {
    VmLabeler labeler;
    (void)labeler.assign(std::vector<VmSnapshot>{vm_snapshot(1, "dup"), vm_snapshot(2, "dup")});
    // VM 1 ended: VM 2 keeps "dup#2" (a renamed series would break rate()), and a new VM named
    // "dup" may take the free bare name.
    EXPECT_EQ(labeler.assign(std::vector<VmSnapshot>{vm_snapshot(2, "dup"), vm_snapshot(7, "dup")}),
              (std::vector<std::string>{"dup#2", "dup"}));
}

TEST(VmLabeler, NamesThatSanitiseAlikeAreKeptApart) {
    VmLabeler labeler;
    EXPECT_EQ(labeler.assign(std::vector<VmSnapshot>{vm_snapshot(1, "a b"), vm_snapshot(2, "a_b"), vm_snapshot(3, "")}),
              (std::vector<std::string>{"a_b", "a_b#2", std::string(kUnnamedVmLabel)}));
}

TEST(VmLabeler, AKeyListedTwiceInOneReportStillGetsDistinctValues) {
    VmLabeler labeler;
    const auto labels = labeler.assign(std::vector<VmSnapshot>{vm_snapshot(4, "x"), vm_snapshot(4, "x")});
    ASSERT_EQ(labels.size(), 2u);
    EXPECT_NE(labels[0], labels[1]);
}

TEST(EngineFamilies, EveryPerEngineFamilyHasOneSeriesSetPerVm) {
    const StatsSnapshot a = vm_snapshot(1, "a", 10).snapshot;
    const StatsSnapshot b = vm_snapshot(2, "b", 20).snapshot;
    const std::vector<LabelledSnapshot> vms{{"a", &a}, {"b", &b}};
    const auto e = parse(engine_families(vms, ShardTotals{}, 2, test_info()));
    for (const auto& [family, type] : e.types) {
        if (kProcessWideFamilies.count(family) != 0) continue;
        SCOPED_TRACE(family);
        const std::string sample = type == "histogram" ? family + "_count" : family;
        const auto on_a = e.find(sample, {{"vm", "a"}});
        EXPECT_FALSE(on_a.empty());
        EXPECT_EQ(on_a.size(), e.find(sample, {{"vm", "b"}}).size());
        const std::size_t ended = type == "gauge" ? 0 : on_a.size();
        EXPECT_EQ(e.find(sample).size(), 2 * on_a.size() + ended) << "only a, b and (ended)";
    }
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "a"}}), 10.0);
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", "b"}}), 20.0);
    EXPECT_EQ(e.value("coiommu_pinned_pages", {{"vm", "b"}}), 20.0);
}

TEST(EngineFamilies, ProcessWideFamiliesCarryNoVmLabel) {
    const StatsSnapshot a{};
    const std::vector<LabelledSnapshot> vms{{"a", &a}};
    const auto e = parse(engine_families(vms, ShardTotals{}, 3, test_info()));
    for (const auto& family : kProcessWideFamilies) {
        SCOPED_TRACE(family);
        ASSERT_EQ(e.find(family).size(), 1u);
        EXPECT_EQ(e.find(family).front().labels.count("vm"), 0u);
    }
    EXPECT_EQ(e.value("coiommu_active_sessions"), 3.0);
}

TEST(EngineFamilies, EndedVmsLeaveTheirTotalsUnderTheReservedValueAndNoGauges) {
    ShardTotals ended{};
    ended.pages_pinned = 40;
    ended.dma_call_latency_ns[DmaOp::Map].buckets[12] = 3;
    const auto e = parse(engine_families({}, ended, 0, test_info()));
    EXPECT_EQ(e.value("coiommu_pages_pinned_total", {{"vm", std::string(kEndedVmLabel)}}), 40.0);
    EXPECT_EQ(e.value("coiommu_dma_call_duration_seconds_count", {{"vm", std::string(kEndedVmLabel)}, {"op", "map"}}),
              3.0);
    EXPECT_TRUE(e.find("coiommu_pinned_pages").empty());
    EXPECT_TRUE(testing::check_histograms(e).empty());
}

TEST(EngineCollector, ASourceOfVmsIsLabelledAndItsLabelsPersistAcrossScrapes) {
    int scrape = 0;
    const EngineCollector c(
        [&] {
            VmSnapshots s;
            s.vms.push_back(vm_snapshot(1, "dup", 5));
            if (scrape++ == 0) s.vms.push_back(vm_snapshot(0, "dup", 7));  // key 0 leaves after one scrape
            s.active_sessions = s.vms.size();
            return s;
        },
        test_info());
    std::vector<prometheus::MetricFamily> first, second;
    ASSERT_OK(c.collect_into(first));
    ASSERT_OK(c.collect_into(second));
    const auto e1 = parse(first);
    EXPECT_EQ(e1.value("coiommu_pages_pinned_total", {{"vm", "dup"}}), 7.0);
    EXPECT_EQ(e1.value("coiommu_pages_pinned_total", {{"vm", "dup#2"}}), 5.0);
    const auto e2 = parse(second);
    EXPECT_EQ(e2.value("coiommu_pages_pinned_total", {{"vm", "dup#2"}}), 5.0);
    EXPECT_TRUE(e2.find("coiommu_pages_pinned_total", {{"vm", "dup"}}).empty());
}

}  // namespace
}  // namespace coiommu::exporter
