// Command lines through CLI11, the same way in every program: one option table per program
// (CLI::App), the quantity grammar of engine/base/quantity.h for durations and sizes, --help and
// --version printed to stdout, and errors returned, not printed, so each main decides its exit.
//
// Thread-safety: the functions mutate only the App (and, when it parses, the bound variables).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "engine/base/quantity.h"
#include "engine/base/result.h"

namespace coiommu::cli {

enum class Parsed : uint8_t {
    Run,     // the options are set; go on
    Exited,  // --help or --version was printed; exit 0
};

// Parses argv (argv[0] is the program). Errors: EINVAL carrying CLI11's message; an unknown
// option names the closest known one ("unknown option '--duraton' (did you mean '--duration'?)").
[[nodiscard]] Result<Parsed> parse(CLI::App& app, int argc, const char* const* argv);

// What the command line asked for, for a program that prints its help or version itself.
enum class Request : uint8_t {
    Run,      // the options are set; go on
    Help,     // -h/--help was given; print app.help() and exit 0
    Version,  // -V/--version was given; print the version and exit 0
};

// As parse(), but printing nothing: --help and --version are returned for the caller to print
// (coiommud adds its protocol version to the version line, and prints from main()). Errors as
// parse().
[[nodiscard]] Result<Request> parse_quietly(CLI::App& app, int argc, const char* const* argv);

// -V/--version printing version_line(program).
void add_version(CLI::App& app, std::string_view program);

// The long option names of `app` ("--duration", ...), for suggestions.
[[nodiscard]] std::vector<std::string> long_names(const CLI::App& app);

// A DURATION option: the value is parsed with parse_duration(bare) and must be an exact multiple
// of D's period (e.g. milliseconds). The help shows the current value of `out` as the default.
template <class D>
CLI::Option* add_duration(CLI::App& app, const std::string& name, D& out, BareUnit bare, const std::string& help) {
    auto* opt = app.add_option_function<std::string>(
        name,
        [&out, bare, name](const std::string& text) {
            auto d = parse_duration(name, text, bare);
            if (!d) throw CLI::ValidationError(d.error().context);
            const auto cast = std::chrono::duration_cast<D>(*d);
            if (cast != *d) throw CLI::ValidationError(name + ": '" + text + "' is finer than the option's unit");
            out = cast;
        },
        help);
    opt->type_name("DURATION")->default_str(format_duration(out));
    return opt;
}

// A SIZE option (bytes), parsed with parse_size.
CLI::Option* add_size(CLI::App& app, const std::string& name, uint64_t& out, const std::string& help);

}  // namespace coiommu::cli
