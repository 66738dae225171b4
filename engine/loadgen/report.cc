#include "engine/loadgen/report.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/base/addr.h"
#include "engine/base/version.h"

extern char** environ;

namespace coiommu::loadgen {
namespace {

using Json = nlohmann::ordered_json;

// A finite double, or null (JSON has no NaN or infinity).
Json num(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }
Json num(const std::optional<double>& v) { return v ? num(*v) : Json(nullptr); }

Json latency_json(const LatencySummary& l) {
    return Json{{"count", l.count}, {"min", l.min},   {"p50", l.p50}, {"p90", l.p90},
                {"p99", l.p99},     {"p999", l.p999}, {"max", l.max}, {"mean", num(l.mean)}};
}

std::string join_names(const auto& items) {
    std::string s;
    for (const auto& i : items) {
        if (!s.empty()) s += ',';
        s += to_string(i);
    }
    return s;
}

double ns_to(std::chrono::nanoseconds d, double unit_ns) { return static_cast<double>(d.count()) / unit_ns; }

Json options_json(const LoadOptions& o) {
    Json j;
    j["vcpus"] = o.vcpus;
    j["ram_bytes"] = o.ram_bytes;
    j["workloads"] = join_names(o.workloads);
    j["buffer_pages"] = o.buffer_pages;
    j["lifetime_ops"] = o.lifetime.timed() ? Json(nullptr) : Json(o.lifetime.ops);
    j["lifetime_us"] = o.lifetime.timed() ? num(ns_to(o.lifetime.time, 1e3)) : Json(nullptr);
    j["think_us"] = num(ns_to(o.think, 1e3));
    j["rate"] = num(o.rate);
    j["duration_s"] = num(ns_to(o.duration, 1e9));
    j["seed"] = o.seed;
    j["engines"] = join_names(o.engines);
    j["strategies"] = join_names(o.strategies);
    j["backend"] = to_string(o.backend);
    j["vfio_group"] = o.vfio_group;
    j["vfio_device"] = o.vfio_device;
    j["connect"] = o.connect_path;
    j["reconnect"] = o.reconnect;
    j["engine_opts"] = o.engine_opts;
    j["engine_config"] = workers::to_string(o.engine);
    j["latency_model"] = to_string(o.latency);
    j["entry_limit"] = o.entry_limit;
    j["zipf_s"] = num(o.zipf_s);
    j["ring_buffers"] = o.ring_buffers;
    j["balloon_pages"] = o.balloon_pages;
    j["balloon_interval_ms"] = num(ns_to(o.balloon_interval, 1e6));
    return j;
}

Json environment_json(const Environment& e) {
    return Json{
        {"host", e.host}, {"kernel", e.kernel},   {"cpu", Json{{"model", e.cpu_model}, {"online", e.online_cpus}}},
        {"time", e.time}, {"version", e.version}, {"git_revision", e.git_revision}};
}

Json operations_json(const RunResult& r) {
    return Json{{"maps", r.maps},
                {"map_failures", r.map_failures},
                {"unmaps", r.unmaps},
                {"unmap_failures", r.unmap_failures},
                {"pages_mapped", r.pages_mapped},
                {"pages_unmapped", r.pages_unmapped},
                {"skipped", r.skipped_ops},
                {"maps_per_s", num(r.maps_per_s)},
                {"pages_per_s", num(r.pages_per_s)}};
}

Json memory_json(const RunResult& r) {
    return Json{{"pinned_peak_pages", r.pinned_peak_pages},
                {"pinned_mean_pages", num(r.pinned_mean_pages)},
                {"pinned_end_pages", r.pinned_end_pages},
                {"pinned_peak_mib", num(pages_to_mib(static_cast<double>(r.pinned_peak_pages)))},
                {"pinned_mean_mib", num(pages_to_mib(r.pinned_mean_pages))},
                {"pages_pinned", r.pages_pinned_total},
                {"pages_unpinned", r.pages_unpinned_total},
                {"pins_per_s", num(r.pins_per_s)},
                {"guest_touched_pages", r.guest_touched_pages}};
}

Json dma_json(const RunResult& r) {
    return Json{{"map_calls", r.dma_map_calls},       {"unmap_calls", r.dma_unmap_calls},
                {"map_failures", r.dma_map_failures}, {"unmap_failures", r.dma_unmap_failures},
                {"entries_peak", r.dma_entries_peak}, {"entry_limit", r.dma_entry_limit}};
}

// {label: count} over parallel arrays of labels and counts.
Json counts_json(const auto& labels, const auto& counts) {
    Json j = Json::object();
    for (std::size_t i = 0; i < counts.size(); ++i) j[std::string(labels[i])] = counts[i];
    return j;
}

Json engine_json(const std::optional<EngineFigures>& figures) {
    if (!figures) return nullptr;
    const EngineFigures& e = *figures;
    return Json{{"config", e.config},
                {"requests_single", e.requests_single},
                {"requests_batch", e.requests_batch},
                {"requests_failed", e.requests_failed},
                {"pages_requested", e.pages_requested},
                {"pages_pinned", e.pages_pinned},
                {"pages_already_pinned", e.pages_already_pinned},
                {"pages_unpinned", e.pages_unpinned},
                {"pinned_pages", e.pinned_pages},
                {"dma_map_calls", e.dma_map_calls},
                {"dma_unmap_calls", e.dma_unmap_calls},
                {"request_p50_ns", e.request_p50_ns},
                {"request_p99_ns", e.request_p99_ns},
                {"balloon_success", e.balloon_success},
                {"balloon_failed", e.balloon_failed},
                {"lru_scans", e.lru_scans},
                {"pin_failures", counts_json(telemetry::kPinFailureReasonLabels, e.pin_failures)},
                {"unpin_attempts", counts_json(telemetry::kUnpinResultLabels, e.unpin_attempts)}};
}

Json checks_json(const std::vector<Check>& checks) {
    Json j = Json::array();
    for (const Check& c : checks) j.push_back(Json{{"name", c.name}, {"passed", c.passed}, {"detail", c.detail}});
    return j;
}

Json cpu_json(const RunResult& r) {
    Json threads = Json::array();
    for (const ThreadCpu& t : r.cpu) threads.push_back(Json{{"name", t.name}, {"cpu_s", num(t.cpu_s)}});
    return Json{{"process_s", num(r.process_cpu_s)}, {"threads", std::move(threads)}};
}

Json timeline_json(const std::vector<Sample>& timeline) {
    Json j = Json::array();
    for (const Sample& s : timeline) {
        j.push_back(Json{{"t_s", num(s.t_s)},
                         {"pinned_pages", s.pinned_pages},
                         {"dma_entries", s.dma_entries},
                         {"maps", s.maps},
                         {"pages_mapped", s.pages_mapped},
                         {"failures", s.failures},
                         {"maps_per_s", num(s.maps_per_s)},
                         {"pins_per_s", num(s.pins_per_s)},
                         {"map_p99_ns", s.map_p99_ns},
                         {"engine_pinned_pages", s.engine_pinned_pages}});
    }
    return j;
}

Json run_json(const RunResult& r) {
    const bool coiommu = r.spec.strategy == StrategyKind::Coiommu;
    Json j;
    j["label"] = r.label;
    j["workload"] = to_string(r.spec.workload);
    j["strategy"] = to_string(r.spec.strategy);
    j["engine"] = coiommu ? Json(workers::to_string(r.spec.engine)) : Json(nullptr);
    j["backend"] = r.backend;
    j["served_by"] = r.served_by;
    j["passed"] = r.passed();
    j["resumes"] = Json{{"sessions_resumed", r.resumes},
                        {"audits", r.restart_audits},
                        {"audits_inconsistent", r.restart_audits_inconsistent}};
    j["setup_s"] = num(r.setup_s);
    j["duration_s"] = num(r.duration_s);
    j["operations"] = operations_json(r);
    j["requests"] =
        Json{{"sent", r.notifications}, {"completed", r.requests_completed}, {"pages_requested", r.pages_requested}};
    j["latency_ns"] = Json{{"map", latency_json(r.map_latency)},
                           {"request", latency_json(r.request_latency)},
                           {"unmap", latency_json(r.unmap_latency)},
                           {"balloon", latency_json(r.balloon_latency)}};
    j["memory"] = memory_json(r);
    j["dma"] = dma_json(r);
    j["failures"] = counts_json(kMapFailureLabels, r.failures_by_reason);
    j["invariant"] = Json{{"checked", r.invariant_checked},
                          {"note", r.invariant_note},
                          {"checks", r.invariant_checks},
                          {"violations", r.invariant_violations}};
    j["balloon"] =
        Json{{"requests", r.balloon_requests}, {"success", r.balloon_success},       {"failed", r.balloon_failed},
             {"aborted", r.balloon_aborted},   {"violations", r.balloon_violations}, {"pages", r.balloon_pages}};
    j["engine_stats"] = engine_json(r.engine);
    j["checks"] = checks_json(r.checks);
    j["cpu"] = cpu_json(r);
    j["timeline"] = timeline_json(r.timeline);
    return j;
}

Json comparison_json(const std::vector<RunResult>& runs) {
    Json j = Json::array();
    for (const ComparisonRow& c : compare(runs)) {
        j.push_back(Json{{"label", c.label},
                         {"maps_per_s", num(c.maps_per_s)},
                         {"pages_per_s", num(c.pages_per_s)},
                         {"pinned_peak_mib", num(c.pinned_peak_mib)},
                         {"map_p99_ns", c.map_p99_ns},
                         {"pages_per_s_vs_seed", num(c.pages_per_s_vs_seed)},
                         {"pinned_peak_vs_seed", num(c.pinned_peak_vs_seed)}});
    }
    return j;
}

// The first value of the /proc/cpuinfo line `key`, or "".
std::string cpuinfo_value(std::string_view key) {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string_view name(line.data(), colon);
        while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
        if (name != key) continue;
        const auto value = line.find_first_not_of(' ', colon + 1);
        return value == std::string::npos ? std::string() : line.substr(value);
    }
    return {};
}

std::string iso8601_utc(std::chrono::system_clock::time_point t) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    if (::gmtime_r(&secs, &tm) == nullptr) return "unknown";
    char buf[32];
    const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return n == 0 ? std::string("unknown") : std::string(buf, n);
}

