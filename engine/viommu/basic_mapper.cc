#include "engine/viommu/basic_mapper.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <new>
#include <utility>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::viommu {
namespace {

constexpr std::string_view kLog = "viommu";

std::atomic<uint32_t> g_next_id{0};

// Whether the inclusive ranges [a_first, a_last] and [b_first, b_last] share an address.
constexpr bool overlaps(uint64_t a_first, uint64_t a_last, uint64_t b_first, uint64_t b_last) {
    return std::max(a_first, b_first) <= std::min(a_last, b_last);
}

}  // namespace

BasicMemoryMapper::BasicMemoryMapper(uint64_t mask, size_t max_mappings)
    : mask_(mask), max_mappings_(max_mappings), id_(g_next_id.fetch_add(1, std::memory_order_relaxed)) {}

Result<AddMapResult> BasicMemoryMapper::add_map(const MappingInfo& map) {
    // MappingInfo is an aggregate, so re-check what create() checks.
    if (map.size == 0) return make_error(EINVAL, "can't map 0 sized region");
    const auto end = checked_add(map.iova, map.size);
    if (!end) return make_error(EOVERFLOW, "iova overflow");
    if (!checked_add(map.gpa, map.size)) return make_error(EOVERFLOW, "gpa overflow");

    std::lock_guard lock(mu_);
    // The only candidate for an overlap is the mapping with the greatest start below the new
    // end: mappings never overlap, so an earlier one ends before it starts.
    auto it = maps_.lower_bound(raw(*end));
    if (it != maps_.begin() && std::prev(it).tag() > raw(map.iova)) return AddMapResult::OverlapFailure;
    if (maps_.size() >= max_mappings_) {
        return make_error(ENOSPC, fmt::format("mapping limit of {} reached", max_mappings_));
    }
    // No mapping starts in [iova, end) (it would overlap), so `it` is where iova belongs; the
    // only error left is ENOMEM, and the map is then unchanged.
    if (auto st = maps_.insert(it, raw(map.iova), raw(*end), map); !st) {
        return coiommu::unexpected(with_context(st.error(), "add_map"));
    }
    return AddMapResult::Ok;
}

Result<RemoveMapResult> BasicMemoryMapper::remove_map(Iova iova, uint64_t size) {
    if (size == 0) return make_error(EINVAL, "can't unmap 0 sized region");
    const auto end = checked_add(iova, size);
    if (!end) return make_error(EOVERFLOW, "iova overflow");
    const uint64_t start = raw(iova);

    std::lock_guard lock(mu_);
    // Walk down from the end and check every affected mapping before touching any, so a
    // request that would split a mapping changes nothing. The affected mappings form one run
    // [first, last_excl) of the ordered map.
    const auto last_excl = maps_.lower_bound(raw(*end));
    auto first = last_excl;
    while (first != maps_.begin()) {
        const auto prev = std::prev(first);
        const uint64_t m_end = prev.tag();
        if (m_end <= start) break;  // entirely below the range: done
        // It starts below the range end; it must also lie wholly inside the range.
        if (prev.key() < start || m_end > raw(*end)) return RemoveMapResult::overlap_failure();
        first = prev;
    }
    maps_.erase(first, last_excl);

    if (export_) {
        const uint64_t last = raw(*end) - 1;
        for (const ExportedRange& r : export_->exported) {
            if (overlaps(r.first, r.last, start, last)) {
                return RemoveMapResult::success(on_fault(*export_));
            }
        }
    }
    return RemoveMapResult::success();
}

EventFd BasicMemoryMapper::reset_domain() {
    std::lock_guard lock(mu_);
    maps_.clear();
    if (export_ && !export_->exported.empty()) return on_fault(*export_);
    return {};
}

EventFd BasicMemoryMapper::on_fault(ExportState& state) {
    EventFd ev = std::move(state.resolved_external);  // leaves it invalid: later faults get none
    if (ev.valid()) {
        // An eventfd write fails only when the counter would overflow (~2^64 signals), which a
        // fresh per-session event cannot reach; log rather than abort like crosvm's expect().
        if (auto s = state.fault_event.signal(); !s) {
            CLOG_ERROR(kLog, "failed to signal the IOMMU fault event: {}", s.error().message());
        }
    }
    return ev;
}

