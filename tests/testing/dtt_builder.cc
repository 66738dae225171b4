#include "tests/testing/dtt_builder.h"

#include <array>
#include <cerrno>

namespace coiommu::testing {

Result<DttBuilder> DttBuilder::create(const DttBuilderOptions& opts) {
    if (opts.pool_pages == 0 || opts.ram_bytes / kPageSize <= opts.pool_pages) {
        return make_error(EINVAL, "DttBuilder: the pool must leave room for data pages");
    }
    const std::array<RegionSpec, 1> regions{{{Gpa{0}, opts.ram_bytes}}};
    auto mem = GuestMemory::create(regions);
    if (!mem) return coiommu::unexpected(mem.error());
    auto owned = std::make_unique<GuestMemory>(std::move(*mem));

    const Gfn pool_first{opts.ram_bytes / kPageSize - opts.pool_pages};
    emulator::GuestDttConfig cfg;
    cfg.levels = opts.levels;
    cfg.pool_base = Gpa{raw(pool_first) << kPageShift};
    cfg.pool_pages = opts.pool_pages;
    cfg.ncpus = opts.ncpus;
    auto dtt = emulator::GuestDtt::create(*owned, cfg);
    if (!dtt) return coiommu::unexpected(dtt.error());
    return DttBuilder(std::move(owned), std::move(*dtt), pool_first);
}

Result<core::DttWalker> DttBuilder::walker() const {
    return core::DttWalker::create(*mem_, dtt_->dtt_root(), dtt_->levels());
}

}  // namespace coiommu::testing
