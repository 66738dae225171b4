#include "engine/daemon/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tests/testing/expect.h"

namespace coiommu::daemon {
namespace {

std::string write_temp(const std::string& text) {
    char path[] = "/tmp/coiommud-config-test.XXXXXX";
    const int fd = ::mkstemp(path);
    EXPECT_GE(fd, 0);
    ::close(fd);
    std::ofstream(path) << text;
    return path;
}

TEST(DaemonConfig, DefaultsServeTheRunDirSocketWithEngineDefaults) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({}));
    EXPECT_EQ(p.action, CliAction::Run);
    EXPECT_EQ(p.config.mode, Mode::Service);
    EXPECT_EQ(p.config.socket_path, kDefaultSocket);
    EXPECT_EQ(p.config.max_sessions, 64u);
    EXPECT_EQ(p.config.metrics_address, "127.0.0.1:9464");
    EXPECT_EQ(p.config.engine.unpin_policy, workers::UnpinPolicy::Off);
}

TEST(DaemonConfig, DemoModeRunsLruUnpinningEverySecond) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--demo"}));
    EXPECT_EQ(p.config.mode, Mode::Demo);
    EXPECT_EQ(p.config.engine.unpin_policy, workers::UnpinPolicy::Lru);
    EXPECT_EQ(p.config.engine.unpin_interval, std::chrono::seconds(1));
}

TEST(DaemonConfig, FlagsOverrideTheConfigFile) {
    const auto path = write_temp("# comment\nsocket = /tmp/a.sock\nmax_sessions = 8  # trailing\n\nio_timeout = 2s\n");
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max-sessions", "3", "--config", path}));
    EXPECT_EQ(p.config.socket_path, "/tmp/a.sock");
    EXPECT_EQ(p.config.max_sessions, 3u);  // the flag wins even when given before --config
    EXPECT_EQ(p.config.io_timeout, std::chrono::seconds(2));
    EXPECT_EQ(p.config.config_path, path);
    ::unlink(path.c_str());
}

TEST(DaemonConfig, EqualsFormAndDashesAreAccepted) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--setup-timeout=500ms", "--allowed-uids=0,107", "--duration=0"}));
    EXPECT_EQ(p.config.setup_timeout, std::chrono::milliseconds(500));
    ASSERT_EQ(p.config.allowed_uids.size(), 2u);
    EXPECT_EQ(p.config.allowed_uids[1], 107u);
    EXPECT_EQ(p.config.duration.count(), 0);
}

TEST(DaemonConfig, UnknownFlagIsRejectedByName) {
    auto r = parse_args({"--no-such-flag", "1"});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().context.find("--no-such-flag"), std::string::npos);
}

TEST(DaemonConfig, MistypedFlagGetsASuggestion) {
    auto r = parse_args({"--max-sesions", "3"});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("did you mean '--max-sessions'?"), std::string::npos) << r.error().context;
}

TEST(DaemonConfig, MistypedConfigKeyGetsASuggestion) {
    const auto path = write_temp("log_levle = warn\n");
    auto r = parse_args({"--config", path});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("did you mean 'log_level'?"), std::string::npos) << r.error().context;
    ::unlink(path.c_str());
}

TEST(DaemonConfig, FarFromEveryKeyGetsNoSuggestion) { EXPECT_EQ(closest_key("completely_unrelated"), ""); }

TEST(DaemonConfig, ConfigFileErrorNamesFileAndLine) {
    const auto path = write_temp("socket = /tmp/x.sock\nbogus = 1\n");
    auto r = parse_args({"--config", path});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find(path + ":2"), std::string::npos) << r.error().context;
    EXPECT_NE(r.error().context.find("bogus"), std::string::npos);
    ::unlink(path.c_str());
}

TEST(DaemonConfig, MissingConfigFileIsAnError) {
    EXPECT_ERR(parse_args({"--config", "/nonexistent/coiommud.conf"}), ENOENT);
}