std::string ratio_text(const std::optional<double>& r) { return r ? fmt::format("{:.2f}x", *r) : std::string("-"); }

// gnuplot wants its strings in double quotes; labels never hold one, but be safe.
std::string gp_quote(std::string_view s) {
    std::string q = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') q += '\\';
        q += c;
    }
    return q + "\"";
}

// gnuplot's data: per run (one index each) t_s, pinned MiB and p99 map latency in us.
std::string plot_timeline_data(const std::vector<RunResult>& runs) {
    std::string data;
    for (const RunResult& r : runs) {
        data += fmt::format("# {}\n# t_s pinned_mib map_p99_us\n", r.label);
        for (const Sample& s : r.timeline) {
            data += fmt::format("{:.3f} {:.3f} {:.3f}\n", s.t_s, pages_to_mib(static_cast<double>(s.pinned_pages)),
                                static_cast<double>(s.map_p99_ns) / 1e3);
        }
        data += "\n\n";  // gnuplot's index separator
    }
    return data;
}

std::string plot_bars_data(const std::vector<RunResult>& runs) {
    std::string bars = "# index label pages_per_s pinned_peak_mib pinned_mean_mib\n";
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const RunResult& r = runs[i];
        bars += fmt::format("{} {} {:.1f} {:.3f} {:.3f}\n", i, gp_quote(r.label), r.pages_per_s,
                            pages_to_mib(static_cast<double>(r.pinned_peak_pages)), pages_to_mib(r.pinned_mean_pages));
    }
    return bars;
}

