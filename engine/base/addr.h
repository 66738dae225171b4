// Strong address types. A bare uint64_t never names an address in a signature: the Rust
// original mixes gfn, gpa and iova in plain u64s, which is where shift and overflow bugs hide.
//
//   Gfn  guest frame number (4 KiB units)      Gpa  guest-physical address
//   Iova IO virtual address (device view)      Hva  host virtual address (this process)
//
// Construction is explicit (Gfn{5}); raw() reads the number back. Conversions are named and
// checked where the guest controls the input: to_gpa(Gfn) refuses gfns whose address would not
// fit in 64 bits instead of silently wrapping onto a valid low address.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>

namespace coiommu {

enum class Gfn : uint64_t {};
enum class Gpa : uint64_t {};
enum class Iova : uint64_t {};
enum class Hva : uint64_t {};

inline constexpr uint64_t kPageShift = 12;
inline constexpr uint64_t kPageSize = uint64_t{1} << kPageShift;
inline constexpr uint64_t kPageMask = kPageSize - 1;
// The largest gfn whose page lies entirely below 2^64.
inline constexpr uint64_t kMaxGfn = (~uint64_t{0}) >> kPageShift;

template <class A>
concept StrongAddr =
    std::is_same_v<A, Gfn> || std::is_same_v<A, Gpa> || std::is_same_v<A, Iova> || std::is_same_v<A, Hva>;

template <StrongAddr A>
[[nodiscard]] constexpr uint64_t raw(A a) {
    return static_cast<uint64_t>(a);
}

// Gfn -> Gpa. nullopt when gfn > kMaxGfn (the shift would drop high bits).
[[nodiscard]] constexpr std::optional<Gpa> to_gpa(Gfn gfn) {
    if (raw(gfn) > kMaxGfn) return std::nullopt;
    return Gpa{raw(gfn) << kPageShift};
}
// Gpa -> Gfn of the page that contains it (always defined).
[[nodiscard]] constexpr Gfn to_gfn(Gpa gpa) { return Gfn{raw(gpa) >> kPageShift}; }

// CoIOMMU maps IOVA == GPA (identity); the conversion is named so the identity is visible.
[[nodiscard]] constexpr Iova identity_iova(Gpa gpa) { return Iova{raw(gpa)}; }

// a + delta, or nullopt on 64-bit overflow.
template <StrongAddr A>
[[nodiscard]] constexpr std::optional<A> checked_add(A a, uint64_t delta) {
    uint64_t out = 0;
    if (__builtin_add_overflow(raw(a), delta, &out)) return std::nullopt;
    return A{out};
}

// a + delta where the caller has already proved there is no overflow.
template <StrongAddr A>
[[nodiscard]] constexpr A offset(A a, uint64_t delta) {
    return A{raw(a) + delta};
}

[[nodiscard]] constexpr bool page_aligned(uint64_t v) { return (v & kPageMask) == 0; }
template <StrongAddr A>
[[nodiscard]] constexpr bool page_aligned(A a) {
    return page_aligned(raw(a));
}

}  // namespace coiommu