TEST(DaemonConfig, OutOfRangeValuesAreRejected) {
    EXPECT_ERR(parse_args({"--max-sessions", "0"}), EINVAL);
    EXPECT_ERR(parse_args({"--max-sessions", "100000"}), EINVAL);
    EXPECT_ERR(parse_args({"--io-timeout", "0"}), EINVAL);
    EXPECT_ERR(parse_args({"--io-timeout", "soon"}), EINVAL);
    EXPECT_ERR(parse_args({"--backends", "vfio,magic"}), EINVAL);
    EXPECT_ERR(parse_args({"--tracing", "maybe"}), EINVAL);
    EXPECT_ERR(parse_args({"--log-level", "loud"}), EINVAL);
    EXPECT_ERR(parse_args({"--socket", std::string(200, 'x')}), EINVAL);
    EXPECT_ERR(parse_args({"--demo", "--ram", "1M"}), EINVAL);
}

TEST(DaemonConfig, EngineOptionsAreValidatedWithCrosvmWording) {
    auto r = parse_args({"--engine", "unpin_policy=lru,unpin_limit=0"});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("unpin_limit"), std::string::npos) << r.error().context;
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--engine", "variant=seed,unpin_policy=lru,unpin_interval=10s"}));
    EXPECT_EQ(p.config.engine.variant, workers::Variant::Seed);
    EXPECT_EQ(p.config.engine.unpin_interval, std::chrono::seconds(10));
}

TEST(DaemonConfig, FlagWithoutValueIsRejected) { EXPECT_ERR(parse_args({"--socket"}), EINVAL); }

TEST(DaemonConfig, HelpDocumentsEveryKey) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--socket", "/x", "--help"}));
    EXPECT_EQ(p.action, CliAction::Help);
    const std::string u = usage();
    for (const char* flag : {"--socket",
                             "--allowed-uids",
                             "--max-sessions",
                             "--setup-timeout",
                             "--io-timeout",
                             "--engine",
                             "--engine-opts",
                             "--backends",
                             "--max-guest-memory",
                             "--metrics-address",
                             "--tracing",
                             "--log-level",
                             "--log-priority-prefix",
                             "--duration",
                             "--vcpus",
                             "--demo-vcpus",
                             "--ram",
                             "--demo-ram",
                             "--config",
                             "--demo",
                             "--help",
                             "--version"}) {
        EXPECT_NE(u.find(flag), std::string::npos) << flag;
    }
}

TEST(DaemonConfig, MissingConfigFileSaysWhy) {
    auto r = parse_args({"--config", "/nonexistent/coiommud.conf"});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT);
    const std::string m = r.error().message();
    EXPECT_NE(m.find("config file /nonexistent/coiommud.conf"), std::string::npos) << m;
    EXPECT_NE(m.find("No such file or directory"), std::string::npos) << m;
}

TEST(DaemonConfig, UnreadableConfigFileSaysWhy) {
    // A directory opens but does not read: the errno of read(2), not a made-up ENOENT.
    auto r = parse_args({"--config", "/tmp"});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EISDIR) << r.error().message();
    EXPECT_NE(r.error().message().find("Is a directory"), std::string::npos) << r.error().message();
}

TEST(DaemonConfig, ConfigFilesAreReadInOrderBeforeTheFlags) {
    const auto a = write_temp("max_sessions = 8\nio_timeout = 2s\n");
    const auto b = write_temp("max_sessions = 9\n");
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--io-timeout", "3s", "--config", a, "--config=" + b}));
    EXPECT_EQ(p.config.max_sessions, 9u);
    EXPECT_EQ(p.config.io_timeout, std::chrono::seconds(3));
    ::unlink(a.c_str());
    ::unlink(b.c_str());
}

TEST(DaemonConfig, LaterFlagOverridesAnEarlierOne) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max-sessions", "3", "--max-sessions=5"}));
    EXPECT_EQ(p.config.max_sessions, 5u);
}

TEST(DaemonConfig, MistypedFlagWithUnderscoresGetsASuggestion) {
    auto r = parse_args({"--max_sesions=3"});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().context.find("did you mean '--max-sessions'?"), std::string::npos) << r.error().context;
}

