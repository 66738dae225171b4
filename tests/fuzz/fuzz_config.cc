// fuzz_config: the configuration grammars a user (or a config management tool) feeds the
// programs: coiommud's config file and flags (engine/daemon/config.h), the engine option string
// (engine/workers/config.h), coiommu-load's command line (engine/loadgen/options.h) and the
// duration / size grammar under all of them (engine/base/quantity.h).
//
// Input: u8 mode, then the mode's text:
//   0  a config file's text: apply_config_text + finalize;
//   1  u16 length, a config file's text, then coiommud's argv words separated by NUL: parse_args
//      with `--config` naming a memfd that holds the text (the fuzzer's own words never name a
//      file: any word containing "config" is dropped, so no input reads the host's files);
//   2  an engine option string: parse_engine_options;
//   3  coiommu-load's argv words separated by NUL: parse_cli;
//   4  a duration and a size: parse_duration (each bare unit) and parse_size.
// Aborts (FUZZ_CHECK) when a round trip fails: a parsed EngineConfig printed by to_string must
// parse back to the same string, a parsed duration or size must parse back from format_duration
// / format_size to the same value; and when a parse that succeeded produced a configuration its
// own validation refuses.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/quantity.h"
#include "engine/base/unique_fd.h"
#include "engine/daemon/config.h"
#include "engine/loadgen/options.h"
#include "engine/workers/config.h"
#include "tests/fuzz/fuzz_support.h"

