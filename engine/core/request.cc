#include "engine/core/request.h"

#include <cerrno>

#include <fmt/format.h>

#include "engine/core/spec.h"

namespace coiommu::core {
namespace {

Result<DecodedRequest> decode_batch(Gpa header, const GuestMemory& mem, const EndpointSet& endpoints,
                                    const RequestLimits& limits) {
    auto info = mem.read_obj<PinPageInfo>(header);
    if (!info) return coiommu::unexpected(with_context(info.error(), "read pin page info"));
    if (!endpoints.contains(info->bdf)) {
        return make_error(EPERM, fmt::format("pin page for unexpected bdf {:#06x}", info->bdf));
    }
    const uint64_t nr = info->nr_pages;
    // The header is inside RAM, so header + 16 cannot wrap past 2^64 unless RAM ends there.
    const auto list = checked_add(header, sizeof(PinPageInfo));
    if (!list) return make_error(EFAULT, fmt::format("batch at {:#x}: gfn list wraps", raw(header)));
    if (nr != 0) {
        uint64_t bytes = 0;
        if (__builtin_mul_overflow(nr, kPinPageGfnSize, &bytes) || !mem.contains(*list, bytes)) {
            return make_error(EFAULT, fmt::format("batch at {:#x}: {} gfns do not fit in guest RAM", raw(header), nr));
        }
    }
    if (nr > limits.max_batch_pages) {
        return make_error(E2BIG, fmt::format("batch at {:#x}: {} gfns exceed the limit of {}", raw(header), nr,
                                             limits.max_batch_pages));
    }
    DecodedRequest out;
    out.kind = DecodedRequest::Kind::Batch;
    out.bdf = info->bdf;
    out.list_gpa = *list;
    out.nr_pages = nr;
    return out;
}

}  // namespace

Result<DecodedRequest> decode_request(uint64_t slot_value, const GuestMemory& mem, const EndpointSet& endpoints,
                                      const RequestLimits& limits) {
    if (slot_value == 0) return make_error(EINVAL, "spurious trigger: notify slot is empty");
    if ((slot_value & kPinPagesInBatch) != 0) {
        return decode_batch(Gpa{slot_value & ~kPinPagesInBatch}, mem, endpoints, limits);
    }
    const auto bdf = static_cast<uint16_t>(slot_value & kSingleBdfMask);
    if (!endpoints.contains(bdf)) {
        return make_error(EPERM, fmt::format("pin page for unexpected bdf {:#06x}", bdf));
    }
    DecodedRequest out;
    out.kind = DecodedRequest::Kind::Single;
    out.bdf = bdf;
    out.gfn = Gfn{slot_value >> kSingleGfnShift};
    out.nr_pages = 1;
    return out;
}

RequestReport process_request(const PinContext& ctx, const DttWalker& dtt, const DecodedRequest& req) {
    RequestReport report;
    DttWalker walker = dtt;
    walker.reset_cursor();

    auto pin_one = [&](Gfn gfn) -> bool {
        auto r = pin_page(ctx, walker, gfn);
        if (!r) {
            report.first_error = std::move(r.error());
            return false;
        }
        ++report.pages_done;
        switch (r->outcome) {
            case PinOutcome::Pinned: ++report.pinned; break;
            case PinOutcome::AlreadyPinned: ++report.already_pinned; break;
            case PinOutcome::Repinned: ++report.repinned; break;
            case PinOutcome::MapFailed: ++report.map_failed; break;
            case PinOutcome::NoSpace: ++report.no_space; break;
        }
        return true;
    };

    if (req.kind == DecodedRequest::Kind::Single) {
        pin_one(req.gfn);
        return report;
    }
    for (uint64_t k = 0; k < req.nr_pages; ++k) {
        // decode_request proved the whole list lies in one region, so this cannot overflow.
        const Gpa at = offset(req.list_gpa, k * kPinPageGfnSize);
        // A plain copy: the guest must not touch the list until we complete, and if it does, we
        // just pin whatever gfn we read (every gfn is validated by pin_page).
        auto gfn = ctx.mem.read_obj<uint64_t>(at);
        if (!gfn) {
            report.first_error = with_context(gfn.error(), fmt::format("batch gfn {} of {}", k, req.nr_pages));
            break;
        }
        if (!pin_one(Gfn{*gfn})) {
            report.first_error =
                with_context(std::move(*report.first_error), fmt::format("batch gfn {} of {}", k, req.nr_pages));
            break;
        }
    }
    return report;
}

}  // namespace coiommu::core
