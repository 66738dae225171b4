#include "engine/loadgen/workload.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

namespace coiommu::loadgen {
namespace {

__extension__ using U128 = unsigned __int128;

// Reduces a raw 64-bit random value into [0, n) (multiply-shift).
[[nodiscard]] uint64_t reduce(uint64_t r, uint64_t n) {
    return static_cast<uint64_t>((static_cast<U128>(r) * n) >> 64);
}

[[nodiscard]] uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) {
    return static_cast<uint64_t>((static_cast<U128>(a) * b) % m);
}

// A multiplier in [1, n) coprime with n (1 when n <= 2), derived from `r`.
[[nodiscard]] uint64_t coprime_multiplier(uint64_t n, uint64_t r) {
    if (n <= 2) return 1;
    uint64_t m = 1 + r % (n - 1);
    while (std::gcd(m, n) != 1) m = m + 1 < n ? m + 1 : 1;
    return m;
}

// log1p(x)/x and expm1(x)/x, with their Taylor series near 0 (Hörmann & Derflinger's helpers).
[[nodiscard]] double helper1(double x) {
    if (std::fabs(x) > 1e-8) return std::log1p(x) / x;
    return 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}
[[nodiscard]] double helper2(double x) {
    if (std::fabs(x) > 1e-8) return std::expm1(x) / x;
    return 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x));
}

constexpr WorkloadKind kMixed[] = {WorkloadKind::Stream, WorkloadKind::Ring, WorkloadKind::Zipf, WorkloadKind::Random};

// Stream ids of the generator's random streams, so that they never coincide with a vCPU's.
constexpr uint64_t kZipfPermutationStream = 0x5a1f'0000'0000'0001ull;
constexpr uint64_t kRingStream = 0x5a1f'0000'0000'1000ull;

}  // namespace

std::string_view to_string(WorkloadKind k) {
    switch (k) {
        case WorkloadKind::Stream: return "stream";
        case WorkloadKind::Ring: return "ring";
        case WorkloadKind::Zipf: return "zipf";
        case WorkloadKind::Random: return "random";
        case WorkloadKind::Balloon: return "balloon";
        case WorkloadKind::Mix: return "mix";
    }
    return "?";
}

std::optional<WorkloadKind> parse_workload(std::string_view text) {
    for (WorkloadKind k : kAllWorkloads) {
        if (to_string(k) == text) return k;
    }
    return std::nullopt;
}

Status WorkloadParams::validate() const {
    if (vcpus == 0) return make_error(EINVAL, "workload: vcpus must be at least 1");
    if (buffer_pages == 0) return make_error(EINVAL, "workload: buffer pages must be at least 1");
    if (ring_buffers == 0) return make_error(EINVAL, "workload: ring buffers must be at least 1");
    if (!(zipf_s > 0.0) || !std::isfinite(zipf_s)) {
        return make_error(EINVAL, fmt::format("workload: zipf exponent {} must be a positive number", zipf_s));
    }
    if (data_pages / vcpus < buffer_pages) {
        return make_error(EINVAL, fmt::format("workload: {} data pages over {} vCPUs leave less than one buffer of {} "
                                              "pages per vCPU (raise --ram or lower --buffer-pages)",
                                              data_pages, vcpus, buffer_pages));
    }
    return ok();
}

Stripe stripe_of(uint64_t data_pages, uint32_t vcpus, uint32_t vcpu, uint32_t buffer_pages) {
    const uint64_t per = data_pages / vcpus;
    return Stripe{per * vcpu, per / buffer_pages * buffer_pages};
}

Buffer stream_buffer(const Stripe& s, uint32_t buffer_pages, uint64_t n) {
    const uint64_t slots = s.pages / buffer_pages;
    return Buffer{Gfn{s.first + (n % slots) * buffer_pages}, buffer_pages};
}

Buffer random_buffer(uint64_t data_pages, uint32_t buffer_pages, uint64_t r) {
    return Buffer{Gfn{reduce(r, data_pages - buffer_pages + 1)}, buffer_pages};
}

Buffer zipf_buffer(uint64_t slots, uint32_t buffer_pages, uint64_t rank, uint64_t seed) {
    const uint64_t mult = coprime_multiplier(slots, mix_seed(seed, kZipfPermutationStream));
    const uint64_t off = mix_seed(seed, kZipfPermutationStream + 1) % slots;
    const uint64_t slot = (mulmod(rank - 1, mult, slots) + off) % slots;
    return Buffer{Gfn{slot * buffer_pages}, buffer_pages};
}

