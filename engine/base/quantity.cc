#include "engine/base/quantity.h"

#include <algorithm>
#include <charconv>
#include <vector>

#include <fmt/format.h>

namespace coiommu {
namespace {

constexpr unsigned kMaxFractionDigits = 9;

// digits[.digits] as an exact rational: whole + frac / 10^frac_digits.
struct Decimal {
    uint64_t whole = 0;
    uint64_t frac = 0;
    uint64_t frac_scale = 1;  // 10^frac_digits
};

bool parse_decimal(std::string_view text, Decimal& out) {
    const auto dot = text.find('.');
    const std::string_view whole = text.substr(0, dot);
    if (whole.empty()) return false;
    const auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), out.whole);
    if (ec != std::errc{} || end != whole.data() + whole.size()) return false;
    if (dot == std::string_view::npos) return true;
    const std::string_view frac = text.substr(dot + 1);
    if (frac.empty() || frac.size() > kMaxFractionDigits) return false;
    for (const char c : frac) {
        if (c < '0' || c > '9') return false;
        out.frac = out.frac * 10 + static_cast<uint64_t>(c - '0');
        out.frac_scale *= 10;
    }
    return true;
}

// 10^9 fraction digits times a 1h unit needs more than 64 bits; GCC's 128-bit integer is exact.
__extension__ using u128 = unsigned __int128;

enum class Scaled : uint8_t { Ok, Inexact, Overflow };

// d * unit, exactly; `limit` bounds the result.
Scaled scale(const Decimal& d, uint64_t unit, uint64_t limit, uint64_t& out) {
    const u128 whole = static_cast<u128>(d.whole) * unit;
    const u128 frac_units = static_cast<u128>(d.frac) * unit;
    if (frac_units % d.frac_scale != 0) return Scaled::Inexact;
    const u128 total = whole + frac_units / d.frac_scale;
    if (total > limit) return Scaled::Overflow;
    out = static_cast<uint64_t>(total);
    return Scaled::Ok;
}

struct Suffix {
    std::string_view text;
    uint64_t unit;
};

uint64_t bare_ns(BareUnit u) {
    switch (u) {
        case BareUnit::Nanoseconds: return 1;
        case BareUnit::Microseconds: return 1'000;
        case BareUnit::Milliseconds: return 1'000'000;
        case BareUnit::Seconds: return 1'000'000'000;
    }
    return 1;
}

// Splits "1.5ms" into number and suffix: the suffix is the trailing run of letters.
std::pair<std::string_view, std::string_view> split_suffix(std::string_view text) {
    size_t i = text.size();
    while (i > 0 && ((text[i - 1] >= 'a' && text[i - 1] <= 'z') || (text[i - 1] >= 'A' && text[i - 1] <= 'Z'))) --i;
    return {text.substr(0, i), text.substr(i)};
}

}  // namespace

Result<uint64_t> parse_u64(std::string_view what, std::string_view text) {
    uint64_t out = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not an unsigned integer", what, text));
    }
    return out;
}

Result<uint64_t> parse_u64_in(std::string_view what, std::string_view text, uint64_t lo, uint64_t hi) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64(what, text));
    if (n < lo || n > hi) return make_error(EINVAL, fmt::format("{}: {} is outside {}..{}", what, n, lo, hi));
    return n;
}

