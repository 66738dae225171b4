#include "engine/workers/config.h"

#include <cerrno>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "engine/base/quantity.h"

namespace coiommu::workers {
namespace {

using std::chrono::nanoseconds;

template <class E>
struct Word {
    std::string_view text;
    E value;
};
constexpr Word<Variant> kVariants[] = {{"fast", Variant::Fast}, {"seed", Variant::Seed}};
constexpr Word<Coalesce> kCoalesce[] = {{"on", Coalesce::On}, {"off", Coalesce::Off}};
constexpr Word<ExtentStoreKind> kExtentStores[] = {{"flat", ExtentStoreKind::Flat}, {"tbb", ExtentStoreKind::Tbb}};
constexpr Word<UnpinPolicy> kUnpinPolicies[] = {{"off", UnpinPolicy::Off}, {"lru", UnpinPolicy::Lru}};

constexpr uint64_t kUnbounded = UINT64_MAX;

// One engine option. `lo`..`hi` bound a number (N) or a duration (in nanoseconds); the help shows
// the range unless hi is kUnbounded. `show` prints the value in the option's grammar, so that it
// parses back; "" means "not set" (left out of to_string()).
struct Option {
    std::string_view name;
    std::string_view values;  // the grammar, as the help shows it
    uint64_t lo;
    uint64_t hi;
    BareUnit bare;  // the unit of a bare duration
    std::string_view help;
    Status (*set)(EngineConfig&, const Option&, std::string_view value);
    std::string (*show)(const EngineConfig&);
};

template <class E, size_t N>
Status set_word(const Option& o, std::string_view v, const Word<E> (&words)[N], E& out) {
    for (const Word<E>& w : words) {
        if (w.text == v) {
            out = w.value;
            return ok();
        }
    }
    return make_error(EINVAL, fmt::format("{}: '{}' is not one of {}", o.name, v, o.values));
}

template <class E, size_t N>
std::string_view word_of(const Word<E> (&words)[N], E v) {
    for (const Word<E>& w : words) {
        if (w.value == v) return w.text;
    }
    return "?";
}

template <class T>
Status set_count(const Option& o, std::string_view v, T& out) {
    COIOMMU_ASSIGN_OR_RETURN(const uint64_t n, parse_u64_in(o.name, v, o.lo, o.hi));
    out = static_cast<T>(n);
    return ok();
}

Status set_duration(const Option& o, std::string_view v, nanoseconds& out) {
    COIOMMU_ASSIGN_OR_RETURN(const nanoseconds d, parse_duration(o.name, v, o.bare));
    const auto ns = static_cast<uint64_t>(d.count());
    if (ns < o.lo || ns > o.hi) {
        return make_error(EINVAL, fmt::format("{}: '{}' is outside {}..{}", o.name, v,
                                              format_duration(nanoseconds(o.lo)), format_duration(nanoseconds(o.hi))));
    }
    out = d;
    return ok();
}

// "auto" or the value of `set`.
template <class T, class Set>
Status set_auto(std::string_view v, T& out, T auto_value, Set set) {
    if (v == "auto") {
        out = auto_value;
        return ok();
    }
    return set(out);
}

// The table: parse_engine_options(), to_string() and engine_options_help() all read it.
constexpr Option kOptions[] = {
    {"variant", "fast|seed", 0, 0, BareUnit::Seconds,
     "fast: the throughput engine; seed: the seed pinner (crosvm's serial algorithm: one thread, blocking wait, "
     "4 KiB maps, one lock)",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_word(o, v, kVariants, c.variant); },
     [](const EngineConfig& c) { return std::string(to_string(c.variant)); }},
    {"workers", "auto|N", 0, kMaxWorkers, BareUnit::Seconds,
     "pin worker threads of the fast engine; 0: the intake thread pins inline; auto: 1 on hosts with at least 4 "
     "CPUs, else 0",
     [](EngineConfig& c, const Option& o, std::string_view v) {
         return set_auto(v, c.workers, kWorkersAuto, [&](uint32_t& out) { return set_count(o, v, out); });
     },
     [](const EngineConfig& c) { return c.workers == kWorkersAuto ? std::string("auto") : std::to_string(c.workers); }},
    {"coalesce", "on|off", 0, 0, BareUnit::Seconds,
     "map the contiguous guest frames of a request with one DMA call (fast engine)",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_word(o, v, kCoalesce, c.coalesce); },
     [](const EngineConfig& c) { return std::string(word_of(kCoalesce, c.coalesce)); }},
    {"spin_budget", "auto|DURATION", 0, static_cast<uint64_t>(kMaxSpinBudget.count()), BareUnit::Microseconds,
     "how long the intake (and worker) threads spin before blocking; 0: never; a bare number is microseconds; "
     "auto: 50us on hosts with at least 4 CPUs, else 10us",
     [](EngineConfig& c, const Option& o, std::string_view v) {
         return set_auto(v, c.spin_budget, kSpinBudgetAuto, [&](nanoseconds& out) { return set_duration(o, v, out); });
     },
     [](const EngineConfig& c) {
         return c.spin_budget == kSpinBudgetAuto ? std::string("auto") : format_duration(c.spin_budget);
     }},
    {"max_batch_pages", "N", 1, kMaxBatchPages, BareUnit::Seconds,
     "upper bound of a batch pin request's page count (the guest chooses it)",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_count(o, v, c.max_batch_pages); },
     [](const EngineConfig& c) { return std::to_string(c.max_batch_pages); }},
    {"extent_store", "flat|tbb", 0, 0, BareUnit::Seconds,
     "where the fast engine keeps its extent records: a flat per-frame array, or a concurrent hash map keyed by "
     "the first frame",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_word(o, v, kExtentStores, c.extent_store); },
     [](const EngineConfig& c) { return std::string(to_string(c.extent_store)); }},
    {"unpin_policy", "off|lru", 0, 0, BareUnit::Seconds,
     "periodic LRU unpinning of the pages the guest no longer uses (both variants)",
     [](EngineConfig& c, const Option& o, std::string_view v) {
         return set_word(o, v, kUnpinPolicies, c.unpin_policy);
     },
     [](const EngineConfig& c) { return std::string(to_string(c.unpin_policy)); }},
    {"unpin_interval", "DURATION", 0, kUnbounded, BareUnit::Seconds,
     "period of the LRU tick; a bare number is seconds; 0: no timer (ticks only on request)",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_duration(o, v, c.unpin_interval); },
     [](const EngineConfig& c) { return format_duration(c.unpin_interval); }},
    // 0 parses, so that validate() rejects it in crosvm's words.
    {"unpin_limit", "N", 0, kUnbounded, BareUnit::Seconds,
     "at most this many pages unpinned per tick; not given: unlimited; 0 is rejected",
     [](EngineConfig& c, const Option& o, std::string_view v) -> Status {
         uint64_t n = 0;
         COIOMMU_TRY(set_count(o, v, n));
         c.unpin_limit = n;
         return ok();
     },
     [](const EngineConfig& c) { return c.unpin_limit ? std::to_string(*c.unpin_limit) : std::string(); }},
    {"unpin_gen_threshold", "N", 0, kUnbounded, BareUnit::Seconds,
     "ticks between scans of the old generation, and the busy count that promotes a page to it; 0: a single "
     "generation",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_count(o, v, c.unpin_gen_threshold); },
     [](const EngineConfig& c) { return std::to_string(c.unpin_gen_threshold); }},
    {"session", "N", 0, UINT32_MAX, BareUnit::Seconds,
     "the session id in the engine's USDT probes (coiommud sets it for each session)",
     [](EngineConfig& c, const Option& o, std::string_view v) { return set_count(o, v, c.session); },
     [](const EngineConfig& c) { return std::to_string(c.session); }},
};

