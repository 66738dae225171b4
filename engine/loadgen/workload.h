// Workloads: which guest pages each emulated DMA map covers.
//
// A buffer is B contiguous guest pages (a storage request, a NIC receive buffer). Each vCPU
// thread owns one WorkloadGen seeded from (--seed, vcpu), so a run is reproducible. The page
// choice itself is made by pure functions (below), which the tests pin down one by one:
//
//   stream   sequential buffers through the vCPU's own stripe of guest RAM, wrapping (storage I/O)
//   ring     a fixed set of `ring_buffers` buffers in the vCPU's stripe, used round-robin (a NIC RX
//            ring: after the first lap every page is already pinned)
//   zipf     buffer-sized slots of all guest data RAM drawn with a Zipf(s) law: a shared hot set
//            (rank 1 is the hottest slot; ranks are scattered over RAM by a fixed permutation)
//   random   a uniformly random start page anywhere in guest data RAM
//   balloon  random traffic while a balloon thread inflates and deflates chunks of RAM (the
//            thread lives in the run driver; here it is `random`)
//   mix      each operation picks stream, ring, zipf or random with equal probability (plus the
//            balloon thread)
//
// Thread-safety: WorkloadGen is a plain value owned by one thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/loadgen/rng.h"

namespace coiommu::loadgen {

enum class WorkloadKind : uint8_t { Stream, Ring, Zipf, Random, Balloon, Mix };
inline constexpr WorkloadKind kAllWorkloads[] = {WorkloadKind::Stream, WorkloadKind::Ring,    WorkloadKind::Zipf,
                                                 WorkloadKind::Random, WorkloadKind::Balloon, WorkloadKind::Mix};

[[nodiscard]] std::string_view to_string(WorkloadKind k);
[[nodiscard]] std::optional<WorkloadKind> parse_workload(std::string_view text);
// Whether the run driver starts a balloon thread for this workload.
[[nodiscard]] constexpr bool uses_balloon(WorkloadKind k) {
    return k == WorkloadKind::Balloon || k == WorkloadKind::Mix;
}

// One DMA buffer: `pages` contiguous guest pages from `first`.
struct Buffer {
    Gfn first{};
    uint32_t pages = 0;

    friend bool operator==(const Buffer&, const Buffer&) = default;
};

struct WorkloadParams {
    WorkloadKind kind = WorkloadKind::Mix;
    uint64_t data_pages = 0;     // buffers lie in gfns [0, data_pages)
    uint32_t buffer_pages = 16;  // B
    uint32_t vcpus = 1;          // stream/ring stripe the data pages per vCPU
    double zipf_s = 1.1;         // Zipf exponent (> 0)
    uint32_t ring_buffers = 64;  // buffers per vCPU ring
    uint64_t seed = 1;

    // Errors (EINVAL): buffer_pages 0; a stripe (data_pages / vcpus) smaller than one buffer;
    // zipf_s not a positive finite number; ring_buffers 0; vcpus 0.
    [[nodiscard]] Status validate() const;
};

// ---- pure page choices -------------------------------------------------------------------------

// The vCPU's stripe of data RAM for stream and ring: [first, first + pages), pages a multiple of B.
struct Stripe {
    uint64_t first = 0;
    uint64_t pages = 0;
};
[[nodiscard]] Stripe stripe_of(uint64_t data_pages, uint32_t vcpus, uint32_t vcpu, uint32_t buffer_pages);

// stream: the n-th buffer (0-based) of a stripe, wrapping at its end.
[[nodiscard]] Buffer stream_buffer(const Stripe& s, uint32_t buffer_pages, uint64_t n);
// random: a buffer starting at `r` reduced into [0, data_pages - B].
[[nodiscard]] Buffer random_buffer(uint64_t data_pages, uint32_t buffer_pages, uint64_t r);
// zipf: buffer-sized slot of rank `rank` (1 = hottest) among `slots`, scattered by a permutation
// fixed by `seed`: slot = ((rank - 1) * mult + offset) mod slots, mult coprime with slots.
[[nodiscard]] Buffer zipf_buffer(uint64_t slots, uint32_t buffer_pages, uint64_t rank, uint64_t seed);
// The ring of one vCPU: `count` distinct buffer slots of its stripe (fewer when the stripe is
// smaller), placed by its own seed.
[[nodiscard]] std::vector<Buffer> ring_buffers(const Stripe& s, uint32_t buffer_pages, uint32_t count, uint64_t seed,
                                               uint32_t vcpu);

// A Zipf(s) sampler over {1..n}: P(k) proportional to k^-s, O(1) per sample without tables
// (rejection-inversion, W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates
// from monotone discrete distributions", 1996).
class ZipfSampler {
public:
    // Preconditions: n >= 1, s > 0 and finite.
    ZipfSampler(uint64_t n, double s);
    [[nodiscard]] uint64_t sample(Rng& rng) const;
    [[nodiscard]] uint64_t n() const { return n_; }
    [[nodiscard]] double s() const { return s_; }

private:
    [[nodiscard]] double h(double x) const;
    [[nodiscard]] double h_integral(double x) const;
    [[nodiscard]] double h_integral_inverse(double x) const;

    uint64_t n_;
    double s_;
    double h_integral_x1_;
    double h_integral_n_;
    double threshold_;
};

// ---- the per-vCPU generator -------------------------------------------------------------------

class WorkloadGen {
public:
    // Errors: params.validate()'s.
    [[nodiscard]] static Result<WorkloadGen> create(const WorkloadParams& params, uint32_t vcpu);

    // The next buffer of this vCPU. Deterministic for (params, vcpu) and the number of calls.
    [[nodiscard]] Buffer next();
    // The kind the last next() drew from (mix picks one per call; balloon draws random).
    [[nodiscard]] WorkloadKind last_kind() const { return last_kind_; }
    [[nodiscard]] const WorkloadParams& params() const { return p_; }

private:
    WorkloadGen(const WorkloadParams& p, uint32_t vcpu);
    [[nodiscard]] Buffer next_of(WorkloadKind k);

    WorkloadParams p_;
    Rng rng_;
    Stripe stripe_;
    uint64_t stream_n_ = 0;
    std::vector<Buffer> ring_;
    uint64_t ring_n_ = 0;
    ZipfSampler zipf_;
    uint64_t zipf_slots_;
    WorkloadKind last_kind_ = WorkloadKind::Random;
};

}  // namespace coiommu::loadgen
