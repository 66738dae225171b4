// The coiommu-load program: exit codes and messages (the real binary), and a whole short
// comparison run in-process with its JSON and plot.
#include "engine/loadgen/cli.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/unit/loadgen/json_parse.h"

namespace coiommu::loadgen {
namespace {

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/coiommu-load-cli-XXXXXX";
        path_ = ::mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path_); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

struct Exit {
    int code = -1;
    std::string out;
    std::string err;
};

// Runs the coiommu-load binary with `args` (shell words).
Exit run_binary(const std::string& args) {
    TempDir dir;
    const std::string cmd =
        std::string(COIOMMU_LOAD_BIN) + " " + args + " >" + dir.file("out") + " 2>" + dir.file("err");
    const int status = std::system(cmd.c_str());
    Exit e;
    e.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    e.out = slurp(dir.file("out"));
    e.err = slurp(dir.file("err"));
    return e;
}

TEST(CoiommuLoadBinary, HelpExitsZeroWithUsage) {
    const Exit e = run_binary("--help");
    EXPECT_EQ(e.code, 0);
    EXPECT_NE(e.out.find("Usage: coiommu-load"), std::string::npos) << e.out;  // CLI11's capital
}

TEST(CoiommuLoadBinary, VersionExitsZeroWithTheVersionLine) {
    const Exit e = run_binary("-V");
    EXPECT_EQ(e.code, 0);
    EXPECT_EQ(e.out.rfind("coiommu-load ", 0), 0u) << e.out;
}

TEST(CoiommuLoadBinary, AMistypedFlagExitsTwoWithASuggestion) {
    const Exit e = run_binary("--duraton 1");
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("did you mean '--duration'?"), std::string::npos) << e.err;
    EXPECT_TRUE(e.out.empty());
}

TEST(CoiommuLoadBinary, HelpWhereAFileNameBelongsExitsTwoAndWritesNothing) {
    TempDir dir;
    const Exit e = run_binary("--duration 0.2 --json --help");
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("--json"), std::string::npos) << e.err;
    EXPECT_FALSE(std::filesystem::exists("--help"));
}

TEST(CoiommuLoadBinary, UnknownFlagExitsTwoWithAMessage) {
    const Exit e = run_binary("--bogus");
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("unknown option '--bogus'"), std::string::npos);
    EXPECT_NE(e.err.find("--help"), std::string::npos);
    EXPECT_TRUE(e.out.empty());
}

TEST(CoiommuLoadBinary, MalformedValueExitsTwo) {
    const Exit e = run_binary("--vcpus lots");
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("--vcpus"), std::string::npos);
}

TEST(CoiommuLoadBinary, ConflictingFlagsExitTwo) {
    EXPECT_EQ(run_binary("--think-us 1 --rate 10").code, 2);
    EXPECT_EQ(run_binary("--backend vfio").code, 2);
}

TEST(CoiommuLoadBinary, BadEngineOptionExitsTwo) {
    const Exit e = run_binary("--engine-opts unpin_limit=0");
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("unpin_limit"), std::string::npos);
}

TEST(CoiommuLoadBinary, AShortRunExitsZeroWithAJsonReport) {
    TempDir dir;
    const Exit e = run_binary("--duration 0.3 --ram 64M --workload ring --buffer-pages 4 --log-level error --json " +
                              dir.file("r.json"));
    EXPECT_EQ(e.code, 0) << e.err;
    EXPECT_NE(e.out.find("coiommu/fast/ring"), std::string::npos);
    const auto doc = test::JsonParser::parse(slurp(dir.file("r.json")));
    ASSERT_TRUE(doc.has_value());
    EXPECT_TRUE((*doc)["ok"].boolean());
    EXPECT_FALSE((*doc).at("environment.host").string().empty());
    EXPECT_FALSE((*doc).at("environment.git_revision").string().empty());
}

TEST(CoiommuLoadBinary, ABadJsonPathFailsBeforeTheRun) {
    const Exit e = run_binary(
        "--duration 1 --ram 64M --workload ring --buffer-pages 4 --log-level error --json "
        "/nonexistent-coiommu-dir/r.json");
    EXPECT_EQ(e.code, 1);
    EXPECT_NE(e.err.find("--json"), std::string::npos) << e.err;
    EXPECT_NE(e.err.find("/nonexistent-coiommu-dir/r.json"), std::string::npos) << e.err;
    EXPECT_EQ(e.out.find("coiommu/fast/ring"), std::string::npos) << "the run should not have started:\n" << e.out;
}

TEST(CoiommuLoadBinary, APlotToAMissingDirectorySaysSoNotThatGnuplotIsMissing) {
    const Exit e = run_binary(
        "--duration 0.2 --ram 64M --workload ring --buffer-pages 4 --log-level error --plot "
        "/nonexistent-coiommu-dir/p.png");
    EXPECT_EQ(e.code, 1);
    EXPECT_EQ(e.err.find("gnuplot is not installed"), std::string::npos) << e.err;
    EXPECT_NE(e.err.find("--plot"), std::string::npos) << e.err;
    EXPECT_NE(e.err.find("/nonexistent-coiommu-dir/p.png"), std::string::npos) << e.err;
}

TEST(CoiommuLoadBinary, AnUnusableVfioGroupExitsOne) {
    const Exit e = run_binary("--duration 0.2 --backend vfio --vfio-group /nonexistent/vfio/7");
    EXPECT_EQ(e.code, 1);
    EXPECT_NE(e.err.find("/nonexistent/vfio/7"), std::string::npos);
}

TEST(RunCli, ComparisonRunWritesJsonAndATableWithRatios) {
    TempDir dir;
    const std::string json = dir.file("cmp.json");
    std::FILE* out = std::tmpfile();
    std::FILE* err = std::tmpfile();
    const int rc =
        run_cli({"--duration", "0.3", "--ram", "64M", "--workload", "random", "--engine", "fast,seed", "--strategy",
                 "coiommu,static", "--buffer-pages", "4", "--log-level", "error", "--json", json},
                out, err);
    std::rewind(out);
    std::string text;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, out)) text.append(buf, n);
    std::fclose(out);
    std::fclose(err);
    EXPECT_EQ(rc, 0);
    EXPECT_NE(text.find("pps/seed"), std::string::npos);
    const auto doc = test::JsonParser::parse(slurp(json));
    ASSERT_TRUE(doc.has_value());
    ASSERT_EQ((*doc)["runs"].array().size(), 3u);
    EXPECT_DOUBLE_EQ((*doc)["comparison"].array()[1]["pages_per_s_vs_seed"].number(), 1.0);
}

}  // namespace
}  // namespace coiommu::loadgen
