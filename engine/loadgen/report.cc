#include "engine/loadgen/report.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

#include "engine/base/addr.h"

extern char** environ;

namespace coiommu::loadgen {
namespace {

// ---- a small streaming JSON writer ------------------------------------------------------------

class Json {
public:
    void begin_object(std::string_view key = {}) { open(key, '{'); }
    void end_object() { close('}'); }
    void begin_array(std::string_view key = {}) { open(key, '['); }
    void end_array() { close(']'); }

    void num(std::string_view key, uint64_t v) { raw_value(key, fmt::format("{}", v)); }
    void num(std::string_view key, double v) {
        raw_value(key, std::isfinite(v) ? fmt::format("{}", v) : std::string("null"));
    }
    void num(std::string_view key, std::optional<double> v) {
        if (v) {
            num(key, *v);
        } else {
            null(key);
        }
    }
    void boolean(std::string_view key, bool v) { raw_value(key, v ? "true" : "false"); }
    void str(std::string_view key, std::string_view v) { raw_value(key, quote(v)); }
    void null(std::string_view key) { raw_value(key, "null"); }

    [[nodiscard]] std::string take() { return std::move(out_); }

private:
    static std::string quote(std::string_view s) {
        std::string q = "\"";
        for (char c : s) {
            switch (c) {
                case '"': q += "\\\""; break;
                case '\\': q += "\\\\"; break;
                case '\n': q += "\\n"; break;
                case '\t': q += "\\t"; break;
                case '\r': q += "\\r"; break;
                default:
                    if (static_cast<unsigned char>(c) < 0x20) {
                        q += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
                    } else {
                        q += c;
                    }
            }
        }
        return q + "\"";
    }
    void prefix(std::string_view key) {
        if (!first_.empty()) {
            if (!first_.back()) out_ += ',';
            first_.back() = false;
            out_ += '\n';
            out_.append(2 * first_.size(), ' ');
        }
        if (!key.empty()) out_ += quote(key) + ": ";
    }
    void open(std::string_view key, char c) {
        prefix(key);
        out_ += c;
        first_.push_back(true);
    }
    void close(char c) {
        const bool empty = first_.back();
        first_.pop_back();
        if (!empty) {
            out_ += '\n';
            out_.append(2 * first_.size(), ' ');
        }
        out_ += c;
    }
    void raw_value(std::string_view key, std::string_view v) {
        prefix(key);
        out_ += v;
    }