TEST(DaemonConfig, FlagsMayBeSpelledWithUnderscores) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max_sessions=4", "--log_level", "warn"}));
    EXPECT_EQ(p.config.max_sessions, 4u);
    EXPECT_EQ(p.config.log_level, log::Level::Warn);
}

TEST(DaemonConfig, SynonymFlagsSetTheSameKey) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--engine-opts", "variant=seed", "--demo-vcpus", "2", "--demo-ram=128M"}));
    EXPECT_EQ(p.config.engine.variant, workers::Variant::Seed);
    EXPECT_EQ(p.config.demo_vcpus, 2u);
    EXPECT_EQ(p.config.demo_ram, uint64_t{128} << 20);
}

TEST(DaemonConfig, FlagWhoseValueIsAnOptionIsAnErrorNotHelp) {
    auto r = parse_args({"--socket", "--help"});
    ASSERT_FALSE(r) << "--help was taken as the socket path, or printed";
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().context.find("--socket: needs a value"), std::string::npos) << r.error().context;
}

TEST(DaemonConfig, FlagWithoutValueNamesTheFlag) {
    auto r = parse_args({"--socket"});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("--socket"), std::string::npos) << r.error().context;
}

TEST(DaemonConfig, HelpWinsOverABadFlagOrFile) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max-sessions", "0", "--config", "/nonexistent", "--help"}));
    EXPECT_EQ(p.action, CliAction::Help);
    ASSERT_OK_AND_ASSIGN(auto q, parse_args({"-h"}));
    EXPECT_EQ(q.action, CliAction::Help);
}

TEST(DaemonConfig, VersionIsReturnedForMainToPrint) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--version"}));
    EXPECT_EQ(p.action, CliAction::Version);
    ASSERT_OK_AND_ASSIGN(auto q, parse_args({"-V"}));
    EXPECT_EQ(q.action, CliAction::Version);
}

TEST(DaemonConfig, DurationsTakeFractionsAndMilliseconds) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--io-timeout", "1.5s", "--setup-timeout=500ms", "--duration", "1.5m"}));
    EXPECT_EQ(p.config.io_timeout, std::chrono::milliseconds(1500));
    EXPECT_EQ(p.config.setup_timeout, std::chrono::milliseconds(500));
    EXPECT_EQ(p.config.duration, std::chrono::seconds(90));
    const auto path = write_temp("setup_timeout = 0.25s\nduration = 2\n");
    ASSERT_OK_AND_ASSIGN(auto f, parse_args({"--config", path}));
    EXPECT_EQ(f.config.setup_timeout, std::chrono::milliseconds(250));
    EXPECT_EQ(f.config.duration, std::chrono::seconds(2)) << "a bare number is seconds";
    ::unlink(path.c_str());
}

TEST(DaemonConfig, DurationFinerThanAMillisecondIsRefused) {
    auto r = parse_args({"--io-timeout", "1500us"});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("--io-timeout: '1500us' is finer than 1ms"), std::string::npos)
        << r.error().context;
}

TEST(DaemonConfig, SizesTakeFractionsAndBinaryUnits) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max-guest-memory", "1.5G", "--demo", "--ram", "1.5G"}));
    EXPECT_EQ(p.config.max_guest_memory, uint64_t{3} << 29);
    EXPECT_EQ(p.config.demo_ram, uint64_t{3} << 29);
    const auto path = write_temp("demo_ram = 256MiB\n");
    ASSERT_OK_AND_ASSIGN(auto f, parse_args({"--config", path}));
    EXPECT_EQ(f.config.demo_ram, uint64_t{256} << 20);
    ::unlink(path.c_str());
}

TEST(DaemonConfig, EngineLineInTheFileMayHaveSpaces) {
    const auto path = write_temp("engine = variant = seed, unpin_policy=lru , unpin_interval = 1.5s\n");
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--config", path}));
    EXPECT_EQ(p.config.engine.variant, workers::Variant::Seed);
    EXPECT_EQ(p.config.engine.unpin_policy, workers::UnpinPolicy::Lru);
    EXPECT_EQ(p.config.engine.unpin_interval, std::chrono::milliseconds(1500));
    ::unlink(path.c_str());
}

