#include "engine/telemetry/engine_stats.h"

namespace coiommu::telemetry {
namespace {

// Overloads that fold one live cell (or one plain value) into a plain total.
void add_into(uint64_t& dst, const Counter& src) noexcept { dst += src.load(); }
void add_into(uint64_t& dst, const uint64_t& src) noexcept { dst += src; }
void add_into(HistogramSnapshot& dst, const Log2Histogram& src) noexcept { src.accumulate_into(dst); }
void add_into(HistogramSnapshot& dst, const HistogramSnapshot& src) noexcept { dst.merge(src); }

template <class E, class D, class S, std::size_t N>
void add_into(EnumArray<E, D, N>& dst, const EnumArray<E, S, N>& src) noexcept {
    for (std::size_t i = 0; i < N; ++i) add_into(dst.at_index(i), src.at_index(i));
}

struct AddInto {
    template <class D, class S>
    void operator()(D& dst, const S& src) const noexcept {
        add_into(dst, src);
    }
};

}  // namespace

void accumulate(ShardTotals& totals, const StatsShard& shard) noexcept {
    StatsFields<uint64_t, HistogramSnapshot>::for_each_field(totals, shard, AddInto{});
}

void merge(ShardTotals& totals, const ShardTotals& other) noexcept {
    StatsFields<uint64_t, HistogramSnapshot>::for_each_field(totals, other, AddInto{});
}

StatsSnapshot StatsRegistry::snapshot() const {
    StatsSnapshot s;
    shards_.for_each([&](const StatsShard& shard) {
        accumulate(s.totals, shard);
        ++s.shards;
    });
    GaugeFields<uint64_t>::for_each_field(s.gauges, gauges_,
                                          [](uint64_t& dst, const PaddedGauge& src) { dst = src.load(); });
    return s;
}

}  // namespace coiommu::telemetry
