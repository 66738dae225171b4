// The option kinds of engine/base/cli_values.h, each through a real CLI11 parse.
#include "engine/base/cli_values.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::cli {
namespace {

using namespace std::chrono_literals;

enum class Color : uint8_t { Red, Green, Blue };
constexpr Color kColors[] = {Color::Red, Color::Green, Color::Blue};
std::string_view color_name(Color c) {
    switch (c) {
        case Color::Red: return "red";
        case Color::Green: return "green";
        case Color::Blue: return "blue";
    }
    return "?";
}

struct Program {
    CLI::App app{"test program"};
    uint32_t vcpus = 2;
    double rate = 1.5;
    Color color = Color::Red;
    std::vector<Color> colors{Color::Green};
    bool quiet = false;
    std::string path;
    std::chrono::milliseconds interval{100ms};
    Program() {
        app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
        add_integer(app, "-n,--vcpus", vcpus, 1, 64, "vCPUs");
        add_decimal(app, "--rate", rate, 0, 100, "rate");
        add_choice(app, "--color", color, std::span<const Color>(kColors), color_name, "one color");
        add_list(app, "--colors", colors, std::span<const Color>(kColors), color_name, "colors");
        add_switch(app, "-q,--quiet", quiet, "quiet");
        add_text(app, "--path", path, "FILE", "a file");
        add_duration_in(app, "--interval", interval, BareUnit::Seconds, std::chrono::milliseconds(1),
                        std::chrono::milliseconds(60'000), "interval");
    }
    // The parse's error message, or "" when it succeeded.
    std::string run(std::vector<std::string> words) {
        words.insert(words.begin(), "prog");
        std::vector<const char*> argv;
        for (const auto& w : words) argv.push_back(w.c_str());
        auto r = parse(app, static_cast<int>(argv.size()), argv.data());
        if (r) return "";
        EXPECT_EQ(r.error().code, EINVAL);
        return r.error().context;
    }
};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(CliValues, IntegerIsRangeCheckedUnderItsLongName) {
    Program p;
    EXPECT_EQ(p.run({"-n", "8"}), "");
    EXPECT_EQ(p.vcpus, 8u);
    EXPECT_EQ(Program().run({"--vcpus", "65"}), "--vcpus: 65 is outside 1..64");
    EXPECT_EQ(Program().run({"--vcpus", "-1"}), "--vcpus: '-1' is not an unsigned integer");
}

TEST(CliValues, DecimalRefusesNanInfinityAndTheLowerBound) {
    Program p;
    EXPECT_EQ(p.run({"--rate", "2.5"}), "");
    EXPECT_DOUBLE_EQ(p.rate, 2.5);
    for (const char* bad : {"nan", "inf", "0", "101", "1,5", "x"}) {
        SCOPED_TRACE(bad);
        EXPECT_TRUE(has(Program().run({"--rate", bad}), "--rate: '")) << bad;
    }
}

TEST(CliValues, ChoiceNamesTheAllowedValues) {
    Program p;
    EXPECT_EQ(p.run({"--color=blue"}), "");
    EXPECT_EQ(p.color, Color::Blue);
    EXPECT_EQ(Program().run({"--color", "pink"}), "--color: 'pink' is not one of red|green|blue");
}

TEST(CliValues, ListKeepsTheOrderAndRefusesDuplicates) {
    Program p;
    EXPECT_EQ(p.run({"--colors", "blue,red"}), "");
    EXPECT_EQ(p.colors, (std::vector<Color>{Color::Blue, Color::Red}));
    EXPECT_EQ(Program().run({"--colors", "red,red"}), "--colors: 'red' is listed twice");
    EXPECT_EQ(Program().run({"--colors", "red,"}), "--colors: '' is not one of red|green|blue");
}

TEST(CliValues, SwitchRefusesAValue) {
    Program p;
    EXPECT_EQ(p.run({"-q"}), "");
    EXPECT_TRUE(p.quiet);
    EXPECT_EQ(Program().run({"--quiet=yes"}), "--quiet: takes no value");
}

TEST(CliValues, AnOptionIsNotAValue) {
    EXPECT_EQ(Program().run({"--path", "--quiet"}), "--path: needs a value, got the option '--quiet'");
    EXPECT_EQ(Program().run({"--path", ""}), "--path: needs a value");
    Program p;
    EXPECT_EQ(p.run({"--path", "out.json", "--quiet"}), "");
    EXPECT_EQ(p.path, "out.json");
    EXPECT_TRUE(p.quiet);
}

TEST(CliValues, DurationIsRangeChecked) {
    Program p;
    EXPECT_EQ(p.run({"--interval", "1.5s"}), "");
    EXPECT_EQ(p.interval, 1500ms);
    EXPECT_EQ(Program().run({"--interval", "2m"}), "--interval: '2m' is not between 1ms and 1m");
    EXPECT_TRUE(has(Program().run({"--interval", "soon"}), "'soon' is not a duration"));
}

TEST(CliValues, HelpShowsTypesRangesAndDefaults) {
    Program p;
    const std::string help = p.app.help();
    EXPECT_TRUE(has(help, "--vcpus N=2")) << help;
    EXPECT_TRUE(has(help, "vCPUs, 1..64"));
    EXPECT_TRUE(has(help, "--color red|green|blue=red"));
    EXPECT_TRUE(has(help, "--colors red|green|blue[,..]=green"));
    EXPECT_TRUE(has(help, "--interval DURATION=100ms"));
    EXPECT_TRUE(has(help, "rate, in (0, 100]"));
}

TEST(CliValues, LastGivenFollowsTheCommandLine) {
    CLI::App app;
    bool a = false;
    bool b = false;
    const CLI::Option* oa = add_switch(app, "-a", a, "a");
    const CLI::Option* ob = add_switch(app, "-b", b, "b");
    const char* argv[] = {"prog", "-b", "-a", "-b"};
    ASSERT_OK(parse(app, 4, argv));
    EXPECT_EQ(last_given(app, {oa, ob}), ob);
    CLI::App none;
    const CLI::Option* oc = add_switch(none, "-c", a, "c");
    const char* argv0[] = {"prog"};
    ASSERT_OK(parse(none, 1, argv0));
    EXPECT_EQ(last_given(none, {oc}), nullptr);
}

TEST(CliValues, HelpWinsOverABadValue) {
    Program p;
    add_help(p.app);
    ::testing::internal::CaptureStdout();
    const std::string err = p.run({"--vcpus", "0", "--help"});
    const std::string help = ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(err, "");
    EXPECT_TRUE(has(help, "--vcpus")) << help;
}

TEST(CliValues, DisplayNameIsTheLongName) {
    EXPECT_EQ(display_name("-p,--pid"), "--pid");
    EXPECT_EQ(display_name("-u"), "-u");
    EXPECT_EQ(display_name("interval"), "interval");
}

}  // namespace
}  // namespace coiommu::cli
