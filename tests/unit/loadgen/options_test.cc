// coiommu-load's command line: defaults, every flag's forms, and the messages for bad input.
#include "engine/loadgen/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/base/quantity.h"
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

TEST(CliErrors, MissingValueIsNamed) {
    const std::string m = message({"--vcpus"});
    EXPECT_NE(m.find("--vcpus"), std::string::npos) << m;
    EXPECT_NE(m.find("missing"), std::string::npos) << m;  // CLI11's "--vcpus: 1 required N missing"
}

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
    EXPECT_NE(message({"--backend", "type2"}).find("fake|null|vfio|iommufd"), std::string::npos);
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

// ---- the shared grammar, flag by flag --------------------------------------------------------------

TEST(CliGrammar, DurationsTakeEveryUnitAndDecimals) {
    EXPECT_EQ(options({"--duration", "1.5s"}).duration, milliseconds(1500));
    EXPECT_EQ(options({"--duration", "2m"}).duration, std::chrono::minutes(2));
    EXPECT_EQ(options({"--balloon-interval", "0.25s"}).balloon_interval, milliseconds(250));
    EXPECT_EQ(options({"--lifetime", "1.5ms"}).lifetime.time, std::chrono::microseconds(1500));
}

TEST(CliGrammar, ThinkTimeTakesAUnitOrBareMicroseconds) {
    EXPECT_EQ(options({"--think-us", "1ms"}).think, milliseconds(1));
    EXPECT_EQ(options({"--think-us", "40"}).think, std::chrono::microseconds(40));
}

TEST(CliGrammar, RamTakesDecimalAndIecSizes) {
    EXPECT_EQ(options({"--ram", "1.5G"}).ram_bytes, uint64_t{3} << 29);
    EXPECT_EQ(options({"--ram=512MiB"}).ram_bytes, uint64_t{512} << 20);
}

TEST(CliGrammar, MalformedDurationNamesTheFlagAndTheText) {
    const std::string m = message({"--duration", "5x"});
    EXPECT_NE(m.find("--duration: '5x' is not a duration"), std::string::npos) << m;
}

TEST(CliGrammar, DurationsAreBoundedAtBothEnds) {
    EXPECT_NE(message({"--duration", "25h"}).find("between"), std::string::npos);
    EXPECT_NE(message({"--think-us", "2000s"}).find("between"), std::string::npos);
    EXPECT_NE(message({"--balloon-interval", "500us"}).find("between"), std::string::npos);
}

TEST(CliGrammar, RateRefusesNanAndInfinity) {
    EXPECT_NE(message({"--rate", "nan"}).find("--rate"), std::string::npos);
    EXPECT_NE(message({"--rate", "inf"}).find("--rate"), std::string::npos);
    EXPECT_DOUBLE_EQ(options({"--rate", "2.5e3"}).rate, 2500.0);
}

TEST(CliGrammar, TheLastOfARepeatedFlagWins) { EXPECT_EQ(options({"--vcpus", "3", "--vcpus", "4"}).vcpus, 4u); }

TEST(CliGrammar, AListRefusesAnEmptyItem) {
    EXPECT_NE(message({"--workload", "ring,"}).find("is not one of"), std::string::npos);
}

// ---- unknown flags, --help and --version --------------------------------------------------------------

TEST(CliErrors, MistypedFlagSuggestsTheClosest) {
    const std::string m = message({"--duraton", "5"});
    EXPECT_NE(m.find("unknown option '--duraton' (did you mean '--duration'?)"), std::string::npos) << m;
    EXPECT_EQ(message({"--enigne", "seed"}).find("needs a value"), std::string::npos);
    EXPECT_NE(message({"--enigne", "seed"}).find("did you mean '--engine'"), std::string::npos);
}

TEST(Cli, VersionIsAnActionInBothSpellings) {
    auto v = parse({"-V"});
    ASSERT_OK(v);
    EXPECT_EQ(v->action, CliAction::Version);
    auto version = parse({"--version"});
    ASSERT_OK(version);
    EXPECT_EQ(version->action, CliAction::Version);
}

// The old parser read a flag's value from the next word and let '--help' there pass as a file
// name; a value that is an option is an error naming the flag that wanted one.
TEST(CliErrors, AnOptionWhereAValueBelongsIsNotTakenAsTheValue) {
    const std::string m = message({"--json", "--help"});
    EXPECT_NE(m.find("--json: needs a value, got the option '--help'"), std::string::npos) << m;
    EXPECT_NE(message({"--connect", "--quiet"}).find("--connect: needs a value"), std::string::npos);
}