std::vector<Buffer> ring_buffers(const Stripe& s, uint32_t buffer_pages, uint32_t count, uint64_t seed, uint32_t vcpu) {
    const uint64_t slots = s.pages / buffer_pages;
    const uint64_t n = std::min<uint64_t>(count, slots);
    Rng rng(seed, kRingStream + vcpu);
    const uint64_t start = rng.below(slots);
    const uint64_t step = coprime_multiplier(slots, rng.next());
    std::vector<Buffer> out;
    out.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
        const uint64_t slot = (start + mulmod(i, step, slots)) % slots;
        out.push_back(Buffer{Gfn{s.first + slot * buffer_pages}, buffer_pages});
    }
    return out;
}

// ---- ZipfSampler -------------------------------------------------------------------------------

ZipfSampler::ZipfSampler(uint64_t n, double s) : n_(n), s_(s) {
    h_integral_x1_ = h_integral(1.5) - 1.0;
    h_integral_n_ = h_integral(static_cast<double>(n_) + 0.5);
    threshold_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
}

double ZipfSampler::h(double x) const { return std::exp(-s_ * std::log(x)); }

double ZipfSampler::h_integral(double x) const {
    const double log_x = std::log(x);
    return helper2((1.0 - s_) * log_x) * log_x;
}

double ZipfSampler::h_integral_inverse(double x) const {
    double t = x * (1.0 - s_);
    if (t < -1.0) t = -1.0;  // rounding near the upper end of the domain
    return std::exp(helper1(t) * x);
}

uint64_t ZipfSampler::sample(Rng& rng) const {
    // u is uniform in (h_integral_x1_, h_integral_n_]; its inverse image, rounded, is the
    // candidate; the acceptance test removes the excess of the continuous hat over the pmf.
    // The expected number of rounds is close to 1 for every s and n.
    for (;;) {
        const double u = h_integral_n_ + rng.unit() * (h_integral_x1_ - h_integral_n_);
        const double x = h_integral_inverse(u);
        double kd = std::floor(x + 0.5);
        if (kd < 1.0) kd = 1.0;
        if (kd > static_cast<double>(n_)) kd = static_cast<double>(n_);
        if (kd - x <= threshold_ || u >= h_integral(kd + 0.5) - h(kd)) return static_cast<uint64_t>(kd);
    }
}

// ---- WorkloadGen -------------------------------------------------------------------------------

Result<WorkloadGen> WorkloadGen::create(const WorkloadParams& params, uint32_t vcpu) {
    COIOMMU_TRY(params.validate());
    if (vcpu >= params.vcpus) return make_error(EINVAL, fmt::format("workload: vcpu {} of {}", vcpu, params.vcpus));
    return WorkloadGen(params, vcpu);
}

WorkloadGen::WorkloadGen(const WorkloadParams& p, uint32_t vcpu)
    : p_(p),
      rng_(p.seed, vcpu),
      stripe_(stripe_of(p.data_pages, p.vcpus, vcpu, p.buffer_pages)),
      ring_(ring_buffers(stripe_, p.buffer_pages, p.ring_buffers, p.seed, vcpu)),
      zipf_(std::max<uint64_t>(1, p.data_pages / p.buffer_pages), p.zipf_s),
      zipf_slots_(std::max<uint64_t>(1, p.data_pages / p.buffer_pages)) {}

Buffer WorkloadGen::next() { return next_of(p_.kind); }

Buffer WorkloadGen::next_of(WorkloadKind k) {
    switch (k) {
        case WorkloadKind::Stream: last_kind_ = k; return stream_buffer(stripe_, p_.buffer_pages, stream_n_++);
        case WorkloadKind::Ring: last_kind_ = k; return ring_[ring_n_++ % ring_.size()];
        case WorkloadKind::Zipf:
            last_kind_ = k;
            return zipf_buffer(zipf_slots_, p_.buffer_pages, zipf_.sample(rng_), p_.seed);
        case WorkloadKind::Random:
        case WorkloadKind::Balloon:
            last_kind_ = WorkloadKind::Random;
            return random_buffer(p_.data_pages, p_.buffer_pages, rng_.next());
        case WorkloadKind::Mix: return next_of(kMixed[rng_.below(std::size(kMixed))]);
    }
    return random_buffer(p_.data_pages, p_.buffer_pages, rng_.next());
}

}  // namespace coiommu::loadgen