// "plot <dat> index 0 using <columns> ..., <dat> index 1 ..." with one line per run.
std::string plot_lines(const std::string& dat, std::string_view columns, const std::vector<RunResult>& runs) {
    std::string plots;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        plots += fmt::format("{}{} index {} using {} with lines lw 2 title {}", i == 0 ? "plot " : ", ", gp_quote(dat),
                             i, columns, gp_quote(runs[i].label));
    }
    return plots + "\n";
}

std::string plot_script(const std::string& png_path, const std::string& dat, const std::string& bars_dat,
                        const std::vector<RunResult>& runs) {
    std::string gp;
    gp += "set terminal pngcairo size 1400,1000 noenhanced font ',9'\n";
    gp += fmt::format("set output {}\n", gp_quote(png_path));
    gp += "set multiplot layout 2,2 title 'coiommu-load'\n";
    gp += "set key outside bottom center horizontal\nset grid\n";
    gp += "set title 'pinned memory over time'\nset xlabel 's'\nset ylabel 'MiB'\n";
    gp += plot_lines(dat, "1:2", runs);
    gp += "set title 'p99 DMA-map latency (per 100 ms)'\nset ylabel 'us'\nset logscale y\n";
    gp += plot_lines(dat, "1:($3>0?$3:1/0)", runs);
    gp += "unset logscale y\nunset xlabel\nset style fill solid 0.7\nset boxwidth 0.7\nset xtics rotate by -30\n";
    gp += "unset key\nset bmargin 7\nset rmargin 6\n";
    gp += fmt::format(
        "set title 'throughput (guest pages DMA-mapped per second, log scale)'\nset ylabel 'pages/s'\n"
        "set logscale y\nset yrange [1:*]\nplot {} using 1:3:xtic(2) with boxes\nunset logscale y\n",
        gp_quote(bars_dat));
    gp += "set yrange [0:*]\n";
    gp += fmt::format(
        "set title 'pinned memory: peak (bars) and mean (points)'\nset ylabel 'MiB'\n"
        "plot {0} using 1:4:xtic(2) with boxes, {0} using 1:5 with points pt 7 ps 1.5\n",
        gp_quote(bars_dat));
    gp += "unset multiplot\n";
    return gp;
}