TEST(Cli, HelpWinsOverABadValueOrAnUnknownFlag) {
    for (const std::vector<std::string_view>& args : std::vector<std::vector<std::string_view>>{
             {"--vcpus", "0", "--help"}, {"--bogus", "-h"}, {"--think-us", "1", "--rate", "5", "--help"}}) {
        auto p = parse(args);
        ASSERT_OK(p);
        EXPECT_EQ(p->action, CliAction::Help);
    }
}

TEST(Cli, HelpShowsEachFlagsRangeAndDefault) {
    const std::string u = usage();
    EXPECT_NE(u.find("--vcpus N=2"), std::string::npos) << u;
    EXPECT_NE(u.find("1..256"), std::string::npos);
    EXPECT_NE(u.find("--duration DURATION=5s"), std::string::npos);
    EXPECT_NE(u.find("--ram SIZE=1G"), std::string::npos);
    EXPECT_NE(u.find("--backend fake|null|vfio|iommufd=fake"), std::string::npos);
}

// ---- --engine-opts and variant= ------------------------------------------------------------------

// The old check refused any string containing "variant"; now only a variant= that --engine
// would override is refused.
TEST(CliEngineOpts, AVariantThatAgreesWithEngineIsAccepted) {
    const LoadOptions o = options({"--engine", "seed", "--engine-opts", "variant=seed,workers=0"});
    EXPECT_EQ(o.engines, std::vector<workers::Variant>{workers::Variant::Seed});
    EXPECT_EQ(o.engine.workers, 0u);
}

TEST(CliEngineOpts, AVariantAgainstTheEnginesRunIsRefused) {
    EXPECT_NE(message({"--compare", "--engine-opts", "variant=fast"}).find("--engine"), std::string::npos);
    EXPECT_NE(message({"--engine", "fast", "--engine-opts", "variant=seed"}).find("contradicts"), std::string::npos);
}

TEST(CliEngineOpts, ANameContainingVariantGetsTheEngineParsersAnswer) {
    const std::string m = message({"--engine-opts", "invariant=1"});
    EXPECT_NE(m.find("'invariant'"), std::string::npos) << m;
    EXPECT_EQ(m.find("not variant="), std::string::npos) << m;
}

// ---- --connect against the in-process options --------------------------------------------------------

TEST(CliConnect, RefusesTheInProcessEngineOptions) {
    EXPECT_NE(message({"--connect", "/run/c.sock", "--engine", "seed"}).find("--connect"), std::string::npos);
    EXPECT_NE(message({"--connect", "/run/c.sock", "--engine-opts", "workers=2"}).find("--engine-opts"),
              std::string::npos);
    EXPECT_NE(message({"--connect", "/run/c.sock", "--strategy", "coiommu,static"}).find("coiommu strategy only"),
              std::string::npos);
}

TEST(CliConnect, HandsTheDaemonARealContainerWithBackendVfio) {
    const LoadOptions o = options({"--connect", "/run/c.sock", "--backend", "vfio", "--vfio-group", "/dev/vfio/1"});
    EXPECT_EQ(o.backend, BackendKind::Vfio);
    EXPECT_EQ(o.vfio_group, "/dev/vfio/1");
}

TEST(CliConnect, HandsTheDaemonAnIommufdWithBackendIommufd) {
    const LoadOptions o =
        options({"--connect", "/run/c.sock", "--backend", "iommufd", "--vfio-device", "/dev/vfio/devices/vfio0"});
    EXPECT_EQ(o.backend, BackendKind::Iommufd);
    EXPECT_EQ(o.vfio_device, "/dev/vfio/devices/vfio0");
}

TEST(CliBackend, IommufdNeedsItsDeviceAndTheDeviceNeedsIommufd) {
    EXPECT_NE(message({"--backend", "iommufd"}).find("--vfio-device"), std::string::npos);
    EXPECT_NE(message({"--vfio-device", "/dev/vfio/devices/vfio0"}).find("only for --backend iommufd"),
              std::string::npos);
}

TEST(CliConnect, BackendVfioStillNeedsItsGroup) {
    EXPECT_NE(message({"--connect", "/run/c.sock", "--backend", "vfio"}).find("--vfio-group"), std::string::npos);
}