Result<EventFd> BasicMemoryMapper::start_export_session() {
    std::lock_guard lock(mu_);
    if (export_ && !export_->exported.empty()) {
        return make_error(EBUSY, "previous export session still active");
    }
    auto fault = EventFd::create();
    if (!fault) return coiommu::unexpected(with_context(fault.error(), "failed to create fault_event"));
    auto client_fault = fault->duplicate();
    if (!client_fault) return coiommu::unexpected(with_context(client_fault.error(), "failed to clone fault event"));
    auto resolved = EventFd::create();
    if (!resolved) return coiommu::unexpected(with_context(resolved.error(), "failed to create resolve event"));
    auto resolved_external = resolved->duplicate();
    if (!resolved_external) {
        return coiommu::unexpected(with_context(resolved_external.error(), "failed to clone resolve event"));
    }
    export_.emplace(ExportState{{}, std::move(*fault), std::move(*resolved), std::move(*resolved_external)});
    return std::move(*client_fault);
}

Result<std::vector<MemRegion>> BasicMemoryMapper::export_range(Iova iova, uint64_t size) {
    try {
        return export_impl(iova, size);
    } catch (const std::bad_alloc&) {  // both vectors have the strong guarantee: nothing changed
        return make_error(ENOMEM, "export: out of memory");
    }
}

Result<std::vector<MemRegion>> BasicMemoryMapper::export_impl(Iova iova, uint64_t size) {
    std::lock_guard lock(mu_);
    if (!export_) return make_error(ENOENT, "no export state");
    if (!export_->resolved_external.valid()) return make_error(EPIPE, "broken export state");
    if (size == 0) return make_error(EINVAL, "can't translate 0 sized region");
    const auto end = checked_add(iova, size);
    if (!end) return make_error(EOVERFLOW, "iova overflow");
    const uint64_t start = raw(iova);

    // Walk down from the end over the mappings covering the range. Regions are built in
    // descending IOVA order, merging a mapping into the region above it when its GPA range
    // ends where that region's begins and the protection matches.
    std::vector<MemRegion> regions;
    uint64_t covered_from = raw(*end);  // [covered_from, end) is covered so far
    auto it = maps_.lower_bound(raw(*end));
    while (it != maps_.begin()) {
        --it;
        const MappingInfo& m = *it;
        const uint64_t m_start = raw(m.iova);
        if (covered_from > m_start + m.size) break;  // a hole below covered_from
        const uint64_t len = covered_from - std::max(m_start, start);
        // m.gpa + m.size cannot overflow: add_map checked it.
        if (!regions.empty() && raw(m.gpa) + m.size == raw(regions.back().gpa) && m.prot == regions.back().prot) {
            regions.back().gpa = m.gpa;
            regions.back().len += len;
        } else {
            regions.push_back(MemRegion{m.gpa, len, m.prot});
        }
        if (start >= m_start) {
            std::reverse(regions.begin(), regions.end());
            // The first region starts inside its mapping.
            const auto first_gpa = checked_add(m.gpa, start - m_start);
            if (!first_gpa) return make_error(EOVERFLOW, "gpa overflow");
            regions.front().gpa = *first_gpa;
            export_->exported.push_back(ExportedRange{start, raw(*end) - 1});
            return regions;
        }
        covered_from = m_start;
    }
    return make_error(EFAULT, fmt::format("invalid iova {:#x} {:#x}", start, size));
}

Status BasicMemoryMapper::release(Iova iova, uint64_t size) {
    // crosvm's AddressRange::from_start_and_size: size 0 is the empty range (never exported),
    // otherwise the inclusive end must fit in 64 bits.
    uint64_t last = 0;
    const bool empty_range = size == 0;
    if (!empty_range && __builtin_add_overflow(raw(iova), size - 1, &last)) {
        return make_error(EOVERFLOW, "iova overflow");
    }

    std::lock_guard lock(mu_);
    if (!export_) return make_error(ENOENT, "no export state");
    auto& exported = export_->exported;
    const ExportedRange wanted{raw(iova), last};
    const auto found = empty_range ? exported.end() : std::find(exported.begin(), exported.end(), wanted);
    if (found == exported.end()) {
        CLOG_WARN_RL(kLog, "tried to release unknown range {:#x} size {:#x}", raw(iova), size);
        return ok();
    }
    // swap_remove: order is not kept.
    *found = exported.back();
    exported.pop_back();

    if (exported.empty() && !export_->resolved_external.valid()) {
        if (auto s = export_->resolved_internal.signal(); !s) {
            return coiommu::unexpected(with_context(s.error(), "failed to resolve fault"));
        }
    }
    return ok();
}

size_t BasicMemoryMapper::size() const {
    std::lock_guard lock(mu_);
    return maps_.size();
}

size_t BasicMemoryMapper::exported_count() const {
    std::lock_guard lock(mu_);
    return export_ ? export_->exported.size() : 0;
}

}  // namespace coiommu::viommu
