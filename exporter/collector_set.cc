#include "exporter/collector_set.h"

#include <chrono>
#include <exception>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "exporter/collector.h"
#include "exporter/metric_builder.h"

namespace coiommu::exporter {
namespace {

constexpr std::string_view kLog = "exporter";

bool valid_collector_name(std::string_view name) {
    if (name.empty()) return false;
    for (char c : name) {
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    }
    return true;
}

}  // namespace

std::vector<prometheus::MetricFamily> Collector::Collect() const {
    std::vector<prometheus::MetricFamily> out;
    try {
        if (auto st = collect_into(out); !st) CLOG_WARN_RL(kLog, "collect: {}", st.error().message());
    } catch (const std::exception& e) {
        CLOG_ERROR_RL(kLog, "collect threw: {}", e.what());
    } catch (...) {
        CLOG_ERROR_RL(kLog, "collect threw a non-standard exception");
    }
    return out;
}

Status CollectorSet::add(std::string name, std::shared_ptr<const prometheus::Collectable> collectable) {
    if (!collectable) return make_error(EINVAL, "collector set: null collectable");
    if (!valid_collector_name(name))
        return make_error(EINVAL, fmt::format("collector set: bad name '{}' (want [a-z0-9_]+)", name));
    std::lock_guard lock(mu_);
    for (const Entry& e : entries_) {
        if (e.name == name) return make_error(EEXIST, fmt::format("collector set: '{}' already added", name));
    }
    Entry e;
    e.typed = dynamic_cast<const Collector*>(collectable.get());
    e.name = std::move(name);
    e.collectable = std::move(collectable);
    entries_.push_back(std::move(e));
    return ok();
}

Status CollectorSet::remove(std::string_view name) {
    std::lock_guard lock(mu_);
    const auto n = std::erase_if(entries_, [&](const Entry& e) { return e.name == name; });
    if (n == 0) return make_error(ENOENT, fmt::format("collector set: no collector '{}'", name));
    return ok();
}

std::size_t CollectorSet::size() const {
    std::lock_guard lock(mu_);
    return entries_.size();
}

std::vector<prometheus::MetricFamily> CollectorSet::Collect() const {
    // Called by prometheus-cpp's handler: nothing may escape. A std::bad_alloc in our own
    // bookkeeping returns whatever was built so far.
    std::vector<prometheus::MetricFamily> out;
    try {
        std::lock_guard lock(mu_);
        std::unordered_set<std::string> seen;
        for (Entry& e : entries_) {
            const auto t0 = std::chrono::steady_clock::now();
            std::vector<prometheus::MetricFamily> part;
            bool ok_now = true;
            try {
                if (e.typed != nullptr) {
                    if (auto st = e.typed->collect_into(part); !st) {
                        ok_now = false;
                        CLOG_WARN_RL(kLog, "collector {}: {}", e.name, st.error().message());
                    }
                } else {
                    part = e.collectable->Collect();
                }
            } catch (const std::exception& ex) {
                ok_now = false;
                part.clear();
                CLOG_ERROR_RL(kLog, "collector {} threw: {}", e.name, ex.what());
            } catch (...) {
                ok_now = false;
                part.clear();
                CLOG_ERROR_RL(kLog, "collector {} threw a non-standard exception", e.name);
            }
            for (auto& f : part) {
                if (!seen.insert(f.name).second) {
                    ok_now = false;
                    CLOG_ERROR_RL(kLog, "collector {}: family {} already emitted by another collector; dropped", e.name,
                                  f.name);
                    continue;
                }
                out.push_back(std::move(f));
            }
            e.last_duration_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            e.last_ok = ok_now;
            if (!ok_now) ++e.errors;
        }

        auto duration =
            gauge_family("coiommu_exporter_collect_duration_seconds", "Time the last scrape spent in each collector.");
        auto errors = counter_family("coiommu_exporter_collect_errors_total",
                                     "Scrapes in which a collector failed, threw or returned partial data.");
        auto success = gauge_family("coiommu_exporter_collector_success",
                                    "1 if the collector's last scrape was complete, else 0.");
        for (const Entry& e : entries_) {
            add_gauge(duration, e.last_duration_seconds, {{"collector", e.name}});
            add_counter(errors, static_cast<double>(e.errors), {{"collector", e.name}});
            add_gauge(success, e.last_ok ? 1.0 : 0.0, {{"collector", e.name}});
        }
        for (auto* f : {&duration, &errors, &success}) {
            if (seen.insert(f->name).second) out.push_back(std::move(*f));
        }
    } catch (const std::exception& ex) {
        CLOG_ERROR_RL(kLog, "collector set: {}", ex.what());
    }
    return out;
}

}  // namespace coiommu::exporter
