#include "engine/base/quantity.h"

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <string>

#include "tests/testing/expect.h"

namespace coiommu {
namespace {

using namespace std::chrono_literals;

std::chrono::nanoseconds dur(std::string_view text, BareUnit bare = BareUnit::Seconds) {
    auto d = parse_duration("--t", text, bare);
    EXPECT_TRUE(d.has_value()) << text << ": " << (d ? "" : d.error().context);
    return d ? *d : std::chrono::nanoseconds(-1);
}

TEST(Duration, EverySuffixMeansItsUnit) {
    EXPECT_EQ(dur("7ns"), 7ns);
    EXPECT_EQ(dur("250us"), 250us);
    EXPECT_EQ(dur("500ms"), 500ms);
    EXPECT_EQ(dur("20s"), 20s);
    EXPECT_EQ(dur("2m"), 2min);
    EXPECT_EQ(dur("1h"), 1h);
}

TEST(Duration, DecimalFractionsAreExact) {
    EXPECT_EQ(dur("1.5s"), 1500ms);
    EXPECT_EQ(dur("0.25ms"), 250us);
    EXPECT_EQ(dur("0.000000001s"), 1ns);
}

TEST(Duration, BareNumberIsInTheCallersUnit) {
    EXPECT_EQ(dur("20", BareUnit::Seconds), 20s);
    EXPECT_EQ(dur("50", BareUnit::Microseconds), 50us);
    EXPECT_EQ(dur("3", BareUnit::Milliseconds), 3ms);
}

TEST(Duration, MalformedTextIsRejectedNamingTheFlag) {
    for (const char* bad :
         {"", "s", "5x", "-1s", "1.s", ".5s", "1e3s", "1,5s", "1.5.s", " 1s", "5 s", "0.0000000001s"}) {
        SCOPED_TRACE(bad);
        auto d = parse_duration("--t", bad, BareUnit::Seconds);
        EXPECT_ERR(d, EINVAL);
        EXPECT_NE(d.error().context.find("--t"), std::string::npos);
    }
}

TEST(Duration, FinerThanANanosecondIsAnError) {
    auto d = parse_duration("--t", "1.5ns", BareUnit::Seconds);
    EXPECT_ERR(d, EINVAL);
    EXPECT_NE(d.error().context.find("finer"), std::string::npos);
}

TEST(Duration, OverflowIsAnErrorNotAWrap) {
    EXPECT_ERR(parse_duration("--t", "18446744073709551615h", BareUnit::Seconds), EINVAL);
    EXPECT_ERR(parse_duration("--t", "9223372037s", BareUnit::Seconds), EINVAL);
    EXPECT_EQ(dur("9223372036s"), 9223372036s);
}

TEST(Duration, FormatRoundTrips) {
    for (const std::chrono::nanoseconds d : {0ns, 1ns, 999'000ns, 1'500'000'000ns, 60'000'000'000ns}) {
        EXPECT_EQ(dur(format_duration(d)), d) << format_duration(d);
    }
    EXPECT_EQ(format_duration(60s), "1m");
    EXPECT_EQ(format_duration(1500ms), "1500ms");
    EXPECT_EQ(format_duration(0ns), "0s");
}

uint64_t size(std::string_view text) {
    auto n = parse_size("--ram", text);
    EXPECT_TRUE(n.has_value()) << text;
    return n ? *n : 0;
}

TEST(Size, BinaryUnitsInEitherCaseAndSpelling) {
    EXPECT_EQ(size("4096"), 4096u);
    EXPECT_EQ(size("64K"), 65536u);
    EXPECT_EQ(size("64k"), 65536u);
    EXPECT_EQ(size("512M"), 512u << 20);
    EXPECT_EQ(size("512MiB"), 512u << 20);
    EXPECT_EQ(size("512MB"), 512u << 20);
    EXPECT_EQ(size("1T"), uint64_t{1} << 40);
}

TEST(Size, DecimalFractionsMustBeWholeBytes) {
    EXPECT_EQ(size("1.5G"), uint64_t{3} << 29);
    EXPECT_EQ(size("0.5K"), 512u);
    auto n = parse_size("--ram", "0.1K");
    EXPECT_ERR(n, EINVAL);
    EXPECT_NE(n.error().context.find("whole number of bytes"), std::string::npos);
}

TEST(Size, MalformedOrOverflowingTextIsRejected) {
    for (const char* bad : {"", "G", "1X", "1GG", "iB", "-1", "1.5", "16777216T", "18446744073709551616"}) {
        SCOPED_TRACE(bad);
        EXPECT_ERR(parse_size("--ram", bad), EINVAL);
    }
}

TEST(Size, FormatPicksTheLargestExactUnit) {
    EXPECT_EQ(format_size(512u << 20), "512M");
    EXPECT_EQ(format_size(uint64_t{3} << 29), "1536M");
    EXPECT_EQ(format_size(4097), "4097");
    EXPECT_EQ(format_size(0), "0");
}

TEST(Integer, RangeIsCheckedAndNamed) {
    EXPECT_EQ(*parse_u64_in("--vcpus", "4", 1, 64), 4u);
    auto r = parse_u64_in("--vcpus", "65", 1, 64);
    EXPECT_ERR(r, EINVAL);
    EXPECT_NE(r.error().context.find("1..64"), std::string::npos);
    EXPECT_ERR(parse_u64("--vcpus", "4x"), EINVAL);
}

TEST(ClosestWord, SuggestsWithinTwoEditsOnly) {
    const std::array<std::string, 3> names{"--duration", "--vcpus", "--socket"};
    EXPECT_EQ(closest_word("--duraton", names), "--duration");
    EXPECT_EQ(closest_word("--vpcus", names), "--vcpus");  // one transposition
    EXPECT_EQ(closest_word("--backend", names), "");
}

TEST(ClosestWord, LengthDecidesBeforeTheDistanceIsComputed) {
    const std::array<std::string, 3> names{"--vcpus", "--vcpu", "--vcpus-max"};
    EXPECT_EQ(closest_word("--vcpuss", names), "--vcpus");  // 1 from --vcpus, 2 from --vcpu
    EXPECT_EQ(closest_word("--vcpus-mx", names), "--vcpus-max");
    EXPECT_EQ(closest_word("--v", names), "");                      // 3 shorter than the shortest
    EXPECT_EQ(closest_word(std::string(1 << 20, 'v'), names), "");  // a hostile word: no suggestion
}

}  // namespace
}  // namespace coiommu
