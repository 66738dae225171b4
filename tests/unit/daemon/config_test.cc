#include "engine/daemon/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

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
    for (const char* flag : {"--socket", "--allowed-uids", "--max-sessions", "--setup-timeout", "--io-timeout",
                             "--engine", "--backends", "--max-guest-memory", "--metrics-address", "--tracing",
                             "--log-level", "--log-priority-prefix", "--duration", "--vcpus", "--ram", "--config"}) {
        EXPECT_NE(u.find(flag), std::string::npos) << flag;
    }
}

TEST(DaemonConfig, BackendsDecideTheOfferedFeatures) {
    EXPECT_EQ(features_for({"vfio"}), proto::kFeatureVfioBackend);
    EXPECT_EQ(features_for({"fake"}), proto::kFeatureFakeBackend | proto::kFeatureQueryMapped);
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({"--backends", "vfio"}));
    EXPECT_EQ(p.config.server_options().policy.features, proto::kFeatureVfioBackend);
}

TEST(DaemonConfig, DefaultAllowedUidsAreThisUserAndRoot) {
    ASSERT_OK_AND_ASSIGN(auto p, parse_args({}));
    const auto uids = p.config.server_options().allowed_uids;
    ASSERT_FALSE(uids.empty());
    EXPECT_EQ(uids[0], ::geteuid());
}

}  // namespace
}  // namespace coiommu::daemon
