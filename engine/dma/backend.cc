#include "engine/dma/backend.h"

#include <fmt/format.h>

#include <cerrno>
#include <string>

namespace coiommu::dma {
namespace {

std::string describe(std::string_view backend, std::string_view op, Iova iova, uint64_t size, std::string_view why) {
    if (why.empty()) return fmt::format("{} {} iova {:#x} size {:#x}", backend, op, raw(iova), size);
    return fmt::format("{} {} iova {:#x} size {:#x}: {}", backend, op, raw(iova), size, why);
}

}  // namespace

Status DmaBackend::unmap_exact(Iova iova, uint64_t size) {
    auto bytes = unmap(iova, size);
    if (!bytes) return coiommu::unexpected(bytes.error());
    if (*bytes != size) {
        return make_error(EIO, fmt::format("{} unmap iova {:#x}: short unmap: asked {:#x}, unmapped {:#x}", name(),
                                           raw(iova), size, *bytes));
    }
    return ok();
}

Result<MapOutcome> DmaBackend::finish_map(int err, Iova iova, uint64_t size, std::string_view why) {
    counters_.map_calls.fetch_add(1, std::memory_order_relaxed);
    const auto outcome = map_outcome_for_errno(err);
    if (!outcome) {
        counters_.map_failures.fetch_add(1, std::memory_order_relaxed);
        return make_error(err, describe(name(), "map", iova, size, why));
    }
    switch (*outcome) {
        case MapOutcome::Mapped: counters_.bytes_mapped.fetch_add(size, std::memory_order_relaxed); break;
        case MapOutcome::AlreadyMapped: counters_.map_eexist.fetch_add(1, std::memory_order_relaxed); break;
        case MapOutcome::NoSpace:
            counters_.map_enospc.fetch_add(1, std::memory_order_relaxed);
            counters_.map_failures.fetch_add(1, std::memory_order_relaxed);
            break;
    }
    return *outcome;
}

Result<uint64_t> DmaBackend::finish_unmap(int err, Iova iova, uint64_t size, uint64_t bytes, std::string_view why) {
    counters_.unmap_calls.fetch_add(1, std::memory_order_relaxed);
    if (err != 0) {
        counters_.unmap_failures.fetch_add(1, std::memory_order_relaxed);
        return make_error(err, describe(name(), "unmap", iova, size, why));
    }
    counters_.bytes_unmapped.fetch_add(bytes, std::memory_order_relaxed);
    return bytes;
}

}  // namespace coiommu::dma
