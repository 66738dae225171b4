// coiommu-load's command line: defaults, every flag's forms, and the messages for bad input.
#include "engine/loadgen/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::loadgen {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

Result<ParsedCli> parse(const std::vector<std::string_view>& args) { return parse_cli(args); }

LoadOptions options(const std::vector<std::string_view>& args) {
    auto p = parse_cli(args);
    EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().context);
    return p ? p->options : LoadOptions{};
}

// The message of a rejected command line ("" when it was accepted).
std::string message(const std::vector<std::string_view>& args) {
    auto p = parse_cli(args);
    if (p) return "";
    EXPECT_EQ(p.error().code, EINVAL);
    return p.error().context;
}

TEST(Cli, DefaultsAreAFiveSecondMixedRunOnTwoVcpusWithTheFakeBackend) {
    const LoadOptions o = options({});
    EXPECT_EQ(o.vcpus, 2u);
    EXPECT_EQ(o.duration, seconds(5));
    EXPECT_EQ(o.workloads, std::vector<WorkloadKind>{WorkloadKind::Mix});
    EXPECT_EQ(o.backend, BackendKind::Fake);
    EXPECT_EQ(o.latency, FakeLatency::Typical);
    EXPECT_EQ(o.strategies, std::vector<StrategyKind>{StrategyKind::Coiommu});
    EXPECT_EQ(o.engines, std::vector<workers::Variant>{workers::Variant::Fast});
    EXPECT_EQ(o.ram_bytes, uint64_t{1} << 30);
}

TEST(Cli, DefaultEngineUnpinsWithLruEverySecond) {
    const LoadOptions o = options({});
    EXPECT_EQ(o.engine.unpin_policy, workers::UnpinPolicy::Lru);
    EXPECT_EQ(o.engine.unpin_interval, seconds(1));
}

TEST(Cli, HelpIsAnAction) {
    auto p = parse({"--vcpus", "3", "--help"});
    ASSERT_OK(p);
    EXPECT_EQ(p->action, CliAction::Help);
    EXPECT_NE(usage().find("--workload"), std::string::npos);
}

TEST(Cli, TakesValuesSeparateOrAfterAnEqualsSign) {
    EXPECT_EQ(options({"--vcpus", "4"}).vcpus, 4u);
    EXPECT_EQ(options({"--vcpus=5"}).vcpus, 5u);
}

TEST(Cli, ParsesListsForEngineStrategyAndWorkload) {
    const LoadOptions o = options({"--engine", "seed,fast", "--strategy", "static,coiommu", "--workload", "ring,zipf"});
    EXPECT_EQ(o.engines, (std::vector<workers::Variant>{workers::Variant::Seed, workers::Variant::Fast}));
    EXPECT_EQ(o.strategies, (std::vector<StrategyKind>{StrategyKind::Static, StrategyKind::Coiommu}));
    EXPECT_EQ(o.workloads, (std::vector<WorkloadKind>{WorkloadKind::Ring, WorkloadKind::Zipf}));
}

TEST(Cli, CompareRunsBothEnginesAndEveryStrategy) {
    const LoadOptions o = options({"--compare"});
    EXPECT_EQ(o.engines.size(), 2u);
    EXPECT_EQ(o.strategies.size(), 3u);
}

TEST(Cli, RamTakesBinaryUnits) {
    EXPECT_EQ(options({"--ram", "256M"}).ram_bytes, uint64_t{256} << 20);
    EXPECT_EQ(options({"--ram", "2G"}).ram_bytes, uint64_t{2} << 30);
}

TEST(Cli, LifetimeIsACountOrATime) {
    const LoadOptions ops = options({"--lifetime", "0"});
    EXPECT_FALSE(ops.lifetime.timed());
    EXPECT_EQ(ops.lifetime.ops, 0u);
    EXPECT_EQ(ops.max_outstanding(), 1u);
    const LoadOptions timed = options({"--lifetime", "50us"});
    EXPECT_TRUE(timed.lifetime.timed());
    EXPECT_EQ(timed.lifetime.time, std::chrono::microseconds(50));
    EXPECT_EQ(timed.max_outstanding(), kMaxTimedOutstanding);
}

