// The one grammar for durations and sizes across coiommud, its config file, the engine options,
// coiommu-load and coiommu-trace, so `500ms`, `1.5s` and `1.5G` mean the same everywhere.
//
//   duration  <decimal>[ns|us|ms|s|m|h]     "500ms", "1.5s", "250us", "2m"; a bare number is in
//                                           the caller's unit (each flag documents its own)
//   size      <decimal>[K|M|G|T][B|iB]      binary units: "4096", "64K", "1.5G", "512MiB"
//   decimal   digits[.digits]               at most 9 fraction digits; no sign, no exponent
//
// A value must be exact: "1.5ns" and "0.1K" are errors, not rounded. Errors are EINVAL with a
// context naming `what` (the flag or key) and the text, e.g. "--duration: '5x' is not a duration
// (e.g. 500ms, 1.5s, 2m)".
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/base/result.h"

namespace coiommu {

// The unit of a duration written without a suffix.
enum class BareUnit : uint8_t { Nanoseconds, Microseconds, Milliseconds, Seconds };

[[nodiscard]] Result<uint64_t> parse_u64(std::string_view what, std::string_view text);
// parse_u64 and lo <= n <= hi (ERANGE-style message, still EINVAL: it is the user's input).
[[nodiscard]] Result<uint64_t> parse_u64_in(std::string_view what, std::string_view text, uint64_t lo, uint64_t hi);
// Non-negative and at most INT64_MAX nanoseconds (292 years).
[[nodiscard]] Result<std::chrono::nanoseconds> parse_duration(std::string_view what, std::string_view text,
                                                              BareUnit bare);
[[nodiscard]] Result<uint64_t> parse_size(std::string_view what, std::string_view text);

// The shortest exact spelling in the grammar: 60s -> "1m", 1500ms -> "1500ms", 0 -> "0s".
[[nodiscard]] std::string format_duration(std::chrono::nanoseconds d);
// "512M", "1G", "4096"; exact, in the largest binary unit that divides the size.
[[nodiscard]] std::string format_size(uint64_t bytes);

// The candidate at most two edits (insert, delete, substitute, swap) from `word`, or "" when
// none is that close: the "did you mean" of a typo. Ties go to the earlier candidate.
template <class Range>
[[nodiscard]] std::string_view closest_word(std::string_view word, const Range& candidates);

[[nodiscard]] size_t edit_distance(std::string_view a, std::string_view b);

template <class Range>
std::string_view closest_word(std::string_view word, const Range& candidates) {
    std::string_view best;
    size_t best_d = 3;
    for (const auto& c : candidates) {
        const std::string_view cand(c);
        // The distance is at least the length difference: a word far longer than every candidate
        // (hostile input: a config line, an argv word) costs nothing instead of len x len.
        const size_t gap = word.size() > cand.size() ? word.size() - cand.size() : cand.size() - word.size();
        if (gap >= best_d) continue;
        const size_t d = edit_distance(word, cand);
        if (d < best_d) {
            best_d = d;
            best = cand;
        }
    }
    return best;
}

}  // namespace coiommu
