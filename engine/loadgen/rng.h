// Small, fast, reproducible random numbers for the load generator's vCPU threads.
//
// Every vCPU thread owns one Rng seeded from (--seed, stream id), so a run with the same seed
// makes the same choices on every machine (no std::*_distribution, whose output is
// implementation-defined). xoshiro256** (Blackman & Vigna) seeded through splitmix64.
//
// Thread-safety: a plain value; one owner.
#pragma once

#include <cstdint>

namespace coiommu::loadgen {

// splitmix64: one step of the generator Vigna recommends for seeding xoshiro.
[[nodiscard]] constexpr uint64_t splitmix64(uint64_t& state) noexcept {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A well-mixed 64-bit hash of (seed, stream): distinct streams of one seed are independent.
[[nodiscard]] constexpr uint64_t mix_seed(uint64_t seed, uint64_t stream) noexcept {
    uint64_t s = seed ^ (stream * 0xD1B54A32D192ED03ull);
    (void)splitmix64(s);
    return splitmix64(s);
}

class Rng {
public:
    constexpr Rng(uint64_t seed, uint64_t stream) noexcept {
        uint64_t s = mix_seed(seed, stream);
        for (uint64_t& w : s_) w = splitmix64(s);
    }

    [[nodiscard]] constexpr uint64_t next() noexcept {
        const uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    // Uniform in [0, n) (Lemire's multiply-shift; the bias is below n / 2^64). 0 when n == 0.
    [[nodiscard]] constexpr uint64_t below(uint64_t n) noexcept {
        __extension__ using U128 = unsigned __int128;
        return static_cast<uint64_t>((static_cast<U128>(next()) * n) >> 64);
    }

    // Uniform in [0, 1) with 53 random bits.
    [[nodiscard]] constexpr double unit() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

private:
    [[nodiscard]] static constexpr uint64_t rotl(uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
    uint64_t s_[4]{};
};

}  // namespace coiommu::loadgen
