#include "engine/workers/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/testing/expect.h"

namespace coiommu::workers {
namespace {

TEST(EngineConfig, DefaultsAreCrosvms) {
    const EngineConfig cfg;
    EXPECT_EQ(cfg.variant, Variant::Fast);
    EXPECT_EQ(cfg.unpin_policy, UnpinPolicy::Off);
    EXPECT_EQ(cfg.unpin_interval, std::chrono::seconds(60));
    EXPECT_FALSE(cfg.unpin_limit.has_value());
    EXPECT_EQ(cfg.unpin_gen_threshold, 10u);
    EXPECT_OK(cfg.validate());
}

TEST(EngineConfig, ZeroUnpinLimitIsRejected) {
    EngineConfig cfg;
    cfg.unpin_limit = 0;
    auto st = cfg.validate();
    EXPECT_ERR(st, EINVAL);
    EXPECT_NE(st.error().context.find("non-zero unpin_limit"), std::string::npos);
}

TEST(EngineConfig, ZeroMaxBatchPagesIsRejected) {
    EngineConfig cfg;
    cfg.max_batch_pages = 0;
    EXPECT_ERR(cfg.validate(), EINVAL);
}

TEST(EngineConfig, TooManyWorkersIsRejected) {
    EngineConfig cfg;
    cfg.workers = kMaxWorkers + 1;
    EXPECT_ERR(cfg.validate(), EINVAL);
}

TEST(EngineConfig, AutoSpinBudgetSpinsLongOnlyWithSpareCpus) {
    const EngineConfig cfg;  // spin_budget=auto
    EXPECT_EQ(effective_spin_budget(cfg, 2), kAutoShortSpinBudget);
    EXPECT_EQ(effective_spin_budget(cfg, 3), kAutoShortSpinBudget);
    EXPECT_EQ(effective_spin_budget(cfg, 4), kAutoSpinBudget);
    EXPECT_EQ(effective_spin_budget(cfg, 8), kAutoSpinBudget);
    EXPECT_LT(kAutoShortSpinBudget, kAutoSpinBudget);
}

TEST(EngineConfig, ExplicitSpinBudgetIsKept) {
    EngineConfig cfg;
    cfg.spin_budget = std::chrono::microseconds(7);
    EXPECT_EQ(effective_spin_budget(cfg, 2), std::chrono::microseconds(7));
}

TEST(EngineConfig, NegativeSpinBudgetIsRejected) {
    EngineConfig cfg;
    cfg.spin_budget = std::chrono::nanoseconds(-5);
    EXPECT_ERR(cfg.validate(), EINVAL);
}

TEST(EngineConfig, AutoWorkersServeInlineOnSmallHosts) {
    const EngineConfig cfg;  // workers=auto
    EXPECT_EQ(effective_workers(cfg, 2), 0u);
    EXPECT_EQ(effective_workers(cfg, 8), 1u);
}

TEST(ParseEngineOptions, WorkersAuto) {
    ASSERT_OK_AND_ASSIGN(auto cfg, parse_engine_options("workers=auto"));
    EXPECT_EQ(cfg.workers, kWorkersAuto);
}

TEST(ParseEngineOptions, SpinBudgetAuto) {
    ASSERT_OK_AND_ASSIGN(auto cfg, parse_engine_options("spin_budget=auto"));
    EXPECT_EQ(cfg.spin_budget, kSpinBudgetAuto);
}

TEST(ParseEngineOptions, ParsesEveryKey) {
    ASSERT_OK_AND_ASSIGN(
        auto cfg, parse_engine_options("variant=seed,workers=2,coalesce=off,spin_budget=10us,max_batch_pages=512,"
                                       "extent_store=tbb,unpin_policy=lru,unpin_interval=10,unpin_limit=8192,"
                                       "unpin_gen_threshold=0,session=7"));
    EXPECT_EQ(cfg.variant, Variant::Seed);
    EXPECT_EQ(cfg.workers, 2u);
    EXPECT_EQ(cfg.coalesce, Coalesce::Off);
    EXPECT_EQ(cfg.spin_budget, std::chrono::microseconds(10));
    EXPECT_EQ(cfg.max_batch_pages, 512u);
    EXPECT_EQ(cfg.extent_store, ExtentStoreKind::Tbb);
    EXPECT_EQ(cfg.unpin_policy, UnpinPolicy::Lru);
    EXPECT_EQ(cfg.unpin_interval, std::chrono::seconds(10));
    EXPECT_EQ(cfg.unpin_limit, 8192u);
    EXPECT_EQ(cfg.unpin_gen_threshold, 0u);
    EXPECT_EQ(cfg.session, 7u);
}

TEST(ParseEngineOptions, BareIntervalIsSecondsAndSuffixesWork) {
    ASSERT_OK_AND_ASSIGN(auto a, parse_engine_options("unpin_interval=60"));
    EXPECT_EQ(a.unpin_interval, std::chrono::seconds(60));
    ASSERT_OK_AND_ASSIGN(auto b, parse_engine_options("unpin_interval=250ms"));
    EXPECT_EQ(b.unpin_interval, std::chrono::milliseconds(250));
    ASSERT_OK_AND_ASSIGN(auto c, parse_engine_options("unpin_interval=0"));
    EXPECT_EQ(c.unpin_interval.count(), 0);
}

TEST(ParseEngineOptions, ZeroUnpinLimitIsRejected) { EXPECT_ERR(parse_engine_options("unpin_limit=0"), EINVAL); }

TEST(ParseEngineOptions, UnknownKeyIsRejected) { EXPECT_ERR(parse_engine_options("unpin_polcy=lru"), EINVAL); }

TEST(ParseEngineOptions, UnknownPolicyIsRejected) { EXPECT_ERR(parse_engine_options("unpin_policy=mru"), EINVAL); }

TEST(ParseEngineOptions, DuplicateKeyIsRejected) { EXPECT_ERR(parse_engine_options("workers=1,workers=2"), EINVAL); }

TEST(ParseEngineOptions, MalformedNumberIsRejected) { EXPECT_ERR(parse_engine_options("workers=2x"), EINVAL); }

TEST(ParseEngineOptions, ToStringRoundTrips) {
    ASSERT_OK_AND_ASSIGN(auto cfg, parse_engine_options("variant=seed,unpin_policy=lru,unpin_limit=5,workers=auto"));
    ASSERT_OK_AND_ASSIGN(auto again, parse_engine_options(to_string(cfg)));
    EXPECT_EQ(to_string(again), to_string(cfg));
}

TEST(ParseEngineOptions, UnknownNameGetsASuggestion) {
    auto r = parse_engine_options("unpin_polcy=lru");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("unknown engine option 'unpin_polcy' (did you mean 'unpin_policy'?)"),
              std::string::npos)
        << r.error().context;
    auto far = parse_engine_options("colour=blue");
    ASSERT_FALSE(far);
    EXPECT_EQ(far.error().context.find("did you mean"), std::string::npos) << far.error().context;
}

TEST(ParseEngineOptions, SpacesAroundItemsAndEqualsAreIgnored) {
    ASSERT_OK_AND_ASSIGN(auto cfg, parse_engine_options(" variant = seed, workers=2 ,unpin_policy =lru,  "));
    EXPECT_EQ(cfg.variant, Variant::Seed);
    EXPECT_EQ(cfg.workers, 2u);
    EXPECT_EQ(cfg.unpin_policy, UnpinPolicy::Lru);
}

TEST(ParseEngineOptions, DuplicateIsFoundThroughSpaces) {
    auto r = parse_engine_options("workers=1, workers =2");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().context.find("'workers' given twice"), std::string::npos) << r.error().context;
}