Status write_file(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) return make_error(errno != 0 ? errno : EIO, fmt::format("opening {}", path));
    f << text;
    f.close();
    if (!f) return make_error(errno != 0 ? errno : EIO, fmt::format("writing {}", path));
    return ok();
}

}  // namespace

std::vector<ComparisonRow> compare(const std::vector<RunResult>& runs) {
    std::vector<ComparisonRow> rows;
    for (const RunResult& r : runs) {
        ComparisonRow row;
        row.label = r.label;
        row.maps_per_s = r.maps_per_s;
        row.pages_per_s = r.pages_per_s;
        row.pinned_peak_mib = pages_to_mib(static_cast<double>(r.pinned_peak_pages));
        row.map_p99_ns = r.map_latency.p99;
        for (const RunResult& s : runs) {
            if (s.spec.strategy != StrategyKind::Coiommu || s.spec.engine != workers::Variant::Seed ||
                s.spec.workload != r.spec.workload) {
                continue;
            }
            if (s.pages_per_s > 0) row.pages_per_s_vs_seed = r.pages_per_s / s.pages_per_s;
            if (s.pinned_peak_pages > 0) {
                row.pinned_peak_vs_seed =
                    static_cast<double>(r.pinned_peak_pages) / static_cast<double>(s.pinned_peak_pages);
            }
        }
        rows.push_back(std::move(row));
    }
    return rows;
}

Environment capture_environment(std::chrono::system_clock::time_point start) {
    Environment e;
    char host[256] = {};
    e.host = ::gethostname(host, sizeof host - 1) == 0 ? std::string(host) : std::string("unknown");
    utsname u{};
    e.kernel = ::uname(&u) == 0 ? fmt::format("{} {}", u.release, u.version) : std::string("unknown");
    e.cpu_model = cpuinfo_value("model name");
    if (e.cpu_model.empty()) e.cpu_model = cpuinfo_value("Model");  // arm64: the board, if anything
    if (e.cpu_model.empty()) e.cpu_model = "unknown";
    const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
    e.online_cpus = online > 0 ? static_cast<uint64_t>(online) : 0;
    e.time = iso8601_utc(start);
    e.version = std::string(project_version());
    e.git_revision = std::string(git_revision());
    return e;
}

