// Reports: the comparison's ratios to the seed engine, number formatting, JSON escaping, plots.
#include "engine/loadgen/report.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/base/version.h"
#include "tests/testing/expect.h"
#include "tests/unit/loadgen/json_parse.h"

namespace coiommu::loadgen {
namespace {

RunResult fake_run(WorkloadKind w, StrategyKind s, workers::Variant e, double pages_per_s, uint64_t peak) {
    RunResult r;
    r.spec = RunSpec{w, s, e};
    r.label = r.spec.label();
    r.pages_per_s = pages_per_s;
    r.maps_per_s = pages_per_s / 16;
    r.pinned_peak_pages = peak;
    r.timeline.push_back(Sample{0.1, peak, 1, 10, 160, 0, 100, 50, 2000, peak});
    r.timeline.push_back(Sample{0.2, peak, 1, 20, 320, 0, 100, 50, 3000, peak});
    return r;
}

std::vector<RunResult> matrix() {
    using workers::Variant;
    return {fake_run(WorkloadKind::Ring, StrategyKind::Coiommu, Variant::Fast, 6e6, 512),
            fake_run(WorkloadKind::Ring, StrategyKind::Coiommu, Variant::Seed, 2e6, 1024),
            fake_run(WorkloadKind::Ring, StrategyKind::Strict, Variant::Fast, 1e5, 64),
            fake_run(WorkloadKind::Stream, StrategyKind::Coiommu, Variant::Fast, 3e6, 100)};
}

TEST(Compare, RatiosAreToTheSeedRunOfTheSameWorkload) {
    const auto rows = compare(matrix());
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_DOUBLE_EQ(*rows[0].pages_per_s_vs_seed, 3.0);
    EXPECT_DOUBLE_EQ(*rows[0].pinned_peak_vs_seed, 0.5);
    EXPECT_DOUBLE_EQ(*rows[1].pages_per_s_vs_seed, 1.0);
    EXPECT_DOUBLE_EQ(*rows[2].pages_per_s_vs_seed, 0.05);
}

TEST(Compare, NoSeedRunMeansNoRatio) {
    const auto rows = compare(matrix());
    EXPECT_FALSE(rows[3].pages_per_s_vs_seed.has_value());
    EXPECT_FALSE(rows[3].pinned_peak_vs_seed.has_value());
}

TEST(Human, CountsGetUnits) {
    EXPECT_EQ(human_count(950), "950");
    EXPECT_EQ(human_count(12345), "12.3k");
    EXPECT_EQ(human_count(4.56e6), "4.56M");
}

TEST(Human, DurationsGetUnits) {
    EXPECT_EQ(human_ns(850), "850ns");
    EXPECT_EQ(human_ns(12'300), "12.3us");
    EXPECT_EQ(human_ns(4'560'000), "4.56ms");
    EXPECT_EQ(human_ns(1'230'000'000), "1.23s");
}

TEST(RenderJson, EscapesStringsAndParses) {
    std::vector<RunResult> runs = matrix();
    runs[0].served_by = "quote \" backslash \\ newline \n tab \t bell \a";
    const auto doc = test::JsonParser::parse(render_json(LoadOptions{}, runs));
    ASSERT_TRUE(doc.has_value());
    EXPECT_EQ((*doc)["runs"].array()[0]["served_by"].string(), runs[0].served_by);
}

TEST(RenderJson, RatiosAppearInTheComparison) {
    const auto doc = test::JsonParser::parse(render_json(LoadOptions{}, matrix()));
    ASSERT_TRUE(doc.has_value());
    EXPECT_DOUBLE_EQ((*doc)["comparison"].array()[0]["pages_per_s_vs_seed"].number(), 3.0);
    EXPECT_TRUE((*doc)["comparison"].array()[3]["pages_per_s_vs_seed"].is_null());
}

TEST(RenderJson, OkIsFalseWhenARunFailed) {
    std::vector<RunResult> runs = matrix();
    runs[1].invariant_violations = 1;
    const auto doc = test::JsonParser::parse(render_json(LoadOptions{}, runs));
    ASSERT_TRUE(doc.has_value());
    EXPECT_FALSE((*doc)["ok"].boolean());
    EXPECT_FALSE((*doc)["runs"].array()[1]["passed"].boolean());
}

TEST(RenderJson, CarriesTheEnvironment) {
    const auto start = std::chrono::system_clock::now();
    const Environment env = capture_environment(start);
    const auto doc = test::JsonParser::parse(render_json(LoadOptions{}, matrix(), env));
    ASSERT_TRUE(doc.has_value());
    const test::JsonValue& e = (*doc)["environment"];
    ASSERT_TRUE(e.is_object());
    for (const char* f : {"host", "kernel", "cpu.model", "time", "version", "git_revision"}) {
        ASSERT_TRUE(e.at(f).is_string()) << f;
        EXPECT_FALSE(e.at(f).string().empty()) << f;
    }
    EXPECT_GE(e.at("cpu.online").number(), 1.0);
    EXPECT_EQ(e["version"].string(), std::string(project_version()));
    EXPECT_EQ(e["git_revision"].string(), std::string(git_revision()));
    EXPECT_EQ((*doc)["version"].string(), std::string(project_version()));
    // ISO-8601 UTC of the start, to the second.
    const std::time_t secs = std::chrono::system_clock::to_time_t(start);
    std::tm tm{};
    ASSERT_NE(::gmtime_r(&secs, &tm), nullptr);
    char want[32];
    ASSERT_GT(std::strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%SZ", &tm), 0u);
    EXPECT_EQ(e["time"].string(), want);
    EXPECT_NE(e["kernel"].string().find(' '), std::string::npos) << "release and version";
}

TEST(RenderJson, EmptyListsAreArraysAndMissingEngineIsNull) {
    std::vector<RunResult> runs{RunResult{}};
    runs[0].spec.strategy = StrategyKind::Strict;
    const auto doc = test::JsonParser::parse(render_json(LoadOptions{}, runs));
    ASSERT_TRUE(doc.has_value());
    const test::JsonValue& run = (*doc)["runs"].array()[0];
    EXPECT_TRUE(run["checks"].is_array());
    EXPECT_TRUE(run["timeline"].is_array());
    EXPECT_TRUE(run.at("cpu.threads").is_array());
    EXPECT_TRUE(run["engine_stats"].is_null());
    EXPECT_TRUE(run["engine"].is_null());
    const auto none = test::JsonParser::parse(render_json(LoadOptions{}, {}));
    ASSERT_TRUE(none.has_value());
    EXPECT_TRUE((*none)["runs"].is_array());
    EXPECT_TRUE((*none)["comparison"].is_array());
    EXPECT_TRUE((*none)["ok"].boolean());
}

TEST(JsonParser, RejectsMalformedDocuments) {
    EXPECT_FALSE(test::JsonParser::parse("{\"a\": 1,}").has_value());
    EXPECT_FALSE(test::JsonParser::parse("{\"a\": nan}").has_value());
    EXPECT_FALSE(test::JsonParser::parse("[1 2]").has_value());
    EXPECT_FALSE(test::JsonParser::parse("{\"a\": 1, \"a\": 2}").has_value());
    EXPECT_TRUE(test::JsonParser::parse(" {\"a\": [1, -2.5e3, true, null, \"x\"]} ").has_value());
}

TEST(PrintTable, ListsEveryRunWithItsRatio) {
    char* buf = nullptr;
    std::size_t len = 0;
    std::FILE* f = ::open_memstream(&buf, &len);
    ASSERT_NE(f, nullptr);
    print_table(f, matrix());
    std::fclose(f);
    const std::string out(buf, len);
    std::free(buf);
    EXPECT_NE(out.find("coiommu/seed/ring"), std::string::npos);
    EXPECT_NE(out.find("3.00x"), std::string::npos);
    EXPECT_NE(out.find("strict/ring"), std::string::npos);
}

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/coiommu-load-test-XXXXXX";
        path_ = ::mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path_); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const std::string& path() const { return path_; }

private:
    std::string path_;
};

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

TEST(WritePlot, DrawsAPng) {
    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed (scripts/deps.sh installs gnuplot-nox)";
    TempDir dir;
    const std::string png = dir.path() + "/plot.png";
    ASSERT_OK(write_plot(png, matrix()));
    ASSERT_TRUE(std::filesystem::exists(png));
    EXPECT_GT(std::filesystem::file_size(png), 1000u);
    EXPECT_TRUE(std::filesystem::exists(png + ".gp"));
}

TEST(WritePlot, WithoutGnuplotSaysENOENTAndKeepsTheScript) {
    TempDir dir;
    const std::string png = dir.path() + "/plot.png";
    const char* old = std::getenv("PATH");
    const std::string saved = old != nullptr ? old : "";
    ::setenv("PATH", dir.path().c_str(), 1);  // no gnuplot there
    const auto st = write_plot(png, matrix());
    ::setenv("PATH", saved.c_str(), 1);
    EXPECT_ERR(st, ENOENT);
    EXPECT_TRUE(std::filesystem::exists(png + ".gp"));
}

TEST(WritePlot, AMissingDirectoryIsAFileErrorNotAMissingGnuplot) {
    TempDir dir;
    const std::string png = dir.path() + "/no/such/dir/plot.png";
    const auto script = write_plot_files(png, matrix());
    EXPECT_ERR(script, ENOENT);
    ASSERT_FALSE(script.has_value());
    EXPECT_NE(script.error().context.find(png), std::string::npos) << script.error().context;
}

TEST(CheckWritable, RefusesAMissingDirectoryAndLeavesFilesAsTheyWere) {
    TempDir dir;
    EXPECT_ERR(check_writable(dir.path() + "/no/such/dir/r.json"), ENOENT);
    const std::string fresh = dir.path() + "/fresh.json";
    ASSERT_OK(check_writable(fresh));
    EXPECT_FALSE(std::filesystem::exists(fresh)) << "the probe removes the file it created";
    const std::string existing = dir.path() + "/existing.json";
    std::ofstream(existing) << "keep";
    ASSERT_OK(check_writable(existing));
    EXPECT_EQ(std::filesystem::file_size(existing), 4u);
}

}  // namespace
}  // namespace coiommu::loadgen
