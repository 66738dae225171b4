// coiommu-trace -u/-m: a ns log2 histogram re-binned into biolatency's integer rows of a coarser
// unit. Pure (no libbpf); tested by tests/integration/bpf/unit_hist_test.cc.
//
// biolatency divides each value into the unit before taking its log2, so its rows are the integer
// ranges [0, 1], [2, 3], [4, 7], ..., [2^r, 2^(r+1) - 1] of the unit. The BPF maps hold ceil-log2
// slots in ns (slot k: 2^(k-1) < v <= 2^k ns, slot 0: v <= 1 ns; bpf/abi/hist.h) and the raw values
// are gone, so the display re-bins whole slots. A unit of 1000 or 10^6 ns is not a power of two, so
// a slot's range can straddle a row boundary; the whole slot then goes to the row holding its
// upper bound, floor(2^k / ns_per_unit). That choice is conservative: a value is never shown in a
// row below its true one (floor(v / ns_per_unit)'s row), and at most one row above it (the slot
// spans a factor of 2, a row spans a factor of 2).
// The overflow slot (> 2^38 ns) is a last row `low -> inf`, low = floor((2^38 + 1) / ns_per_unit).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "bpf/loader/snapshot.h"

namespace coiommu::bpf {

struct UnitHistRow {
    uint64_t low = 0;              // inclusive, in the unit
    std::optional<uint64_t> high;  // inclusive, in the unit; nullopt: +Inf (the overflow slot)
    uint64_t count = 0;

    bool operator==(const UnitHistRow&) const = default;
};

// The biolatency row of an integer value in the unit: 0 for 0 and 1, else floor(log2(u)).
[[nodiscard]] unsigned unit_row_of(uint64_t units);

// Rows 0 .. the highest non-empty one (biolatency prints from row 0; empty rows in between are
// kept, with count 0), then the overflow row when its slot is non-empty. An empty histogram gives
// no rows. ns_per_unit >= 1 (1000: us, 1000000: ms); 1 re-bins into integer ns rows.
[[nodiscard]] std::vector<UnitHistRow> rebin_to_unit(const Log2Hist& ns, uint64_t ns_per_unit);

}  // namespace coiommu::bpf