    std::string out_;
    std::vector<bool> first_;  // per open container: no element written yet
};

void latency(Json& j, std::string_view key, const LatencySummary& l) {
    j.begin_object(key);
    j.num("count", l.count);
    j.num("min", l.min);
    j.num("p50", l.p50);
    j.num("p90", l.p90);
    j.num("p99", l.p99);
    j.num("p999", l.p999);
    j.num("max", l.max);
    j.num("mean", l.mean);
    j.end_object();
}

std::string join_names(const auto& items) {
    std::string s;
    for (const auto& i : items) {
        if (!s.empty()) s += ',';
        s += to_string(i);
    }
    return s;
}

void options_json(Json& j, const LoadOptions& o) {
    j.begin_object("options");
    j.num("vcpus", uint64_t{o.vcpus});
    j.num("ram_bytes", o.ram_bytes);
    j.str("workloads", join_names(o.workloads));
    j.num("buffer_pages", uint64_t{o.buffer_pages});
    if (o.lifetime.timed()) {
        j.null("lifetime_ops");
        j.num("lifetime_us", static_cast<double>(o.lifetime.time.count()) / 1e3);
    } else {
        j.num("lifetime_ops", o.lifetime.ops);
        j.null("lifetime_us");
    }
    j.num("think_us", static_cast<double>(o.think.count()) / 1e3);
    j.num("rate", o.rate);
    j.num("duration_s", static_cast<double>(o.duration.count()) / 1e9);
    j.num("seed", o.seed);
    j.str("engines", join_names(o.engines));
    j.str("strategies", join_names(o.strategies));
    j.str("backend", to_string(o.backend));
    j.str("vfio_group", o.vfio_group);
    j.str("connect", o.connect_path);
    j.str("engine_opts", o.engine_opts);
    j.str("engine_config", workers::to_string(o.engine));
    j.str("latency_model", to_string(o.latency));
    j.num("entry_limit", o.entry_limit);
    j.num("zipf_s", o.zipf_s);
    j.num("ring_buffers", uint64_t{o.ring_buffers});
    j.num("balloon_pages", uint64_t{o.balloon_pages});
    j.num("balloon_interval_ms", static_cast<double>(o.balloon_interval.count()) / 1e6);
    j.end_object();
}

void run_json(Json& j, const RunResult& r) {
    j.begin_object();
    j.str("label", r.label);
    j.str("workload", to_string(r.spec.workload));
    j.str("strategy", to_string(r.spec.strategy));
    if (r.spec.strategy == StrategyKind::Coiommu) {
        j.str("engine", workers::to_string(r.spec.engine));
    } else {
        j.null("engine");
    }
    j.str("backend", r.backend);
    j.str("served_by", r.served_by);
    j.boolean("passed", r.passed());
    j.num("setup_s", r.setup_s);
    j.num("duration_s", r.duration_s);

    j.begin_object("operations");
    j.num("maps", r.maps);
    j.num("map_failures", r.map_failures);
    j.num("unmaps", r.unmaps);
    j.num("unmap_failures", r.unmap_failures);
    j.num("pages_mapped", r.pages_mapped);
    j.num("pages_unmapped", r.pages_unmapped);
    j.num("skipped", r.skipped_ops);
    j.num("maps_per_s", r.maps_per_s);
    j.num("pages_per_s", r.pages_per_s);
    j.end_object();

    j.begin_object("requests");
    j.num("sent", r.notifications);
    j.num("completed", r.requests_completed);
    j.num("pages_requested", r.pages_requested);
    j.end_object();

    j.begin_object("latency_ns");
    latency(j, "map", r.map_latency);
    latency(j, "request", r.request_latency);
    latency(j, "unmap", r.unmap_latency);
    latency(j, "balloon", r.balloon_latency);
    j.end_object();

    j.begin_object("memory");
    j.num("pinned_peak_pages", r.pinned_peak_pages);
    j.num("pinned_mean_pages", r.pinned_mean_pages);
    j.num("pinned_end_pages", r.pinned_end_pages);
    j.num("pinned_peak_mib", pages_to_mib(static_cast<double>(r.pinned_peak_pages)));
    j.num("pinned_mean_mib", pages_to_mib(r.pinned_mean_pages));
    j.num("pages_pinned", r.pages_pinned_total);
    j.num("pages_unpinned", r.pages_unpinned_total);
    j.num("pins_per_s", r.pins_per_s);
    j.num("guest_touched_pages", r.guest_touched_pages);
    j.end_object();

    j.begin_object("dma");
    j.num("map_calls", r.dma_map_calls);
    j.num("unmap_calls", r.dma_unmap_calls);
    j.num("map_failures", r.dma_map_failures);
    j.num("unmap_failures", r.dma_unmap_failures);
    j.num("entries_peak", r.dma_entries_peak);
    j.num("entry_limit", r.dma_entry_limit);
    j.end_object();

    j.begin_object("failures");
    for (std::size_t i = 0; i < kMapFailures; ++i) j.num(kMapFailureLabels[i], r.failures_by_reason[i]);
    j.end_object();

    j.begin_object("invariant");
    j.boolean("checked", r.invariant_checked);
    j.str("note", r.invariant_note);
    j.num("checks", r.invariant_checks);
    j.num("violations", r.invariant_violations);
    j.end_object();

    j.begin_object("balloon");
    j.num("requests", r.balloon_requests);
    j.num("success", r.balloon_success);
    j.num("failed", r.balloon_failed);
    j.num("aborted", r.balloon_aborted);
    j.num("violations", r.balloon_violations);
    j.num("pages", r.balloon_pages);
    j.end_object();

    if (r.engine) {
        const EngineFigures& e = *r.engine;
        j.begin_object("engine_stats");
        j.str("config", e.config);
        j.num("requests_single", e.requests_single);
        j.num("requests_batch", e.requests_batch);
        j.num("requests_failed", e.requests_failed);
        j.num("pages_requested", e.pages_requested);
        j.num("pages_pinned", e.pages_pinned);
        j.num("pages_already_pinned", e.pages_already_pinned);
        j.num("pages_unpinned", e.pages_unpinned);
        j.num("pinned_pages", e.pinned_pages);
        j.num("dma_map_calls", e.dma_map_calls);
        j.num("dma_unmap_calls", e.dma_unmap_calls);
        j.num("request_p50_ns", e.request_p50_ns);
        j.num("request_p99_ns", e.request_p99_ns);
        j.num("balloon_success", e.balloon_success);
        j.num("balloon_failed", e.balloon_failed);
        j.num("lru_scans", e.lru_scans);
        j.begin_object("pin_failures");
        for (std::size_t i = 0; i < telemetry::kPinFailureReasons; ++i) {
            j.num(telemetry::kPinFailureReasonLabels[i], e.pin_failures[i]);
        }
        j.end_object();
        j.begin_object("unpin_attempts");
        for (std::size_t i = 0; i < telemetry::kUnpinResults; ++i) {
            j.num(telemetry::kUnpinResultLabels[i], e.unpin_attempts[i]);
        }
        j.end_object();
        j.end_object();
    } else {
        j.null("engine_stats");
    }

    j.begin_array("checks");
    for (const Check& c : r.checks) {
        j.begin_object();
        j.str("name", c.name);
        j.boolean("passed", c.passed);
        j.str("detail", c.detail);
        j.end_object();
    }
    j.end_array();

    j.begin_object("cpu");
    j.num("process_s", r.process_cpu_s);
    j.begin_array("threads");
    for (const ThreadCpu& t : r.cpu) {
        j.begin_object();
        j.str("name", t.name);
        j.num("cpu_s", t.cpu_s);
        j.end_object();
    }
    j.end_array();
    j.end_object();

    j.begin_array("timeline");
    for (const Sample& s : r.timeline) {
        j.begin_object();
        j.num("t_s", s.t_s);
        j.num("pinned_pages", s.pinned_pages);
        j.num("dma_entries", s.dma_entries);
        j.num("maps", s.maps);
        j.num("pages_mapped", s.pages_mapped);
        j.num("failures", s.failures);
        j.num("maps_per_s", s.maps_per_s);
        j.num("pins_per_s", s.pins_per_s);
        j.num("map_p99_ns", s.map_p99_ns);
        j.num("engine_pinned_pages", s.engine_pinned_pages);
        j.end_object();
    }
    j.end_array();
    j.end_object();
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

// Runs `gnuplot script`. ENOENT when gnuplot is not on PATH.
Status run_gnuplot(const std::string& script) {
    pid_t pid = 0;
    std::string prog = "gnuplot";
    std::vector<char*> argv{prog.data(), const_cast<char*>(script.c_str()), nullptr};
    const int rc = ::posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) return make_error(rc, "starting gnuplot (install gnuplot-nox)");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return make_error(errno, "waiting for gnuplot");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return make_error(EIO, fmt::format("gnuplot {} failed (status {})", script, status));
    }
    return ok();
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

std::string human_count(double v) {
    if (!std::isfinite(v)) return "-";
    if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
    if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
    if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
    return fmt::format("{:.0f}", v);
}

std::string human_ns(uint64_t ns) {
    const auto d = static_cast<double>(ns);
    if (ns >= 1'000'000'000) return fmt::format("{:.2f}s", d / 1e9);
    if (ns >= 1'000'000) return fmt::format("{:.2f}ms", d / 1e6);
    if (ns >= 1'000) return fmt::format("{:.1f}us", d / 1e3);
    return fmt::format("{}ns", ns);
}

double pages_to_mib(double pages) { return pages * static_cast<double>(kPageSize) / (1024.0 * 1024.0); }

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

std::string render_json(const LoadOptions& o, const std::vector<RunResult>& runs) {
    Json j;
    j.begin_object();
    j.str("tool", "coiommu-load");
    j.str("version", "0.1.0");
    bool all = true;
    for (const RunResult& r : runs) all = all && r.passed();
    j.boolean("ok", all);
    options_json(j, o);
    j.begin_array("runs");
    for (const RunResult& r : runs) run_json(j, r);
    j.end_array();
    j.begin_array("comparison");
    for (const ComparisonRow& c : compare(runs)) {
        j.begin_object();
        j.str("label", c.label);
        j.num("maps_per_s", c.maps_per_s);
        j.num("pages_per_s", c.pages_per_s);
        j.num("pinned_peak_mib", c.pinned_peak_mib);
        j.num("map_p99_ns", c.map_p99_ns);
        j.num("pages_per_s_vs_seed", c.pages_per_s_vs_seed);
        j.num("pinned_peak_vs_seed", c.pinned_peak_vs_seed);
        j.end_object();
    }
    j.end_array();
    j.end_object();
    return j.take() + "\n";
}

Status write_json(const std::string& path, const LoadOptions& o, const std::vector<RunResult>& runs) {
    return write_file(path, render_json(o, runs));
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

Status write_plot(const std::string& png_path, const std::vector<RunResult>& runs) {
    std::string data;
    for (const RunResult& r : runs) {
        data += fmt::format("# {}\n# t_s pinned_mib map_p99_us\n", r.label);
        for (const Sample& s : r.timeline) {
            data += fmt::format("{:.3f} {:.3f} {:.3f}\n", s.t_s, pages_to_mib(static_cast<double>(s.pinned_pages)),
                                static_cast<double>(s.map_p99_ns) / 1e3);
        }
        data += "\n\n";  // gnuplot's index separator
    }
    std::string bars = "# index label pages_per_s pinned_peak_mib pinned_mean_mib\n";
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const RunResult& r = runs[i];
        bars += fmt::format("{} {} {:.1f} {:.3f} {:.3f}\n", i, gp_quote(r.label), r.pages_per_s,
                            pages_to_mib(static_cast<double>(r.pinned_peak_pages)), pages_to_mib(r.pinned_mean_pages));
    }
    const std::string dat = png_path + ".dat";
    const std::string bars_dat = png_path + ".bars.dat";
    const std::string script_path = png_path + ".gp";
    std::string gp;
    gp += "set terminal pngcairo size 1400,1000 noenhanced font ',9'\n";
    gp += fmt::format("set output {}\n", gp_quote(png_path));
    gp += "set multiplot layout 2,2 title 'coiommu-load'\n";
    gp += "set key outside bottom center horizontal\nset grid\n";
    gp += "set title 'pinned memory over time'\nset xlabel 's'\nset ylabel 'MiB'\n";
    std::string plots;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        plots += fmt::format("{}{} index {} using 1:2 with lines lw 2 title {}", i == 0 ? "plot " : ", ", gp_quote(dat),
                             i, gp_quote(runs[i].label));
    }
    gp += plots + "\n";
    gp += "set title 'p99 DMA-map latency (per 100 ms)'\nset ylabel 'us'\nset logscale y\n";
    plots.clear();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        plots += fmt::format("{}{} index {} using 1:($3>0?$3:1/0) with lines lw 2 title {}", i == 0 ? "plot " : ", ",
                             gp_quote(dat), i, gp_quote(runs[i].label));
    }
    gp += plots + "\n";
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
    if (auto st = write_file(dat, data); !st) return st;
    if (auto st = write_file(bars_dat, bars); !st) return st;
    if (auto st = write_file(script_path, gp); !st) return st;
    return run_gnuplot(script_path);
}

}  // namespace coiommu::loadgen
