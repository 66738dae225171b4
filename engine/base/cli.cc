#include "engine/base/cli.h"

#include <cerrno>
#include <cstdio>

#include <fmt/format.h>

#include "engine/base/version.h"

namespace coiommu::cli {

std::vector<std::string> long_names(const CLI::App& app) {
    std::vector<std::string> out;
    for (const CLI::Option* opt : app.get_options()) {
        for (const std::string& l : opt->get_lnames()) out.push_back("--" + l);
    }
    return out;
}

namespace {

// CLI11 reports unknown options as "The following arguments were not expected: ..."; a user
// who mistyped one flag is better served by the flag they meant.
std::string unknown_option_message(const CLI::App& app, const std::vector<std::string>& extras) {
    const std::vector<std::string> names = long_names(app);
    for (const std::string& e : extras) {
        if (!e.starts_with("-")) continue;
        const std::string flag = e.substr(0, e.find('='));
        if (const auto near = closest_word(flag, names); !near.empty()) {
            return fmt::format("unknown option '{}' (did you mean '{}'?)", flag, near);
        }
        return fmt::format("unknown option '{}' (--help lists them)", flag);
    }
    return fmt::format("unexpected argument '{}' (--help shows the usage)", extras.empty() ? "" : extras.front());
}

}  // namespace

Result<Parsed> parse(CLI::App& app, int argc, const char* const* argv) {
    try {
        app.parse(argc, argv);
        return Parsed::Run;
    } catch (const CLI::CallForHelp&) {
        std::fputs(app.help().c_str(), stdout);
        return Parsed::Exited;
    } catch (const CLI::CallForAllHelp&) {
        std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
        return Parsed::Exited;
    } catch (const CLI::CallForVersion& v) {
        std::fputs(v.what(), stdout);
        std::fputc('\n', stdout);
        return Parsed::Exited;
    } catch (const CLI::ExtrasError&) {
        return make_error(EINVAL, unknown_option_message(app, app.remaining()));
    } catch (const CLI::ParseError& e) {
        return make_error(EINVAL, e.what());
    }
}

Result<Request> parse_quietly(CLI::App& app, int argc, const char* const* argv) {
    try {
        app.parse(argc, argv);
        return Request::Run;
    } catch (const CLI::CallForHelp&) {
        return Request::Help;
    } catch (const CLI::CallForAllHelp&) {
        return Request::Help;
    } catch (const CLI::CallForVersion&) {
        return Request::Version;
    } catch (const CLI::ExtrasError&) {
        return make_error(EINVAL, unknown_option_message(app, app.remaining()));
    } catch (const CLI::ParseError& e) {
        return make_error(EINVAL, e.what());
    }
}

void add_version(CLI::App& app, std::string_view program) {
    app.set_version_flag("-V,--version", version_line(program), "print the version and git revision, then exit");
}

CLI::Option* add_size(CLI::App& app, const std::string& name, uint64_t& out, const std::string& help) {
    auto* opt = app.add_option_function<std::string>(
        name,
        [&out, name](const std::string& text) {
            auto n = parse_size(name, text);
            if (!n) throw CLI::ValidationError(n.error().context);
            out = *n;
        },
        help);
    opt->type_name("SIZE")->default_str(format_size(out));
    return opt;
}

}  // namespace coiommu::cli