namespace coiommu::fuzz {
namespace {

enum Mode : uint8_t { kConfigText = 0, kDaemonArgs, kEngineOptions, kLoadArgs, kQuantity, kModeCount };

std::vector<std::string_view> split_words(std::string_view text) {
    std::vector<std::string_view> out;
    while (!text.empty() && out.size() < 64) {
        const std::size_t nul = text.find('\0');
        out.push_back(text.substr(0, nul));
        if (nul == std::string_view::npos) break;
        text.remove_prefix(nul + 1);
    }
    return out;
}

void engine_round_trip(const workers::EngineConfig& cfg) {
    FUZZ_CHECK(cfg.validate().has_value());
    const std::string printed = workers::to_string(cfg);
    auto again = workers::parse_engine_options(printed);
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(workers::to_string(*again) == printed);
}

void config_text(std::string_view text) {
    daemon::DaemonConfig cfg;
    if (!daemon::apply_config_text(cfg, text, "fuzz.conf")) return;
    if (!daemon::finalize(cfg)) return;
    engine_round_trip(cfg.engine);
    (void)cfg.server_options();
}

// The config text in a memfd, named by /proc/self/fd (closed when the parse is done).
void daemon_args(Reader& in) {
    const std::string_view text = in.text(in.u16());
    const std::string_view rest = in.text(in.remaining());
    UniqueFd fd(::memfd_create("fuzz.conf", MFD_CLOEXEC));
    if (!fd) return;
    if (!text.empty() && ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) return;
    const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
    std::vector<std::string_view> args{"--config", path};
    for (std::string_view w : split_words(rest)) {
        if (w.find("config") == std::string_view::npos) args.push_back(w);
    }
    auto parsed = daemon::parse_args(args);
    if (!parsed || parsed->action != daemon::CliAction::Run) return;
    engine_round_trip(parsed->config.engine);
    (void)parsed->config.server_options();
}

void engine_options(std::string_view text) {
    auto cfg = workers::parse_engine_options(text);
    if (cfg) engine_round_trip(*cfg);
}

void load_args(std::string_view text) {
    auto parsed = loadgen::parse_cli(split_words(text));
    if (parsed && parsed->action == loadgen::CliAction::Run) engine_round_trip(parsed->options.engine);
}

void quantity(std::string_view text) {
    for (BareUnit bare : {BareUnit::Nanoseconds, BareUnit::Microseconds, BareUnit::Milliseconds, BareUnit::Seconds}) {
        auto d = parse_duration("fuzz", text, bare);
        if (!d) continue;
        FUZZ_CHECK(d->count() >= 0);
        const std::string printed = format_duration(*d);
        auto back = parse_duration("fuzz", printed, BareUnit::Seconds);
        FUZZ_CHECK(back.has_value() && *back == *d);
    }
    if (auto s = parse_size("fuzz", text)) {
        const std::string printed = format_size(*s);
        auto back = parse_size("fuzz", printed);
        FUZZ_CHECK(back.has_value() && *back == *s);
    }
    (void)parse_u64("fuzz", text);
}

int run_one(std::span<const uint8_t> data) {
    Reader in(data);
    switch (in.u8() % kModeCount) {
        case kConfigText: config_text(in.text(in.remaining())); break;
        case kDaemonArgs: daemon_args(in); break;
        case kEngineOptions: engine_options(in.text(in.remaining())); break;
        case kLoadArgs: load_args(in.text(in.remaining())); break;
        case kQuantity: quantity(in.text(in.remaining())); break;
        default: break;
    }
    return 0;
}

// ---- seeds ---------------------------------------------------------------------------------

std::vector<uint8_t> with_mode(Mode m, std::string_view text) {
    SeedWriter w;
    w.u8(m).text(text);
    return w.data();
}

std::string words(std::initializer_list<std::string_view> ws) {
    std::string out;
    for (std::string_view w : ws) {
        if (!out.empty()) out.push_back('\0');
        out.append(w);
    }
    return out;
}

void make_seeds(const SeedSink& sink) {
    sink("conf_full", with_mode(kConfigText,
                                "# every key\n"
                                "socket = /run/coiommu/coiommud.sock\n"
                                "allowed_uids = root,107\n"
                                "max_sessions = 8\n"
                                "max_sessions_per_uid = 2\n"
                                "max_pending = 16\n"
                                "max_fds_per_session = auto\n"
                                "max_fds_per_uid = 4096\n"
                                "hello_timeout = 500ms\n"
                                "setup_timeout = 10s\n"
                                "io_timeout = 1.5s\n"
                                "engine = workers=0, unpin_policy=lru, unpin_interval=1s, unpin_limit=64\n"
                                "backends = fake,null\n"
                                "max_guest_memory = 64G\n"
                                "metrics_address = none\n"
                                "tracing = off\n"
                                "log_level = warn  # trailing comment\n"
                                "log_priority_prefix = on\n"
                                "duration = 2m\n"
                                "demo_vcpus = 2\n"
                                "demo_ram = 256M\n"));
    sink("conf_errors", with_mode(kConfigText, "max_sesions = 3\nmax_sessions 4\nengine = workers=99\n"));
    {
        SeedWriter w;
        const std::string_view conf = "max_sessions = 4\nbackends = vfio\n";
        w.u8(kDaemonArgs).u16(static_cast<uint16_t>(conf.size())).text(conf);
        w.text(words({"--max-sessions", "9", "--io-timeout=250ms", "--engine", "variant=seed", "--log_level", "debug",
                      "--allowed-uids", "0,1000", "--backends", "fake,null,iommufd"}));
        sink("args_daemon", w.data());
    }
    {
        SeedWriter w;
        w.u8(kDaemonArgs).u16(0);
        w.text(words({"--demo", "--vcpus", "2", "--ram", "128M", "--duration", "5"}));
        sink("args_demo", w.data());
    }
    sink("engine_all", with_mode(kEngineOptions,
                                 "variant=fast,workers=2,coalesce=off,spin_budget=20us,max_batch_pages=1024,"
                                 "extent_store=tbb,unpin_policy=lru,unpin_interval=250ms,unpin_limit=512,"
                                 "unpin_gen_threshold=0,session=3"));
    sink("engine_auto", with_mode(kEngineOptions, " workers = auto , spin_budget=auto"));
    sink("load_args", with_mode(kLoadArgs, words({"--workload", "stream,zipf", "--vcpus", "4", "--duration", "1.5s",
                                                  "--engine-opts", "workers=0", "--backend", "fake", "--latency",
                                                  "typical", "--entry-limit", "4096", "--seed", "7"})));
    sink("load_compare",
         with_mode(kLoadArgs, words({"--compare", "--rate", "1000", "--ram", "1G", "--json", "out.json"})));
    sink("quantity_duration", with_mode(kQuantity, "1.500000001s"));
    sink("quantity_size", with_mode(kQuantity, "1.5GiB"));
}

}  // namespace
}  // namespace coiommu::fuzz

COIOMMU_FUZZ_ENTRY_POINTS()
