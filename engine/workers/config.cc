#include "engine/workers/config.h"

#include <cerrno>
#include <charconv>
#include <set>
#include <thread>

#include <fmt/format.h>

namespace coiommu::workers {
namespace {

using std::chrono::nanoseconds;

Result<uint64_t> parse_u64(std::string_view key, std::string_view v) {
    uint64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc{} || end != v.data() + v.size() || v.empty()) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not an unsigned integer", key, v));
    }
    return out;
}

// "<n>[ns|us|ms|s|m]"; a bare number is in `bare_unit`.
Result<nanoseconds> parse_duration(std::string_view key, std::string_view v, nanoseconds bare_unit) {
    struct Suffix {
        std::string_view text;
        nanoseconds unit;
    };
    static constexpr Suffix kSuffixes[] = {{"ns", nanoseconds{1}},
                                           {"us", nanoseconds{1'000}},
                                           {"ms", nanoseconds{1'000'000}},
                                           {"s", nanoseconds{1'000'000'000}},
                                           {"m", nanoseconds{60'000'000'000}}};
    nanoseconds unit = bare_unit;
    std::string_view number = v;
    for (const Suffix& s : kSuffixes) {
        if (v.size() > s.text.size() && v.ends_with(s.text)) {
            const std::string_view head = v.substr(0, v.size() - s.text.size());
            if (head.find_first_not_of("0123456789") != std::string_view::npos) continue;
            number = head;
            unit = s.unit;
            break;
        }
    }
    auto n = parse_u64(key, number);
    if (!n) return coiommu::unexpected(n.error());
    uint64_t ns = 0;
    if (__builtin_mul_overflow(*n, static_cast<uint64_t>(unit.count()), &ns) || ns > INT64_MAX) {
        return make_error(EINVAL, fmt::format("{}: '{}' is too long", key, v));
    }
    return nanoseconds{static_cast<int64_t>(ns)};
}

std::string duration_text(nanoseconds d) {
    const auto ns = d.count();
    if (ns != 0 && ns % 1'000'000'000 == 0) return fmt::format("{}s", ns / 1'000'000'000);
    if (ns != 0 && ns % 1'000'000 == 0) return fmt::format("{}ms", ns / 1'000'000);
    if (ns != 0 && ns % 1'000 == 0) return fmt::format("{}us", ns / 1'000);
    return fmt::format("{}ns", ns);
}

Status apply(EngineConfig& cfg, std::string_view key, std::string_view v) {
    auto bad = [&](std::string_view allowed) {
        return make_error(EINVAL, fmt::format("{}: '{}' is not one of {}", key, v, allowed));
    };
    if (key == "variant") {
        if (v == "fast")
            cfg.variant = Variant::Fast;
        else if (v == "seed")
            cfg.variant = Variant::Seed;
        else
            return bad("fast|seed");
    } else if (key == "workers") {
        if (v == "auto") {
            cfg.workers = kWorkersAuto;
            return ok();
        }
        auto n = parse_u64(key, v);
        if (!n) return coiommu::unexpected(n.error());
        if (*n > kMaxWorkers) return make_error(EINVAL, fmt::format("workers: {} exceeds {}", *n, kMaxWorkers));
        cfg.workers = static_cast<uint32_t>(*n);
    } else if (key == "coalesce") {
        if (v == "on")
            cfg.coalesce = Coalesce::On;
        else if (v == "off")
            cfg.coalesce = Coalesce::Off;
        else
            return bad("on|off");
    } else if (key == "spin_budget") {
        if (v == "auto") {
            cfg.spin_budget = kSpinBudgetAuto;
            return ok();
        }
        auto d = parse_duration(key, v, std::chrono::microseconds(1));
        if (!d) return coiommu::unexpected(d.error());
        cfg.spin_budget = *d;
    } else if (key == "max_batch_pages") {
        auto n = parse_u64(key, v);
        if (!n) return coiommu::unexpected(n.error());
        cfg.max_batch_pages = *n;
    } else if (key == "extent_store") {
        if (v == "flat")
            cfg.extent_store = ExtentStoreKind::Flat;
        else if (v == "tbb")
            cfg.extent_store = ExtentStoreKind::Tbb;
        else
            return bad("flat|tbb");
    } else if (key == "unpin_policy") {
        if (v == "off")
            cfg.unpin_policy = UnpinPolicy::Off;
        else if (v == "lru")
            cfg.unpin_policy = UnpinPolicy::Lru;
        else
            return bad("off|lru");
    } else if (key == "unpin_interval") {
        auto d = parse_duration(key, v, std::chrono::seconds(1));
        if (!d) return coiommu::unexpected(d.error());
        cfg.unpin_interval = *d;
    } else if (key == "unpin_limit") {
        auto n = parse_u64(key, v);
        if (!n) return coiommu::unexpected(n.error());
        cfg.unpin_limit = *n;
    } else if (key == "unpin_gen_threshold") {
        auto n = parse_u64(key, v);
        if (!n) return coiommu::unexpected(n.error());
        cfg.unpin_gen_threshold = *n;
    } else if (key == "session") {
        auto n = parse_u64(key, v);
        if (!n) return coiommu::unexpected(n.error());
        if (*n > UINT32_MAX) return make_error(EINVAL, fmt::format("session: {} exceeds 2^32-1", *n));
        cfg.session = static_cast<uint32_t>(*n);
    } else {
        return make_error(EINVAL, fmt::format("unknown engine option '{}'", key));
    }
    return ok();
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
    if ((spin_budget.count() < 0 && spin_budget != kSpinBudgetAuto) || spin_budget > std::chrono::seconds(1)) {
        return make_error(EINVAL, "spin_budget: must be between 0 and 1s");
    }
    if (unpin_interval.count() < 0) return make_error(EINVAL, "unpin_interval: must not be negative");
    return ok();
}

Result<EngineConfig> parse_engine_options(std::string_view text, EngineConfig base) {
    std::set<std::string_view> seen;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const std::string_view item = text.substr(0, comma);
        text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
        if (item.empty()) continue;
        const auto eq = item.find('=');
        if (eq == std::string_view::npos) {
            return make_error(EINVAL, fmt::format("engine option '{}' has no value (key=value)", item));
        }
        const std::string_view key = item.substr(0, eq);
        if (!seen.insert(key).second) return make_error(EINVAL, fmt::format("engine option '{}' given twice", key));
        COIOMMU_TRY(apply(base, key, item.substr(eq + 1)));
    }
    COIOMMU_TRY(base.validate());
    return base;
}

std::chrono::nanoseconds effective_spin_budget(const EngineConfig& cfg, unsigned cpus) {
    if (cfg.spin_budget != kSpinBudgetAuto) return cfg.spin_budget;
    if (cpus == 0) cpus = std::thread::hardware_concurrency();
    return cpus >= kAutoSpinMinCpus ? kAutoSpinBudget : nanoseconds{0};
}

uint32_t effective_workers(const EngineConfig& cfg, unsigned cpus) {
    if (cfg.workers != kWorkersAuto) return cfg.workers;
    if (cpus == 0) cpus = std::thread::hardware_concurrency();
    return cpus >= kAutoSpinMinCpus ? 1 : 0;
}

std::string_view to_string(Variant v) { return v == Variant::Fast ? "fast" : "seed"; }
std::string_view to_string(UnpinPolicy p) { return p == UnpinPolicy::Off ? "off" : "lru"; }
std::string_view to_string(ExtentStoreKind k) { return k == ExtentStoreKind::Flat ? "flat" : "tbb"; }

std::string to_string(const EngineConfig& cfg) {
    std::string out = fmt::format(
        "variant={},workers={},coalesce={},spin_budget={},max_batch_pages={},extent_store={},unpin_policy={},"
        "unpin_interval={},unpin_gen_threshold={},session={}",
        to_string(cfg.variant), cfg.workers == kWorkersAuto ? std::string("auto") : std::to_string(cfg.workers),
        cfg.coalesce == Coalesce::On ? "on" : "off",
        cfg.spin_budget == kSpinBudgetAuto ? std::string("auto") : duration_text(cfg.spin_budget), cfg.max_batch_pages,
        to_string(cfg.extent_store), to_string(cfg.unpin_policy), duration_text(cfg.unpin_interval),
        cfg.unpin_gen_threshold, cfg.session);
    if (cfg.unpin_limit) out += fmt::format(",unpin_limit={}", *cfg.unpin_limit);
    return out;
}

}  // namespace coiommu::workers