static_assert(kAutoSpinMinCpus == 4 && kAutoSpinBudget == std::chrono::microseconds(50) &&
                  kAutoShortSpinBudget == std::chrono::microseconds(10),
              "the help of workers and spin_budget above states these values");

const Option* find_option(std::string_view name) {
    for (const Option& o : kOptions) {
        if (o.name == name) return &o;
    }
    return nullptr;
}

std::string_view trim(std::string_view s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

Status apply_item(EngineConfig& cfg, std::string_view item, std::set<std::string_view>& seen) {
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) {
        return make_error(EINVAL, fmt::format("engine option '{}' has no value (name=value)", item));
    }
    const std::string_view name = trim(item.substr(0, eq));
    const Option* o = find_option(name);
    if (o == nullptr) {
        const std::string_view near = closest_word(name, engine_option_names());
        return make_error(EINVAL, near.empty()
                                      ? fmt::format("unknown engine option '{}'", name)
                                      : fmt::format("unknown engine option '{}' (did you mean '{}'?)", name, near));
    }
    if (!seen.insert(o->name).second) {
        return make_error(EINVAL, fmt::format("engine option '{}' given twice", name));
    }
    return o->set(cfg, *o, trim(item.substr(eq + 1)));
}

// "; N in 0..64", "; at most 1s", or "" for an unbounded option.
std::string range_text(const Option& o) {
    if (o.hi == 0 || o.hi == kUnbounded) return "";
    if (!o.values.ends_with("DURATION")) return fmt::format("; N in {}..{}", o.lo, o.hi);
    if (o.lo == 0) return fmt::format("; at most {}", format_duration(nanoseconds(o.hi)));
    return fmt::format("; {}..{}", format_duration(nanoseconds(o.lo)), format_duration(nanoseconds(o.hi)));
}