TEST(ParseEngineOptions, ItemWithoutValueIsRejected) {
    EXPECT_ERR(parse_engine_options("variant"), EINVAL);
    EXPECT_ERR(parse_engine_options("workers="), EINVAL);
}

TEST(ParseEngineOptions, DurationsUseTheSharedGrammar) {
    ASSERT_OK_AND_ASSIGN(auto a, parse_engine_options("unpin_interval=1.5s,spin_budget=1.5us"));
    EXPECT_EQ(a.unpin_interval, std::chrono::milliseconds(1500));
    EXPECT_EQ(a.spin_budget, std::chrono::nanoseconds(1500));
    ASSERT_OK_AND_ASSIGN(auto b, parse_engine_options("spin_budget=20,unpin_interval=2m"));
    EXPECT_EQ(b.spin_budget, std::chrono::microseconds(20)) << "a bare spin_budget is microseconds";
    EXPECT_EQ(b.unpin_interval, std::chrono::minutes(2));
    EXPECT_ERR(parse_engine_options("unpin_interval=1.5ns"), EINVAL);
    EXPECT_ERR(parse_engine_options("unpin_interval=-1s"), EINVAL);
}

TEST(ParseEngineOptions, OutOfRangeValuesNameTheOption) {
    for (const char* text :
         {"workers=65", "spin_budget=2s", "max_batch_pages=0", "max_batch_pages=1048577", "session=4294967296"}) {
        auto r = parse_engine_options(text);
        ASSERT_FALSE(r) << text;
        EXPECT_EQ(r.error().code, EINVAL);
        const std::string_view name = std::string_view(text).substr(0, std::string_view(text).find('='));
        EXPECT_EQ(r.error().context.rfind(std::string(name) + ": ", 0), 0u) << r.error().context;
    }
}