std::string render_json(const LoadOptions& o, const std::vector<RunResult>& runs, const Environment& env) {
    const bool all = std::all_of(runs.begin(), runs.end(), [](const RunResult& r) { return r.passed(); });
    Json doc;
    doc["tool"] = "coiommu-load";
    doc["version"] = std::string(project_version());
    doc["ok"] = all;
    doc["environment"] = environment_json(env);
    doc["options"] = options_json(o);
    Json list = Json::array();
    for (const RunResult& r : runs) list.push_back(run_json(r));
    doc["runs"] = std::move(list);
    doc["comparison"] = comparison_json(runs);
    // Invalid UTF-8 (a label is never that, but be safe) becomes U+FFFD instead of an exception.
    return doc.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::string render_json(const LoadOptions& o, const std::vector<RunResult>& runs) {
    return render_json(o, runs, capture_environment(std::chrono::system_clock::now()));
}

Status write_json(const std::string& path, const LoadOptions& o, const std::vector<RunResult>& runs,
                  const Environment& env) {
    return write_file(path, render_json(o, runs, env));
}

Status check_writable(const std::string& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ::close(fd);
        ::unlink(path.c_str());
        return ok();
    }
    if (errno != EEXIST) return make_error(errno, fmt::format("opening {}", path));
    fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return make_error(errno, fmt::format("opening {}", path));
    ::close(fd);
    return ok();
}

Status run_gnuplot(const std::string& script_path) {
    pid_t pid = 0;
    std::string prog = "gnuplot";
    std::vector<char*> argv{prog.data(), const_cast<char*>(script_path.c_str()), nullptr};
    const int rc = ::posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) return make_error(rc, "starting gnuplot (install gnuplot-nox)");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return make_error(errno, "waiting for gnuplot");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return make_error(EIO, fmt::format("gnuplot {} failed (status {})", script_path, status));
    }
    return ok();
}

void print_summary(std::FILE* out, const RunResult& r) {
    std::fprintf(out, "%s  (%s, %s backend, %.2f s)%s\n", r.label.c_str(), r.served_by.c_str(), r.backend.c_str(),
                 r.duration_s, r.passed() ? "" : "  ** FAILED **");
    std::fprintf(out, "  DMA maps     %s/s (%s pages/s), %" PRIu64 " maps, %" PRIu64 " failed, %" PRIu64 " skipped\n",
                 human_count(r.maps_per_s).c_str(), human_count(r.pages_per_s).c_str(), r.maps, r.map_failures,
                 r.skipped_ops);
    std::fprintf(out, "  map latency  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", human_ns(r.map_latency.p50).c_str(),
                 human_ns(r.map_latency.p90).c_str(), human_ns(r.map_latency.p99).c_str(),
                 human_ns(r.map_latency.p999).c_str(), human_ns(r.map_latency.max).c_str());
    if (r.request_latency.count != 0) {
        std::fprintf(out, "  requests     %" PRIu64 " sent (%" PRIu64 " pages), round trip p50 %s  p99 %s  p99.9 %s\n",
                     r.notifications, r.pages_requested, human_ns(r.request_latency.p50).c_str(),
                     human_ns(r.request_latency.p99).c_str(), human_ns(r.request_latency.p999).c_str());
    }
    std::fprintf(out,
                 "  pinned       peak %.1f MiB  mean %.1f MiB  end %.1f MiB  (%s pins/s; guest touched %.1f MiB)\n",
                 pages_to_mib(static_cast<double>(r.pinned_peak_pages)), pages_to_mib(r.pinned_mean_pages),
                 pages_to_mib(static_cast<double>(r.pinned_end_pages)), human_count(r.pins_per_s).c_str(),
                 pages_to_mib(static_cast<double>(r.guest_touched_pages)));
    std::fprintf(out,
                 "  DMA backend  %" PRIu64 " map / %" PRIu64 " unmap calls, entries peak %" PRIu64 " of %" PRIu64 "\n",
                 r.dma_map_calls, r.dma_unmap_calls, r.dma_entries_peak, r.dma_entry_limit);
    std::string failures;
    for (std::size_t i = 0; i < kMapFailures; ++i) {
        if (r.failures_by_reason[i] != 0)
            failures += fmt::format(" {} {}", kMapFailureLabels[i], r.failures_by_reason[i]);
    }
    if (!failures.empty()) std::fprintf(out, "  failures    %s\n", failures.c_str());
    if (r.balloon_requests != 0 || r.balloon_aborted != 0) {
        std::fprintf(out,
                     "  balloon      %" PRIu64 " requests: %" PRIu64 " success, %" PRIu64 " failed, %" PRIu64
                     " aborted; p99 %s\n",
                     r.balloon_requests, r.balloon_success, r.balloon_failed, r.balloon_aborted,
                     human_ns(r.balloon_latency.p99).c_str());
    }
    std::fprintf(out, "  invariant    %s\n",
                 r.invariant_checked
                     ? fmt::format("{} checks, {} violations", r.invariant_checks, r.invariant_violations).c_str()
                     : r.invariant_note.c_str());
    for (const Check& c : r.checks) {
        if (!c.passed) std::fprintf(out, "  CHECK FAILED %s: %s\n", c.name.c_str(), c.detail.c_str());
    }
}