TEST(CliConnect, TakesTheDaemonsBackendOptions) {
    const LoadOptions o = options({"--connect", "/run/c.sock", "--backend", "null", "--entry-limit", "100"});
    EXPECT_EQ(o.connect_path, "/run/c.sock");
    EXPECT_EQ(o.backend, BackendKind::Null);
    EXPECT_EQ(o.entry_limit, 100u);
}

TEST(CliConnect, ReconnectIsOffUnlessAskedAndTakesATimeout) {
    EXPECT_FALSE(options({"--connect", "/run/c.sock"}).reconnect);
    const LoadOptions o = options({"--connect", "/run/c.sock", "--reconnect", "--reconnect-timeout", "2s"});
    EXPECT_TRUE(o.reconnect);
    EXPECT_EQ(o.reconnect_timeout, std::chrono::seconds(2));
}

TEST(CliConnect, ReconnectNeedsConnectAndItsTimeoutNeedsReconnect) {
    EXPECT_NE(message({"--reconnect"}).find("only for --connect"), std::string::npos);
    EXPECT_NE(message({"--connect", "/run/c.sock", "--reconnect-timeout", "5"}).find("needs --reconnect"),
              std::string::npos);
}

// What scripts/bench.sh, the READMEs, the man page and the --connect tests run.
TEST(Cli, TheDocumentedInvocationsParse) {
    for (const std::vector<std::string_view>& args : std::vector<std::vector<std::string_view>>{
             {"--engine", "fast,seed", "--strategy", "coiommu,strict,static", "--workload", "stream,ring,random",
              "--duration", "2", "--backend", "fake", "--log-level", "off", "--table", "--json", "b.json", "--plot",
              "b.png"},
             {"--compare", "--workload", "ring,random"},
             {"--backend", "null", "--strategy", "coiommu", "--workload", "ring", "--buffer-pages", "1"},
             {"--json", "out.json", "--plot", "out.png"},
             {"--connect", "/tmp/c.sock", "--duration", "5", "--json", "out.json"},
             {"--connect", "/run/coiommu/coiommud.sock", "--vcpus", "4", "--duration", "30"},
             {"--connect", "/run/coiommu/coiommud.sock", "--reconnect", "--workload", "mix", "--duration", "10m"},
             {"--connect", "/tmp/c.sock", "--duration", "1.5", "--vcpus", "2", "--ram", "256M", "--workload", "mix",
              "--latency", "none", "--quiet", "--json", "out.json"},
             {"--connect", "/tmp/c.sock", "--backend", "null", "--duration", "0.5", "--ram", "128M", "--workload",
              "ring", "--quiet", "--json", "out.json"},
             {"--connect", "/run/coiommu/coiommud.sock", "--backend", "vfio", "--vfio-group", "/dev/vfio/12"},
             {"--backend", "iommufd", "--vfio-device", "/dev/vfio/devices/vfio0"},
         }) {
        auto p = parse_cli(args);
        EXPECT_TRUE(p.has_value()) << args.front() << ": " << (p ? "" : p.error().context);
    }
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
// The load generator's own parse_size and parse_seconds gave way to the shared grammar
// (engine/base/quantity.h); their cases still hold there, for the flags that use it.

TEST(ParseSize, AcceptsUnitsAndRejectsOverflow) {
    EXPECT_EQ(*parse_size("--ram", "4096"), 4096u);
    EXPECT_EQ(*parse_size("--ram", "64K"), 65536u);
    EXPECT_EQ(*parse_size("--ram", "1t"), uint64_t{1} << 40);
    EXPECT_ERR(parse_size("--ram", "99999999999999999999"), EINVAL);
    EXPECT_ERR(parse_size("--ram", "16777216T"), EINVAL);
    EXPECT_ERR(parse_size("--ram", "G"), EINVAL);
}

TEST(ParseSeconds, AcceptsFractionsAndSuffixes) {
    EXPECT_EQ(*parse_duration("--duration", "1.5", BareUnit::Seconds), milliseconds(1500));
    EXPECT_EQ(*parse_duration("--duration", "100us", BareUnit::Seconds), std::chrono::microseconds(100));
    EXPECT_ERR(parse_duration("--duration", "-1", BareUnit::Seconds), EINVAL);
    // "1h" was refused by the old parser, which knew no hours; the shared grammar does.
    EXPECT_EQ(*parse_duration("--duration", "1h", BareUnit::Seconds), std::chrono::hours(1));
}

}  // namespace
}  // namespace coiommu::loadgen