TEST(Cli, DurationTakesSecondsOrASuffix) {
    EXPECT_EQ(options({"--duration", "0.5"}).duration, milliseconds(500));
    EXPECT_EQ(options({"--duration", "250ms"}).duration, milliseconds(250));
    EXPECT_EQ(options({"--duration", "2s"}).duration, seconds(2));
}

TEST(Cli, ThinkTimeIsInMicroseconds) { EXPECT_EQ(options({"--think-us", "2.5"}).think, nanoseconds(2500)); }

TEST(Cli, EngineOptsAreParsedOverTheLoadDefaults) {
    const LoadOptions o = options({"--engine-opts", "workers=2,coalesce=off"});
    EXPECT_EQ(o.engine.workers, 2u);
    EXPECT_EQ(o.engine.coalesce, workers::Coalesce::Off);
    EXPECT_EQ(o.engine.unpin_policy, workers::UnpinPolicy::Lru);  // the load default survives
    EXPECT_EQ(o.engine_opts, "workers=2,coalesce=off");
}

TEST(Cli, VfioBackendTakesAGroup) {
    const LoadOptions o = options({"--backend", "vfio", "--vfio-group", "/dev/vfio/12"});
    EXPECT_EQ(o.backend, BackendKind::Vfio);
    EXPECT_EQ(o.vfio_group, "/dev/vfio/12");
}

TEST(Cli, TableOnlyIsAFlag) { EXPECT_TRUE(options({"--table"}).table_only); }

TEST(Cli, LogLevelIsParsed) { EXPECT_EQ(options({"--log-level", "off"}).log_level, log::Level::Off); }

// ---- rejected command lines ------------------------------------------------------------------------

TEST(CliErrors, UnknownOptionIsNamed) { EXPECT_NE(message({"--frobnicate"}).find("--frobnicate"), std::string::npos); }

TEST(CliErrors, MissingValueIsNamed) { EXPECT_NE(message({"--vcpus"}).find("needs a value"), std::string::npos); }

TEST(CliErrors, NonNumericVcpus) { EXPECT_NE(message({"--vcpus", "two"}).find("not an unsigned"), std::string::npos); }

TEST(CliErrors, VcpusOutOfRange) {
    EXPECT_NE(message({"--vcpus", "0"}).find("outside"), std::string::npos);
    EXPECT_NE(message({"--vcpus", "100000"}).find("outside"), std::string::npos);
}

TEST(CliErrors, UnknownWorkloadListsTheChoices) {
    EXPECT_NE(message({"--workload", "stream,bursty"}).find("stream|ring|zipf|random|balloon|mix"), std::string::npos);
}

TEST(CliErrors, DuplicateListItem) { EXPECT_NE(message({"--engine", "fast,fast"}).find("twice"), std::string::npos); }

TEST(CliErrors, UnknownEngine) { EXPECT_NE(message({"--engine", "turbo"}).find("fast|seed"), std::string::npos); }

TEST(CliErrors, UnknownStrategy) {
    EXPECT_NE(message({"--strategy", "lazy"}).find("coiommu|strict|static"), std::string::npos);
}

TEST(CliErrors, UnknownBackend) {
    EXPECT_NE(message({"--backend", "iommufd"}).find("fake|null|vfio"), std::string::npos);
}

TEST(CliErrors, ThinkAndRateExcludeEachOther) {
    EXPECT_NE(message({"--think-us", "5", "--rate", "1000"}).find("exclude"), std::string::npos);
}

TEST(CliErrors, VariantBelongsToTheEngineFlag) {
    EXPECT_NE(message({"--engine-opts", "variant=seed"}).find("--engine"), std::string::npos);
}

TEST(CliErrors, BadEngineOptsCarryTheEnginesMessage) {
    EXPECT_NE(message({"--engine-opts", "unpin_limit=0"}).find("unpin_limit"), std::string::npos);
}