Result<std::chrono::nanoseconds> parse_duration(std::string_view what, std::string_view text, BareUnit bare) {
    static constexpr Suffix kUnits[] = {{"ns", 1},
                                        {"us", 1'000},
                                        {"ms", 1'000'000},
                                        {"s", 1'000'000'000},
                                        {"m", 60'000'000'000},
                                        {"h", 3'600'000'000'000}};
    const auto bad = [&] {
        return make_error(EINVAL, fmt::format("{}: '{}' is not a duration (e.g. 500ms, 1.5s, 2m)", what, text));
    };
    const auto split = split_suffix(text);
    const std::string_view number = split.first;
    const std::string_view suffix = split.second;
    uint64_t unit = bare_ns(bare);
    if (!suffix.empty()) {
        const auto* it =
            std::find_if(std::begin(kUnits), std::end(kUnits), [suffix](const Suffix& s) { return s.text == suffix; });
        if (it == std::end(kUnits)) return bad();
        unit = it->unit;
    }
    Decimal d;
    if (!parse_decimal(number, d)) return bad();
    uint64_t ns = 0;
    switch (scale(d, unit, INT64_MAX, ns)) {
        case Scaled::Ok: return std::chrono::nanoseconds(static_cast<int64_t>(ns));
        case Scaled::Inexact: return make_error(EINVAL, fmt::format("{}: '{}' is finer than 1ns", what, text));
        case Scaled::Overflow: return make_error(EINVAL, fmt::format("{}: '{}' is too long", what, text));
    }
    return bad();
}

Result<uint64_t> parse_size(std::string_view what, std::string_view text) {
    const auto bad = [&] {
        return make_error(EINVAL, fmt::format("{}: '{}' is not a size (e.g. 4096, 64K, 1.5G)", what, text));
    };
    auto [number, suffix] = split_suffix(text);
    if (suffix.ends_with("iB")) {
        suffix.remove_suffix(2);
        if (suffix.empty()) return bad();
    } else if (suffix.size() == 2 && suffix.back() == 'B') {
        suffix.remove_suffix(1);
    }
    unsigned shift = 0;
    if (!suffix.empty()) {
        if (suffix.size() != 1) return bad();
        switch (suffix[0]) {
            case 'K':
            case 'k': shift = 10; break;
            case 'M':
            case 'm': shift = 20; break;
            case 'G':
            case 'g': shift = 30; break;
            case 'T':
            case 't': shift = 40; break;
            default: return bad();
        }
    }
    Decimal d;
    if (!parse_decimal(number, d)) return bad();
    uint64_t bytes = 0;
    switch (scale(d, uint64_t{1} << shift, UINT64_MAX, bytes)) {
        case Scaled::Ok: return bytes;
        case Scaled::Inexact:
            return make_error(EINVAL, fmt::format("{}: '{}' is not a whole number of bytes", what, text));
        case Scaled::Overflow: return make_error(EINVAL, fmt::format("{}: '{}' overflows 64 bits", what, text));
    }
    return bad();
}

std::string format_duration(std::chrono::nanoseconds d) {
    static constexpr Suffix kUnits[] = {{"h", 3'600'000'000'000}, {"m", 60'000'000'000}, {"s", 1'000'000'000},
                                        {"ms", 1'000'000},        {"us", 1'000},         {"ns", 1}};
    const auto ns = static_cast<uint64_t>(std::max<int64_t>(d.count(), 0));
    if (ns == 0) return "0s";
    for (const Suffix& s : kUnits) {
        if (ns % s.unit == 0) return fmt::format("{}{}", ns / s.unit, s.text);
    }
    return fmt::format("{}ns", ns);
}

std::string format_size(uint64_t bytes) {
    static constexpr Suffix kUnits[] = {{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}};
    if (bytes == 0) return "0";
    for (const Suffix& s : kUnits) {
        const uint64_t unit = uint64_t{1} << s.unit;
        if (bytes % unit == 0) return fmt::format("{}{}", bytes / unit, s.text);
    }
    return fmt::format("{}", bytes);
}

size_t edit_distance(std::string_view a, std::string_view b) {
    // Optimal string alignment distance: Levenshtein plus adjacent transposition.
    const size_t n = a.size();
    const size_t m = b.size();
    std::vector<size_t> prev2(m + 1), prev(m + 1), cur(m + 1);
    for (size_t j = 0; j <= m; ++j) prev[j] = j;
    for (size_t i = 1; i <= n; ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= m; ++j) {
            const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                cur[j] = std::min(cur[j], prev2[j - 2] + 1);
        }
        std::swap(prev2, prev);
        std::swap(prev, cur);
    }
    return prev[m];
}

}  // namespace coiommu
