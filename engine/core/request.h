// Pin requests: decoding the u64 a vCPU writes into its notify slot, and crosvm's serial
// processing of one request (engine/README.md, "Pin path").
//
//   single  (gfn << 16) | bdf                          bit 63 clear
//   batch   gpa(PinPageInfo) | (1 << 63)               header {u16 bdf, u16 pad[3], u64 nr_pages}
//                                                      followed by nr_pages u64 gfns
//
// Every field is guest-controlled: the BDF must be a configured endpoint and a batch's gfn list
// must fit in guest RAM and under a configured maximum, so no slot value makes the host loop for
// long or read outside guest RAM.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/core/dtt.h"
#include "engine/core/pinner.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::core {

// The PCI endpoints (bus << 8 | devfn) allowed to request pins. O(1) membership in a 65536-bit
// bitmap (8 KiB). Not thread-safe for add(); contains() is safe concurrently once filled.
class EndpointSet {
public:
    EndpointSet() = default;
    explicit EndpointSet(std::span<const uint16_t> bdfs) {
        for (uint16_t b : bdfs) add(b);
    }
    void add(uint16_t bdf) {
        if (!contains(bdf)) ++count_;
        bits_[bdf >> 6] |= uint64_t{1} << (bdf & 63);
    }
    [[nodiscard]] bool contains(uint16_t bdf) const { return (bits_[bdf >> 6] >> (bdf & 63) & 1) != 0; }
    [[nodiscard]] uint64_t size() const { return count_; }

private:
    std::array<uint64_t, 65536 / 64> bits_{};
    uint64_t count_ = 0;
};

struct RequestLimits {
    // Upper bound on a batch's nr_pages. The guest driver batches one DMA map (a scatterlist);
    // 65536 pages is 256 MiB, the whole default VFIO entry budget.
    uint64_t max_batch_pages = 65536;
};

struct DecodedRequest {
    enum class Kind { Single, Batch };
    Kind kind = Kind::Single;
    uint16_t bdf = 0;
    Gfn gfn{};              // Single: the page
    Gpa list_gpa{};         // Batch: GPA of the first u64 gfn (header + 16)
    uint64_t nr_pages = 0;  // Single: 1; Batch: the header's nr_pages (validated, may be 0)
};

// Decodes a notify-slot value. The batch header is copied once (the guest may change it while we
// work; only the copy is used).
// Errors: EINVAL for a slot value of 0 (a spurious trigger; crosvm would reject it as bdf 0
// only when 0 is not an endpoint); EPERM "pin page for unexpected bdf" when the BDF is not in
// `endpoints`; EFAULT when the batch header or the whole gfn list [list_gpa, list_gpa + 8*nr_pages)
// is not inside one guest RAM region; E2BIG when nr_pages > limits.max_batch_pages.
[[nodiscard]] Result<DecodedRequest> decode_request(uint64_t slot_value, const GuestMemory& mem,
                                                    const EndpointSet& endpoints, const RequestLimits& limits);

struct RequestReport {
    uint64_t pages_done = 0;           // gfns whose pin_page returned (any outcome)
    uint64_t pinned = 0;               // PinOutcome::Pinned
    uint64_t already_pinned = 0;       // PinOutcome::AlreadyPinned
    uint64_t repinned = 0;             // PinOutcome::Repinned
    uint64_t map_failed = 0;           // PinOutcome::MapFailed
    uint64_t no_space = 0;             // PinOutcome::NoSpace
    std::optional<Error> first_error;  // the error that stopped the request, if any

    // Every page of the request ended up PINNED (what the guest will check).
    [[nodiscard]] bool all_pinned(const DecodedRequest& req) const {
        return !first_error && map_failed == 0 && no_space == 0 && pages_done == req.nr_pages;
    }
};

// crosvm's serial algorithm: pins every gfn of `req` in order with one fresh cursor (a copy of
// `dtt` with its cursor reset), re-reading each batch gfn from guest memory. The first Error
// (bad DTT, gfn outside RAM) stops the request: the remaining gfns are not pinned and the error is
// returned in first_error. MapFailed / NoSpace are counted and do not stop it (as in crosvm).
// Runs at most req.nr_pages iterations (bounded by decode_request).
// Thread-safety: as pin_page; `dtt` is only copied.
[[nodiscard]] RequestReport process_request(const PinContext& ctx, const DttWalker& dtt, const DecodedRequest& req);

}  // namespace coiommu::core