TEST(DaemonConfig, EngineErrorInTheFileNamesTheLineAndTheClosestOption) {
    const auto path = write_temp("# engine\nengine = unpin_polcy=lru\n");
    auto r = parse_args({"--config", path});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find(path + ":2: engine: unknown engine option 'unpin_polcy'"), std::string::npos)
        << r.error().context;
    EXPECT_NE(r.error().context.find("did you mean 'unpin_policy'?"), std::string::npos) << r.error().context;
    ::unlink(path.c_str());
}

// Every key, as a flag and as a file line: the same value gives the same setting, and the same
// bad value is refused by both, each naming itself.
TEST(DaemonConfig, EveryKeyIsAFlagAndAFileKeyWithOneGrammar) {
    struct Case {
        const char* key;
        const char* good;
        const char* bad;
        std::function<std::string(const DaemonConfig&)> read;
        const char* named = nullptr;  // the flag errors name, when not --key-with-dashes
    };
    const Case cases[] = {
        {"socket", "/tmp/k.sock", "", [](const DaemonConfig& c) { return c.socket_path; }},
        {"allowed_uids", "root,107", "bob",
         [](const DaemonConfig& c) { return fmt::format("{}", fmt::join(c.allowed_uids, ",")); }},
        {"max_sessions", "7", "4097", [](const DaemonConfig& c) { return std::to_string(c.max_sessions); }},
        {"max_sessions_per_uid", "4", "4097",
         [](const DaemonConfig& c) { return std::to_string(c.max_sessions_per_uid); }},
        {"max_pending", "8", "0", [](const DaemonConfig& c) { return std::to_string(c.max_pending); }},
        {"max_fds_per_session", "500", "8",  // below a session's base charge
         [](const DaemonConfig& c) { return std::to_string(c.max_fds_per_session); }},
        {"max_fds_per_uid", "4000", "lots", [](const DaemonConfig& c) { return std::to_string(c.max_fds_per_uid); }},
        {"hello_timeout", "250ms", "0", [](const DaemonConfig& c) { return std::to_string(c.hello_timeout.count()); }},
        {"setup_timeout", "1.5s", "0", [](const DaemonConfig& c) { return std::to_string(c.setup_timeout.count()); }},
        {"io_timeout", "250ms", "5x", [](const DaemonConfig& c) { return std::to_string(c.io_timeout.count()); }},
        {"engine", "workers=3", "workers=65", [](const DaemonConfig& c) { return std::to_string(c.engine.workers); }},
        {"backends", "fake", "magic", [](const DaemonConfig& c) { return c.backends.at(0); }},
        {"max_guest_memory", "2G", "1K", [](const DaemonConfig& c) { return std::to_string(c.max_guest_memory); }},
        {"metrics_address", "none", "", [](const DaemonConfig& c) { return c.metrics_address; }},
        {"tracing", "off", "maybe", [](const DaemonConfig& c) { return std::to_string(int(c.tracing)); }},
        {"log_level", "error", "loud", [](const DaemonConfig& c) { return std::to_string(int(c.log_level)); }},
        {"log_priority_prefix", "on", "yes",
         [](const DaemonConfig& c) { return std::to_string(int(c.priority_prefix)); }},
        {"duration", "2m", "soon", [](const DaemonConfig& c) { return std::to_string(c.duration.count()); }},
        {"demo_vcpus", "3", "65", [](const DaemonConfig& c) { return std::to_string(c.demo_vcpus); }, "--vcpus"},
        {"demo_ram", "1G", "1M", [](const DaemonConfig& c) { return std::to_string(c.demo_ram); }, "--ram"},
    };
    for (const Case& k : cases) {
        SCOPED_TRACE(k.key);
        std::string flag = std::string("--") + k.key;
        std::replace(flag.begin(), flag.end(), '_', '-');
        const auto path = write_temp(fmt::format("{} = {}\n", k.key, k.good));
        ASSERT_OK_AND_ASSIGN(auto from_file, parse_args({"--config", path}));
        ASSERT_OK_AND_ASSIGN(auto from_flag, parse_args({flag, k.good}));
        EXPECT_EQ(k.read(from_file.config), k.read(from_flag.config));
        EXPECT_NE(k.read(from_flag.config), k.read(DaemonConfig{})) << "the value changes the default";
        std::ofstream(path) << k.key << " = " << k.bad << "\n";
        auto bad_file = parse_args({"--config", path});
        ASSERT_FALSE(bad_file);
        EXPECT_NE(bad_file.error().context.find(path + ":1: " + k.key + ": "), std::string::npos)
            << bad_file.error().context;
        auto bad_flag = parse_args({flag + "=" + k.bad});
        ASSERT_FALSE(bad_flag);
        const std::string named = k.named != nullptr ? k.named : flag;
        EXPECT_EQ(bad_flag.error().context.rfind(named + ": ", 0), 0u) << bad_flag.error().context;
        EXPECT_NE(usage().find(flag), std::string::npos) << "--help lists " << flag;
        ::unlink(path.c_str());
    }
}

