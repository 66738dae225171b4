#include "engine/workers/config.h"

#include <gtest/gtest.h>

#include <cerrno>

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

TEST(EngineConfig, AutoSpinBudgetSpinsOnlyWithSpareCpus) {
    const EngineConfig cfg;  // spin_budget=auto
    EXPECT_EQ(effective_spin_budget(cfg, 2).count(), 0);
    EXPECT_EQ(effective_spin_budget(cfg, 8), kAutoSpinBudget);
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

}  // namespace
}  // namespace coiommu::workers
