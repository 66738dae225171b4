#include "exporter/collector_set.h"

#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>

#include <prometheus/text_serializer.h>

#include "exporter/collector.h"
#include "exporter/metric_builder.h"
#include "tests/testing/expect.h"
#include "tests/unit/exporter/scrape_support.h"

namespace coiommu::exporter {
namespace {

// A collector that emits one gauge family and optionally fails or throws.
class StubCollector final : public Collector {
public:
    enum class Mode { Ok, Partial, Throw };
    StubCollector(std::string family, Mode mode) : family_(std::move(family)), mode_(mode) {}
    Status collect_into(std::vector<prometheus::MetricFamily>& out) const override {
        if (mode_ == Mode::Throw) throw std::runtime_error("stub exploded");
        auto f = gauge_family(family_, "stub");
        add_gauge(f, 1.0);
        out.push_back(std::move(f));
        if (mode_ == Mode::Partial) return make_error(EIO, "stub partial");
        return ok();
    }

private:
    std::string family_;
    Mode mode_;
};

// A plain prometheus-cpp Collectable (not one of ours) that throws.
class ThrowingCollectable final : public prometheus::Collectable {
public:
    std::vector<prometheus::MetricFamily> Collect() const override { throw std::logic_error("foreign boom"); }
};

testing::Exposition scrape(const CollectorSet& set) {
    auto parsed = testing::parse_exposition(prometheus::TextSerializer().Serialize(set.Collect()));
    EXPECT_TRUE(parsed.has_value()) << parsed.error().message();
    return parsed ? *parsed : testing::Exposition{};
}

TEST(CollectorSet, ServesEveryCollectorsFamilies) {
    CollectorSet set;
    ASSERT_OK(set.add("a", std::make_shared<StubCollector>("coiommu_test_a", StubCollector::Mode::Ok)));
    ASSERT_OK(set.add("b", std::make_shared<StubCollector>("coiommu_test_b", StubCollector::Mode::Ok)));
    const auto e = scrape(set);
    EXPECT_EQ(e.value("coiommu_test_a"), 1.0);
    EXPECT_EQ(e.value("coiommu_test_b"), 1.0);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "a"}}), 1.0);
    EXPECT_EQ(e.value("coiommu_exporter_collect_errors_total", {{"collector", "b"}}), 0.0);
    EXPECT_EQ(e.find("coiommu_exporter_collect_duration_seconds").size(), 2u);
}

TEST(CollectorSet, DuplicateNameIsRejected) {
    CollectorSet set;
    ASSERT_OK(set.add("a", std::make_shared<StubCollector>("coiommu_test_a", StubCollector::Mode::Ok)));
    EXPECT_ERR(set.add("a", std::make_shared<StubCollector>("coiommu_test_b", StubCollector::Mode::Ok)), EEXIST);
}

TEST(CollectorSet, BadNameOrNullCollectableIsRejected) {
    CollectorSet set;
    EXPECT_ERR(set.add("Bad-Name", std::make_shared<StubCollector>("x", StubCollector::Mode::Ok)), EINVAL);
    EXPECT_ERR(set.add("ok", nullptr), EINVAL);
    EXPECT_EQ(set.size(), 0u);
}

TEST(CollectorSet, ThrowingCollectorIsCountedAndOthersStillServed) {
    CollectorSet set;
    ASSERT_OK(set.add("boom", std::make_shared<StubCollector>("coiommu_test_boom", StubCollector::Mode::Throw)));
    ASSERT_OK(set.add("good", std::make_shared<StubCollector>("coiommu_test_good", StubCollector::Mode::Ok)));
    (void)set.Collect();
    const auto e = scrape(set);
    EXPECT_EQ(e.value("coiommu_test_good"), 1.0);
    EXPECT_TRUE(e.find("coiommu_test_boom").empty());
    EXPECT_EQ(e.value("coiommu_exporter_collect_errors_total", {{"collector", "boom"}}), 2.0);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "boom"}}), 0.0);
}

TEST(CollectorSet, ForeignCollectableExceptionIsCaught) {
    CollectorSet set;
    ASSERT_OK(set.add("foreign", std::make_shared<ThrowingCollectable>()));
    const auto e = scrape(set);
    EXPECT_EQ(e.value("coiommu_exporter_collect_errors_total", {{"collector", "foreign"}}), 1.0);
}

TEST(CollectorSet, PartialCollectionKeepsItsDataButCountsAnError) {
    CollectorSet set;
    ASSERT_OK(set.add("part", std::make_shared<StubCollector>("coiommu_test_part", StubCollector::Mode::Partial)));
    const auto e = scrape(set);
    EXPECT_EQ(e.value("coiommu_test_part"), 1.0);
    EXPECT_EQ(e.value("coiommu_exporter_collect_errors_total", {{"collector", "part"}}), 1.0);
}

TEST(CollectorSet, SecondFamilyWithTheSameNameIsDropped) {
    CollectorSet set;
    ASSERT_OK(set.add("first", std::make_shared<StubCollector>("coiommu_test_same", StubCollector::Mode::Ok)));
    ASSERT_OK(set.add("second", std::make_shared<StubCollector>("coiommu_test_same", StubCollector::Mode::Ok)));
    const auto families = set.Collect();
    int same = 0;
    for (const auto& f : families) same += f.name == "coiommu_test_same" ? 1 : 0;
    EXPECT_EQ(same, 1);
    const auto e = scrape(set);
    EXPECT_EQ(e.value("coiommu_exporter_collector_success", {{"collector", "second"}}), 0.0);
}

TEST(CollectorSet, RemovedCollectorIsNoLongerScraped) {
    CollectorSet set;
    ASSERT_OK(set.add("a", std::make_shared<StubCollector>("coiommu_test_a", StubCollector::Mode::Ok)));
    ASSERT_OK(set.remove("a"));
    EXPECT_ERR(set.remove("a"), ENOENT);
    const auto e = scrape(set);
    EXPECT_TRUE(e.find("coiommu_test_a").empty());
}

TEST(ExporterCollector, CollectSwallowsErrorsAndExceptions) {
    const StubCollector boom("coiommu_test_boom", StubCollector::Mode::Throw);
    EXPECT_TRUE(boom.Collect().empty());
    const StubCollector part("coiommu_test_part", StubCollector::Mode::Partial);
    EXPECT_EQ(part.Collect().size(), 1u);
}

}  // namespace
}  // namespace coiommu::exporter
