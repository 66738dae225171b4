// More kinds of CLI11 option than cli.h's durations and sizes, for the option tables of
// coiommu-load and coiommu-trace (and any program on engine/base/cli.h): integers in a range,
// positive decimals, one-of choices, comma-separated lists, switches, text, and a --help that
// wins over a bad option. Each kind parses
// with the grammar of engine/base/quantity.h and reports "<flag>: <what is wrong>", e.g.
// "--vcpus: 0 is outside 1..256", "--backend: 'type2' is not one of fake|null|vfio|iommufd".
//
// Every value option refuses an empty value and a value that is itself an option: CLI11 2.1
// takes the next word as the value whatever it is, so "--json --help" would otherwise write a
// file named --help ("--json: needs a value, got the option '--help'"). A word like "-1" is not
// taken for an option: the option's own parse says what is wrong with it.
//
// The adders bind `out` (and the `all` of a choice or list) by reference: they must outlive the
// App's parse. The help shows the current value of `out` as the default. Thread-safety: as cli.h.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/base/cli.h"
#include "engine/base/quantity.h"

namespace coiommu::cli {

// "--pid" of "-p,--pid": the name an error message uses (the first long name, else the first).
[[nodiscard]] inline std::string display_name(std::string_view names) {
    std::string first;
    while (!names.empty()) {
        const auto comma = names.find(',');
        const std::string_view n = names.substr(0, comma);
        if (n.starts_with("--")) return std::string(n);
        if (first.empty()) first = std::string(n);
        if (comma == std::string_view::npos) break;
        names.remove_prefix(comma + 1);
    }
    return first;
}

// -h/--help that answers where it appears, even when another option is wrong: CLI11 2.1 runs every
// option's callback (and so its checks) before it looks at its own help flag. Call before adding
// the other options; parse() then prints the help (parse_quietly() returns Request::Help).
inline CLI::Option* add_help(CLI::App& app) {
    app.set_help_flag();
    return app
        .add_flag_callback(
            "-h,--help", [] { throw CLI::CallForHelp(); }, "print this help, then exit")
        ->trigger_on_parse();
}

// Rejects "" and a word that is an option ("-x", "--x"), see the top of this file.
inline const CLI::Validator kValueWord(
    [](std::string& v) -> std::string {
        if (v.empty()) return "needs a value";
        const bool option = v.size() > 1 && v[0] == '-' && !(v[1] >= '0' && v[1] <= '9');
        return option ? fmt::format("needs a value, got the option '{}'", v) : std::string();
    },
    "", "a value, not an option");

// A flag without a value: "--quiet"; "--quiet=yes" is refused ("--quiet: takes no value").
inline const CLI::Validator kNoValue([](std::string& v) { return v == "true" ? std::string() : "takes no value"; }, "",
                                     "no value");

inline CLI::Option* add_switch(CLI::App& app, const std::string& names, bool& out, const std::string& help) {
    return app.add_flag(names, out, help)->check(kNoValue);
}

// A switch that sets nothing: ask app.count(name) after the parse.
inline CLI::Option* add_switch(CLI::App& app, const std::string& names, const std::string& help) {
    return app.add_flag(names, help)->check(kNoValue);
}

// A text value (a path, an address, an option string): not empty and not an option.
inline CLI::Option* add_text(CLI::App& app, const std::string& names, std::string& out, const std::string& type,
                             const std::string& help) {
    return app.add_option(names, out, help)->type_name(type)->check(kValueWord);
}

// ", 1..256" or ", at least 1" for the help of an integer in lo..hi ("" for any uint64_t).
[[nodiscard]] inline std::string integer_range(uint64_t lo, uint64_t hi) {
    if (hi != UINT64_MAX) return fmt::format(", {}..{}", lo, hi);
    return lo == 0 ? std::string() : fmt::format(", at least {}", lo);
}

// An unsigned integer in lo..hi (parse_u64_in); the help gets the range (integer_range).
template <class T>
CLI::Option* add_integer(CLI::App& app, const std::string& names, T& out, uint64_t lo, uint64_t hi,
                         const std::string& help) {
    const std::string what = display_name(names);
    auto* opt = app.add_option_function<std::string>(
        names,
        [&out, what, lo, hi](const std::string& text) {
            auto n = parse_u64_in(what, text, lo, hi);
            if (!n) throw CLI::ValidationError(n.error().context);
            out = static_cast<T>(*n);
        },
        help + integer_range(lo, hi));
    opt->type_name("N")->default_str(std::to_string(out))->check(kValueWord);
    return opt;
}

// 1.1 -> "1.1", 1e9 -> "1000000000": a bound or default as a user would type it.
[[nodiscard]] inline std::string format_decimal(double v) {
    if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{:.0f}", v);
    return fmt::format("{}", v);
}

// A decimal number ("2", "0.5", "1e3") with lo < value <= hi; NaN and infinities are refused.
inline CLI::Option* add_decimal(CLI::App& app, const std::string& names, double& out, double lo, double hi,
                                const std::string& help) {
    const std::string what = display_name(names);
    auto* opt = app.add_option_function<std::string>(
        names,
        [&out, what, lo, hi](const std::string& text) {
            double v = 0;
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
            if (ec != std::errc{} || end != text.data() + text.size() || !(v > lo && v <= hi)) {
                throw CLI::ValidationError(fmt::format("{}: '{}' is not a number in ({}, {}]", what, text,
                                                       format_decimal(lo), format_decimal(hi)));
            }
            out = v;
        },
        fmt::format("{}, in ({}, {}]", help, format_decimal(lo), format_decimal(hi)));
    opt->type_name("X")->default_str(format_decimal(out))->check(kValueWord);
    return opt;
}

// A duration (cli::add_duration: parse_duration(bare), exact in D) with lo <= value <= hi.
template <class D>
CLI::Option* add_duration_in(CLI::App& app, const std::string& names, D& out, BareUnit bare, D lo, D hi,
                             const std::string& help) {
    const std::string range = fmt::format("{}..{}", format_duration(lo), format_duration(hi));
    const CLI::Validator in_range(
        [bare, lo, hi](std::string& text) -> std::string {
            auto d = parse_duration("", text, bare);
            if (!d || (*d >= lo && *d <= hi)) return "";  // a malformed value: the option's parse says why
            return fmt::format("'{}' is not between {} and {}", text, format_duration(lo), format_duration(hi));
        },
        "", "in range");
    return add_duration(app, names, out, bare, fmt::format("{}, {}", help, range))->check(kValueWord)->check(in_range);
}

// The text names of T's values, "fast|seed", from `name_of` (e.g. to_string).
template <class T, class NameOf>
[[nodiscard]] std::string choice_names(std::span<const T> all, NameOf name_of) {
    std::string out;
    for (const T& v : all) out += fmt::format("{}{}", out.empty() ? "" : "|", name_of(v));
    return out;
}

// One of `all`, by the name `name_of` gives it: "--backend: 'type2' is not one of fake|null|vfio|iommufd".
template <class T, class NameOf>
CLI::Option* add_choice(CLI::App& app, const std::string& names, T& out, std::span<const T> all, NameOf name_of,
                        const std::string& help) {
    const std::string what = display_name(names);
    auto* opt = app.add_option_function<std::string>(
        names,
        [&out, what, all, name_of](const std::string& text) {
            for (const T& v : all) {
                if (name_of(v) == text) {
                    out = v;
                    return;
                }
            }
            throw CLI::ValidationError(
                fmt::format("{}: '{}' is not one of {}", what, text, choice_names(all, name_of)));
        },
        help);
    opt->type_name(choice_names(all, name_of))->default_str(std::string(name_of(out)))->check(kValueWord);
    return opt;
}

// A comma-separated list of values of `all`, each at most once, in the order given:
// "--engine: 'turbo' is not one of fast|seed", "--engine: 'fast' is listed twice". The help shows
// the values as "fast|seed[,..]".
template <class T, class NameOf>
CLI::Option* add_list(CLI::App& app, const std::string& names, std::vector<T>& out, std::span<const T> all,
                      NameOf name_of, const std::string& help) {
    const std::string what = display_name(names);
    auto parse = [&out, what, all, name_of](const std::string& text) {
        std::vector<T> list;
        std::string_view rest = text;
        while (true) {
            const auto comma = rest.find(',');
            const std::string_view item = rest.substr(0, comma);
            const T* found = nullptr;
            for (const T& v : all) {
                if (name_of(v) == item) found = &v;
            }
            if (found == nullptr) {
                throw CLI::ValidationError(
                    fmt::format("{}: '{}' is not one of {}", what, item, choice_names(all, name_of)));
            }
            if (std::find(list.begin(), list.end(), *found) != list.end()) {
                throw CLI::ValidationError(fmt::format("{}: '{}' is listed twice", what, item));
            }
            list.push_back(*found);
            if (comma == std::string_view::npos) break;
            rest.remove_prefix(comma + 1);
        }
        out = std::move(list);
    };
    std::string shown;
    for (const T& v : out) shown += fmt::format("{}{}", shown.empty() ? "" : ",", name_of(v));
    auto* opt = app.add_option_function<std::string>(names, parse, help);
    opt->type_name(choice_names(all, name_of) + "[,..]")->default_str(shown)->check(kValueWord);
    return opt;
}

// Of `options`, the one given last on the command line (nullptr when none was given): for
// options where the last one wins (-u/-m, --pin/--pin-temp). Call after the parse.
[[nodiscard]] inline const CLI::Option* last_given(const CLI::App& app,
                                                   std::initializer_list<const CLI::Option*> options) {
    const CLI::Option* last = nullptr;
    for (const CLI::Option* o : app.parse_order()) {
        if (std::find(options.begin(), options.end(), o) != options.end()) last = o;
    }
    return last;
}

}  // namespace coiommu::cli