// Every field away from its default: to_string() must say all of it, in values that parse back.
TEST(ParseEngineOptions, ToStringRoundTripsEveryField) {
    EngineConfig cfg;
    cfg.variant = Variant::Seed;
    cfg.workers = 3;
    cfg.coalesce = Coalesce::Off;
    cfg.spin_budget = std::chrono::nanoseconds(1500);
    cfg.max_batch_pages = 77;
    cfg.extent_store = ExtentStoreKind::Tbb;
    cfg.unpin_policy = UnpinPolicy::Lru;
    cfg.unpin_interval = std::chrono::milliseconds(1500);
    cfg.unpin_limit = 9;
    cfg.unpin_gen_threshold = 0;
    cfg.session = 42;
    ASSERT_OK_AND_ASSIGN(const auto again, parse_engine_options(to_string(cfg)));
    EXPECT_EQ(again.variant, cfg.variant);
    EXPECT_EQ(again.workers, cfg.workers);
    EXPECT_EQ(again.coalesce, cfg.coalesce);
    EXPECT_EQ(again.spin_budget, cfg.spin_budget);
    EXPECT_EQ(again.max_batch_pages, cfg.max_batch_pages);
    EXPECT_EQ(again.extent_store, cfg.extent_store);
    EXPECT_EQ(again.unpin_policy, cfg.unpin_policy);
    EXPECT_EQ(again.unpin_interval, cfg.unpin_interval);
    EXPECT_EQ(again.unpin_limit, cfg.unpin_limit);
    EXPECT_EQ(again.unpin_gen_threshold, cfg.unpin_gen_threshold);
    EXPECT_EQ(again.session, cfg.session);
    EXPECT_EQ(to_string(again), to_string(cfg));
}

TEST(ParseEngineOptions, ToStringOfTheDefaultsParsesOverAnyBase) {
    EngineConfig base;
    base.variant = Variant::Seed;
    base.unpin_interval = std::chrono::seconds(1);
    ASSERT_OK_AND_ASSIGN(const auto cfg, parse_engine_options(to_string(EngineConfig{}), base));
    EXPECT_EQ(to_string(cfg), to_string(EngineConfig{}));
}

TEST(EngineOptionsHelp, ListsEveryOptionWithItsValuesAndDefault) {
    const std::string help = engine_options_help();
    const auto names = engine_option_names();
    ASSERT_EQ(names.size(), 11u);
    for (const std::string_view name : names) {
        EXPECT_NE(help.find("  " + std::string(name) + "="), std::string::npos) << name;
    }
    EXPECT_NE(help.find("variant=fast|seed"), std::string::npos) << help;
    EXPECT_NE(help.find("[fast]"), std::string::npos) << help;
    EXPECT_NE(help.find("N in 0..64"), std::string::npos) << "the range of workers";
    EngineConfig demo;
    demo.unpin_policy = UnpinPolicy::Lru;
    EXPECT_NE(engine_options_help(demo).find("[lru]"), std::string::npos) << "defaults come from the argument";
    for (size_t b = 0, e = 0; b < help.size(); b = e + 1) {
        e = help.find('\n', b);
        EXPECT_LE(e - b, 100u) << help.substr(b, e - b);
    }
}

// The names of the ENGINE OPTIONS entries of coiommud.8: its ".BR name=..." / ".BI name= ..." lines.
std::set<std::string> man_page_entries(const std::string& man) {
    std::set<std::string> out;
    const auto section = man.find("\n.SH ENGINE OPTIONS");
    if (section == std::string::npos) return out;
    const auto end = man.find("\n.SH ", section + 1);
    std::istringstream body(man.substr(section, end - section));
    for (std::string line; std::getline(body, line);) {
        if (!line.starts_with(".BR ") && !line.starts_with(".BI ")) continue;
        const std::string word = line.substr(4, line.find(' ', 4) - 4);
        if (const auto eq = word.find('='); eq != std::string::npos) out.insert(word.substr(0, eq));
    }
    return out;
}

// The man pages and the bash completion list the options of the table, and no other.
TEST(EngineOptionsHelp, ManPagesAndCompletionListEveryOption) {
    const std::filesystem::path root = std::filesystem::path(__FILE__).parent_path() / "../../..";
    auto read = [&](const char* rel) {
        std::ifstream in(root / rel);
        EXPECT_TRUE(in.good()) << "cannot read " << (root / rel);
        std::string text;
        for (std::string line; std::getline(in, line);) text += line + "\n";
        return text;
    };
    const std::string man5 = read("scripts/packaging/man/coiommud.conf.5");
    const std::string completion = read("scripts/packaging/completion/coiommud");
    std::set<std::string> names;
    for (const std::string_view name : engine_option_names()) {
        names.emplace(name);
        EXPECT_NE(man5.find(std::string(name) + "="), std::string::npos) << "coiommud.conf.5 lacks " << name;
        const std::regex word("[ \\t]" + std::string(name) + "[ ;\\n]");
        EXPECT_TRUE(std::regex_search(completion, word)) << "completion lacks " << name;
    }
    EXPECT_EQ(man_page_entries(read("scripts/packaging/man/coiommud.8")), names) << "coiommud.8, ENGINE OPTIONS";
}

}  // namespace
}  // namespace coiommu::workers
