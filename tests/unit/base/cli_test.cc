#include "engine/base/cli.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::cli {
namespace {

using namespace std::chrono_literals;

struct Args {
    std::vector<std::string> words;
    std::vector<const char*> argv;
    explicit Args(std::initializer_list<std::string> w) : words(w) {
        words.insert(words.begin(), "prog");
        for (const auto& s : words) argv.push_back(s.c_str());
    }
    [[nodiscard]] int argc() const { return static_cast<int>(argv.size()); }
};

struct Program {
    CLI::App app{"test program"};
    std::chrono::milliseconds duration{20s};
    uint64_t ram = 512u << 20;
    Program() {
        add_duration(app, "--duration", duration, BareUnit::Seconds, "run time");
        add_size(app, "--ram", ram, "guest RAM");
        add_version(app, "prog");
    }
    Result<Parsed> run(const Args& a) { return parse(app, a.argc(), a.argv.data()); }
};

TEST(Cli, DurationAndSizeUseTheSharedGrammar) {
    Program p;
    ASSERT_OK(p.run(Args{"--duration", "1.5s", "--ram=1.5G"}));
    EXPECT_EQ(p.duration, 1500ms);
    EXPECT_EQ(p.ram, uint64_t{3} << 29);
}

TEST(Cli, DefaultsStayWhenNotGiven) {
    Program p;
    ASSERT_OK(p.run(Args{}));
    EXPECT_EQ(p.duration, 20s);
}

TEST(Cli, UnknownOptionSuggestsTheClosest) {
    Program p;
    auto r = p.run(Args{"--duraton", "5s"});
    EXPECT_ERR(r, EINVAL);
    EXPECT_NE(r.error().context.find("did you mean '--duration'"), std::string::npos) << r.error().context;
}

TEST(Cli, BadValueNamesTheOptionAndTheText) {
    Program p;
    auto r = p.run(Args{"--duration", "5x"});
    EXPECT_ERR(r, EINVAL);
    EXPECT_NE(r.error().context.find("'5x' is not a duration"), std::string::npos) << r.error().context;
}

TEST(Cli, ValueFinerThanTheOptionsUnitIsRefused) {
    Program p;
    EXPECT_ERR(p.run(Args{"--duration", "1500us"}), EINVAL);
}

TEST(Cli, VersionAndHelpExitWithoutRunning) {
    Program p;
    ::testing::internal::CaptureStdout();
    auto r = p.run(Args{"--version"});
    const std::string out = ::testing::internal::GetCapturedStdout();
    ASSERT_OK(r);
    EXPECT_EQ(*r, Parsed::Exited);
    EXPECT_EQ(out.rfind("prog ", 0), 0u) << out;

    Program q;
    ::testing::internal::CaptureStdout();
    auto h = q.run(Args{"--help"});
    const std::string help = ::testing::internal::GetCapturedStdout();
    ASSERT_OK(h);
    EXPECT_EQ(*h, Parsed::Exited);
    EXPECT_NE(help.find("--duration"), std::string::npos);
    EXPECT_NE(help.find("20s"), std::string::npos) << "the default is shown in the grammar";
}

TEST(Cli, QuietParseReturnsHelpAndVersionWithoutPrinting) {
    Program p;
    const Args help{"--help"};
    const Args version{"-V"};
    ::testing::internal::CaptureStdout();
    auto h = parse_quietly(p.app, help.argc(), help.argv.data());
    Program q;
    auto v = parse_quietly(q.app, version.argc(), version.argv.data());
    const std::string out = ::testing::internal::GetCapturedStdout();
    ASSERT_OK(h);
    EXPECT_EQ(*h, Request::Help);
    ASSERT_OK(v);
    EXPECT_EQ(*v, Request::Version);
    EXPECT_EQ(out, "") << "the caller prints";
}

TEST(Cli, QuietParseSetsOptionsAndSuggestsLikeParse) {
    Program p;
    const Args ok_args{"--duration=1.5s"};
    ASSERT_OK_AND_ASSIGN(auto r, parse_quietly(p.app, ok_args.argc(), ok_args.argv.data()));
    EXPECT_EQ(r, Request::Run);
    EXPECT_EQ(p.duration, 1500ms);
    Program q;
    const Args typo{"--duraton", "5s"};
    auto e = parse_quietly(q.app, typo.argc(), typo.argv.data());
    EXPECT_ERR(e, EINVAL);
    EXPECT_NE(e.error().context.find("did you mean '--duration'"), std::string::npos) << e.error().context;
}

}  // namespace
}  // namespace coiommu::cli