TEST(DaemonConfig, HelpListsTheEngineOptionsFromTheirTable) {
    const std::string u = usage();
    EXPECT_NE(u.find(workers::engine_options_help()), std::string::npos);
    for (const std::string_view name : workers::engine_option_names()) {
        EXPECT_NE(u.find("  " + std::string(name) + "="), std::string::npos) << name;
    }
}

TEST(DaemonConfig, BackendsDecideTheOfferedFeatures) {
    EXPECT_EQ(features_for({"vfio"}), proto::kFeatureVfioBackend | proto::kFeatureResume);
    EXPECT_EQ(features_for({"fake"}), proto::kFeatureFakeBackend | proto::kFeatureQueryMapped | proto::kFeatureResume);
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--backends", "vfio"}));
    EXPECT_EQ(p.config.server_options().policy.features, proto::kFeatureVfioBackend | proto::kFeatureResume);
}

TEST(DaemonConfig, HandshakeBoundsReachTheServer) {
    ASSERT_OK_AND_ASSIGN(auto d, parse_args({}));
    const ServerOptions defaults = d.config.server_options();
    EXPECT_EQ(defaults.max_sessions_per_uid, 0u);  // no per-uid cap unless asked for
    EXPECT_EQ(defaults.max_pending, 64u);
    EXPECT_EQ(defaults.hello_timeout, std::chrono::seconds(1));
    ASSERT_OK_AND_ASSIGN(
        auto p, parse_args({"--max-sessions-per-uid", "3", "--max-pending", "16", "--hello-timeout", "300ms"}));
    const ServerOptions o = p.config.server_options();
    EXPECT_EQ(o.max_sessions_per_uid, 3u);
    EXPECT_EQ(o.max_pending, 16u);
    EXPECT_EQ(o.hello_timeout, std::chrono::milliseconds(300));
}

TEST(DaemonConfig, FdBudgetsAreAutoUnlessSetAndReachTheServer) {
    ASSERT_OK_AND_ASSIGN(auto d, parse_args({}));
    EXPECT_EQ(d.config.server_options().max_fds_per_session, 0u);  // derived from RLIMIT_NOFILE
    EXPECT_EQ(d.config.server_options().max_fds_per_uid, 0u);
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--max-fds-per-session", "300", "--max-fds-per-uid", "auto"}));
    EXPECT_EQ(p.config.server_options().max_fds_per_session, 300u);
    EXPECT_EQ(p.config.server_options().max_fds_per_uid, 0u);
}

TEST(DaemonConfig, DefaultAllowedUidsAreThisUserAndRoot) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({}));
    const auto uids = p.config.server_options().allowed_uids;
    ASSERT_FALSE(uids.empty());
    EXPECT_EQ(uids[0], ::geteuid());
}

}  // namespace
}  // namespace coiommu::daemon