void print_table(std::FILE* out, const std::vector<RunResult>& runs) {
    const auto rows = compare(runs);
    std::size_t w = 3;
    for (const auto& r : rows) w = std::max(w, r.label.size());
    std::fprintf(out, "%-*s %10s %10s %9s %9s %10s %10s %9s %9s %7s %8s %8s\n", static_cast<int>(w), "run", "maps/s",
                 "pages/s", "p50", "p99", "pinned-pk", "pinned-avg", "map-calls", "unmap-cls", "fails", "pps/seed",
                 "mem/seed");
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const RunResult& r = runs[i];
        const ComparisonRow& c = rows[i];
        std::fprintf(out, "%-*s %10s %10s %9s %9s %9.1fM %9.1fM %9s %9s %7" PRIu64 " %8s %8s%s\n", static_cast<int>(w),
                     r.label.c_str(), human_count(r.maps_per_s).c_str(), human_count(r.pages_per_s).c_str(),
                     human_ns(r.map_latency.p50).c_str(), human_ns(r.map_latency.p99).c_str(),
                     pages_to_mib(static_cast<double>(r.pinned_peak_pages)), pages_to_mib(r.pinned_mean_pages),
                     human_count(static_cast<double>(r.dma_map_calls)).c_str(),
                     human_count(static_cast<double>(r.dma_unmap_calls)).c_str(), r.map_failures,
                     ratio_text(c.pages_per_s_vs_seed).c_str(), ratio_text(c.pinned_peak_vs_seed).c_str(),
                     r.passed() ? "" : "  FAILED");
    }
}

Result<std::string> write_plot_files(const std::string& png_path, const std::vector<RunResult>& runs) {
    const std::string dat = png_path + ".dat";
    const std::string bars_dat = png_path + ".bars.dat";
    const std::string script_path = png_path + ".gp";
    COIOMMU_TRY(write_file(dat, plot_timeline_data(runs)));
    COIOMMU_TRY(write_file(bars_dat, plot_bars_data(runs)));
    COIOMMU_TRY(write_file(script_path, plot_script(png_path, dat, bars_dat, runs)));
    return script_path;
}

Status write_plot(const std::string& png_path, const std::vector<RunResult>& runs) {
    COIOMMU_ASSIGN_OR_RETURN(const std::string script, write_plot_files(png_path, runs));
    return run_gnuplot(script);
}

}  // namespace coiommu::loadgen