// Appends `text` word by word, breaking lines before `width` and indenting them to `column`.
void append_wrapped(std::string& out, std::string_view text, size_t column, size_t width) {
    size_t line_len = out.size() - (out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
    while (!text.empty()) {
        const auto space = text.find(' ');
        const std::string_view word = text.substr(0, space);
        text = space == std::string_view::npos ? std::string_view{} : text.substr(space + 1);
        if (line_len > column && line_len + 1 + word.size() > width) {
            out += '\n';
            out.append(column, ' ');
            line_len = column;
        } else if (line_len > column) {
            out += ' ';
            ++line_len;
        }
        out += word;
        line_len += word.size();
    }
}

}  // namespace

Status EngineConfig::validate() const {
    if (unpin_limit && *unpin_limit == 0) {
        return make_error(EINVAL, "unpin_limit: Please use a non-zero unpin_limit value");
    }
    if (workers > kMaxWorkers && workers != kWorkersAuto) {
        return make_error(EINVAL, fmt::format("workers: {} exceeds {}", workers, kMaxWorkers));
    }
    if (max_batch_pages == 0 || max_batch_pages > kMaxBatchPages) {
        return make_error(EINVAL, fmt::format("max_batch_pages: {} outside 1..{}", max_batch_pages, kMaxBatchPages));
    }
    if ((spin_budget.count() < 0 && spin_budget != kSpinBudgetAuto) || spin_budget > kMaxSpinBudget) {
        return make_error(EINVAL, "spin_budget: must be between 0 and 1s");
    }
    if (unpin_interval.count() < 0) return make_error(EINVAL, "unpin_interval: must not be negative");
    return ok();
}

Result<EngineConfig> parse_engine_options(std::string_view text, EngineConfig base) {
    std::set<std::string_view> seen;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const std::string_view item = trim(text.substr(0, comma));
        text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
        if (!item.empty()) COIOMMU_TRY(apply_item(base, item, seen));
    }
    COIOMMU_TRY(base.validate());
    return base;
}

std::vector<std::string_view> engine_option_names() {
    std::vector<std::string_view> out;
    for (const Option& o : kOptions) out.push_back(o.name);
    return out;
}

std::string engine_options_help(const EngineConfig& defaults) {
    constexpr size_t kColumn = 30;
    constexpr size_t kWidth = 100;
    std::string out;
    for (const Option& o : kOptions) {
        std::string entry = fmt::format("  {}={}", o.name, o.values);
        entry.append(entry.size() + 2 > kColumn ? 2 : kColumn - entry.size(), ' ');
        const std::string shown = o.show(defaults);
        const std::string text =
            fmt::format("{}{}{}", o.help, range_text(o), shown.empty() ? "" : fmt::format(" [{}]", shown));
        append_wrapped(entry, text, kColumn, kWidth);
        out += entry;
        out += '\n';
    }
    return out;
}

std::chrono::nanoseconds effective_spin_budget(const EngineConfig& cfg, unsigned cpus) {
    if (cfg.spin_budget != kSpinBudgetAuto) return cfg.spin_budget;
    if (cpus == 0) cpus = std::thread::hardware_concurrency();
    return cpus >= kAutoSpinMinCpus ? kAutoSpinBudget : kAutoShortSpinBudget;
}

uint32_t effective_workers(const EngineConfig& cfg, unsigned cpus) {
    if (cfg.workers != kWorkersAuto) return cfg.workers;
    if (cpus == 0) cpus = std::thread::hardware_concurrency();
    return cpus >= kAutoSpinMinCpus ? 1 : 0;
}

std::string_view to_string(Variant v) { return word_of(kVariants, v); }
std::string_view to_string(UnpinPolicy p) { return word_of(kUnpinPolicies, p); }
std::string_view to_string(ExtentStoreKind k) { return word_of(kExtentStores, k); }

std::string to_string(const EngineConfig& cfg) {
    std::string out;
    for (const Option& o : kOptions) {
        const std::string v = o.show(cfg);
        if (v.empty()) continue;
        if (!out.empty()) out += ',';
        out += fmt::format("{}={}", o.name, v);
    }
    return out;
}

}  // namespace coiommu::workers