TEST(CliErrors, VfioWithoutGroup) { EXPECT_NE(message({"--backend", "vfio"}).find("--vfio-group"), std::string::npos); }

TEST(CliErrors, GroupWithoutVfio) {
    EXPECT_NE(message({"--vfio-group", "/dev/vfio/1"}).find("only for"), std::string::npos);
}

TEST(CliErrors, LatencyOnlyForTheFakeBackend) {
    EXPECT_NE(message({"--backend", "null", "--latency", "none"}).find("only for"), std::string::npos);
}

TEST(CliErrors, RamTooSmallOrMalformed) {
    EXPECT_NE(message({"--ram", "1M"}).find("between"), std::string::npos);
    EXPECT_NE(message({"--ram", "lots"}).find("not a size"), std::string::npos);
}

TEST(CliErrors, DurationTooShort) { EXPECT_NE(message({"--duration", "10ms"}).find("between"), std::string::npos); }

TEST(CliErrors, LifetimeNeitherCountNorTime) {
    EXPECT_NE(message({"--lifetime", "0.5"}).find("neither"), std::string::npos);
    EXPECT_NE(message({"--lifetime", "soon"}).find("neither"), std::string::npos);
}

TEST(CliErrors, BufferPagesOutOfRange) {
    EXPECT_NE(message({"--buffer-pages", "0"}).find("outside"), std::string::npos);
    EXPECT_NE(message({"--buffer-pages", "5000"}).find("outside"), std::string::npos);
}

TEST(CliErrors, ZipfExponentMustBePositive) {
    EXPECT_NE(message({"--zipf-s", "0"}).find("(0, 100]"), std::string::npos);
}

TEST(CliErrors, CompareConflictsWithExplicitLists) {
    EXPECT_NE(message({"--compare", "--engine", "fast"}).find("--compare"), std::string::npos);
}

TEST(CliErrors, FlagWithoutValueRejectsAnInlineValue) {
    EXPECT_NE(message({"--progress=yes"}).find("takes no value"), std::string::npos);
}

TEST(CliErrors, ProgressAndQuietExcludeEachOther) {
    EXPECT_NE(message({"--progress", "--quiet"}).find("exclude"), std::string::npos);
}

// ---- the run matrix ------------------------------------------------------------------------------

TEST(Matrix, EnginesVaryOnlyTheCoiommuStrategy) {
    const LoadOptions o = options({"--compare", "--workload", "stream,ring"});
    const auto specs = expand_matrix(o);
    ASSERT_EQ(specs.size(), 8u);  // per workload: coiommu/fast, coiommu/seed, strict, static
    EXPECT_EQ(specs[0].label(), "coiommu/fast/stream");
    EXPECT_EQ(specs[1].label(), "coiommu/seed/stream");
    EXPECT_EQ(specs[2].label(), "strict/stream");
    EXPECT_EQ(specs[3].label(), "static/stream");
    EXPECT_EQ(specs[4].label(), "coiommu/fast/ring");
}

// ---- value parsers --------------------------------------------------------------------------------

TEST(ParseSize, AcceptsUnitsAndRejectsOverflow) {
    EXPECT_EQ(parse_size("4096"), 4096u);
    EXPECT_EQ(parse_size("64K"), 65536u);
    EXPECT_EQ(parse_size("1t"), uint64_t{1} << 40);
    EXPECT_EQ(parse_size("99999999999999999999"), std::nullopt);
    EXPECT_EQ(parse_size("16777216T"), std::nullopt);
    EXPECT_EQ(parse_size("G"), std::nullopt);
}

TEST(ParseSeconds, AcceptsFractionsAndSuffixes) {
    EXPECT_EQ(parse_seconds("1.5"), milliseconds(1500));
    EXPECT_EQ(parse_seconds("100us"), std::chrono::microseconds(100));
    EXPECT_EQ(parse_seconds("-1"), std::nullopt);
    EXPECT_EQ(parse_seconds("1h"), std::nullopt);
}

}  // namespace
}  // namespace coiommu::loadgen
