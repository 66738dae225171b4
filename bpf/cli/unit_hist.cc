#include "bpf/cli/unit_hist.h"

#include <algorithm>
#include <bit>

namespace coiommu::bpf {

unsigned unit_row_of(uint64_t units) { return units < 2 ? 0U : static_cast<unsigned>(std::bit_width(units)) - 1U; }

std::vector<UnitHistRow> rebin_to_unit(const Log2Hist& ns, uint64_t ns_per_unit) {
    ns_per_unit = std::max<uint64_t>(ns_per_unit, 1);
    // 64 rows cover every uint64_t; only the first few dozen can be reached from 2^38 ns.
    std::vector<uint64_t> counts(64, 0);
    int highest = -1;
    for (size_t k = 0; k < kOverflowSlot; ++k) {
        if (ns.slots[k] == 0) continue;
        const unsigned row = unit_row_of(Log2Hist::upper_bound(k) / ns_per_unit);
        counts[row] += ns.slots[k];
        highest = std::max(highest, static_cast<int>(row));
    }
    const uint64_t overflow = ns.slots[kOverflowSlot];
    std::vector<UnitHistRow> rows;
    for (int r = 0; r <= highest; ++r) {
        const auto ur = static_cast<unsigned>(r);
        const uint64_t low = ur == 0 ? 0 : uint64_t{1} << ur;
        const uint64_t high = (uint64_t{1} << (ur + 1)) - 1;
        rows.push_back({low, high, counts[ur]});
    }
    if (overflow != 0)
        rows.push_back({(Log2Hist::lower_bound(kOverflowSlot) + 1) / ns_per_unit, std::nullopt, overflow});
    return rows;
}

}  // namespace coiommu::bpf
