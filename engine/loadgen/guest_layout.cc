#include "engine/loadgen/guest_layout.h"

#include <cerrno>

#include <fmt/format.h>

#include "engine/core/spec.h"

namespace coiommu::loadgen {
namespace {

[[nodiscard]] constexpr uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

}  // namespace

Result<GuestLayout> GuestLayout::compute(uint64_t ram_bytes, uint32_t vcpus, uint64_t batch_capacity) {
    if (ram_bytes < kMinRamBytes || ram_bytes > kMaxRamBytes || !page_aligned(ram_bytes)) {
        return make_error(EINVAL, fmt::format("guest RAM of {} bytes: must be a page multiple in [{} MiB, {} GiB]",
                                              ram_bytes, kMinRamBytes >> 20, kMaxRamBytes >> 30));
    }
    if (vcpus == 0 || vcpus > core::kMaxVcpus)
        return make_error(EINVAL, fmt::format("vcpus {}: must be 1..1024", vcpus));
    if (batch_capacity == 0) return make_error(EINVAL, "batch capacity must be at least 1");
    const uint64_t ram_pages = ram_bytes >> kPageShift;
    GuestLayout l;
    l.ram_bytes = ram_bytes;
    l.batch_capacity = batch_capacity;
    l.batch_stride = div_up(sizeof(core::PinPageInfo) + batch_capacity * core::kPinPageGfnSize, kPageSize) * kPageSize;
    // Every data page may need its leaf table; the upper levels need one page per 512 children;
    // a little slack covers table pages a lost install race hands back late.
    const uint64_t leaves = div_up(ram_pages, core::kDttLeafEntries);
    const uint64_t level2 = div_up(leaves, core::kDttUpperEntries);
    const uint64_t level3 = div_up(level2, core::kDttUpperEntries);
    l.pool_pages = leaves + level2 + level3 + 1 + 2 * kDttLevels + 16;
    const uint64_t batch_pages = vcpus * l.batch_stride / kPageSize;
    if (l.pool_pages + batch_pages >= ram_pages) {
        return make_error(EINVAL, fmt::format("guest RAM of {} MiB is too small for {} batch buffers and the DTT pool",
                                              ram_bytes >> 20, vcpus));
    }
    l.data_pages = ram_pages - l.pool_pages - batch_pages;
    l.batch_base = Gpa{l.data_pages << kPageShift};
    l.pool_base = Gpa{(l.data_pages + batch_pages) << kPageShift};
    return l;
}

}  // namespace coiommu::loadgen
