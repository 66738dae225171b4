#include "exporter/process_collector.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <limits>
#include <memory>

#include <fmt/format.h>

#include "engine/base/unique_fd.h"
#include "exporter/metric_builder.h"

namespace coiommu::exporter {
namespace {

// /proc files report a size of 0, so read until EOF. 64 KiB bounds a /proc/stat on big hosts.
Result<std::string> read_proc_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return make_error(errno, fmt::format("open {}", path));
    std::string text;
    char buf[4096];
    while (text.size() < 65536) {
        const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR) continue;
            return make_error(errno, fmt::format("read {}", path));
        }
        if (n == 0) break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    return text;
}

// Splits off the next space-separated token.
std::string_view next_token(std::string_view& rest) {
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    const auto end = rest.find_first_of(" \n");
    std::string_view tok = rest.substr(0, end);
    rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
    return tok;
}

bool to_u64(std::string_view s, uint64_t* out) {
    if (s.empty()) return false;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && ptr == s.data() + s.size();
}

double limit_to_double(rlim_t v) {
    return v == RLIM_INFINITY ? std::numeric_limits<double>::infinity() : static_cast<double>(v);
}

Result<uint64_t> count_open_fds(const std::string& dir) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
    if (!d) return make_error(errno, fmt::format("opendir {}", dir));
    const int own = ::dirfd(d.get());
    uint64_t n = 0;
    errno = 0;
    while (const dirent* e = ::readdir(d.get())) {
        if (e->d_name[0] == '.') continue;
        uint64_t fd = 0;
        if (to_u64(e->d_name, &fd) && fd == static_cast<uint64_t>(own)) continue;  // the listing's own fd
        ++n;
    }
    if (errno != 0) return make_error(errno, fmt::format("readdir {}", dir));
    return n;
}

}  // namespace

Result<ProcStat> parse_proc_pid_stat(std::string_view text) {
    const auto close = text.rfind(')');
    if (close == std::string_view::npos) return make_error(EINVAL, "proc stat: no ')' after comm");
    std::string_view rest = text.substr(close + 1);
    // Fields after comm start at 3 (state). Collect up to field 24.
    std::string_view fields[25];
    for (int i = 3; i <= 24; ++i) {
        fields[i] = next_token(rest);
        if (fields[i].empty()) return make_error(EINVAL, fmt::format("proc stat: missing field {}", i));
    }
    ProcStat s;
    if (!to_u64(fields[14], &s.utime_ticks) || !to_u64(fields[15], &s.stime_ticks) ||
        !to_u64(fields[22], &s.starttime_ticks) || !to_u64(fields[23], &s.vsize_bytes)) {
        return make_error(EINVAL, "proc stat: non-numeric field");
    }
    // rss (field 24) is signed in the kernel's format; a negative value never happens for a live
    // process, but treat it as 0 rather than failing the scrape.
    if (!to_u64(fields[24], &s.rss_pages)) {
        if (fields[24].front() != '-') return make_error(EINVAL, "proc stat: non-numeric rss");
        s.rss_pages = 0;
    }
    return s;
}

Result<uint64_t> parse_boot_time(std::string_view text) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        const auto eol = text.find('\n', pos);
        std::string_view line = text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
        if (line.starts_with("btime ")) {
            std::string_view rest = line.substr(6);
            uint64_t v = 0;
            if (!to_u64(next_token(rest), &v)) return make_error(EINVAL, "proc stat: bad btime");
            return v;
        }
        if (eol == std::string_view::npos) break;
        pos = eol + 1;
    }
    return make_error(EINVAL, "proc stat: no btime line");
}

Result<uint64_t> parse_status_kb(std::string_view text, std::string_view key) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        const auto eol = text.find('\n', pos);
        std::string_view line = text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
        if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == ':') {
            std::string_view rest = line.substr(key.size() + 1);
            while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
            uint64_t kb = 0;
            if (!to_u64(next_token(rest), &kb)) return make_error(EINVAL, fmt::format("proc status: bad {}", key));
            return kb * 1024;
        }
        if (eol == std::string_view::npos) break;
        pos = eol + 1;
    }
    return make_error(ENOENT, fmt::format("proc status: no {} line", key));
}

Result<ProcessStats> read_process_stats(const std::string& proc_root) {
    const std::string self = proc_root + "/self";
    auto stat_text = read_proc_file(self + "/stat");
    if (!stat_text) return coiommu::unexpected(stat_text.error());
    auto stat = parse_proc_pid_stat(*stat_text);
    if (!stat) return coiommu::unexpected(stat.error());
    auto system_text = read_proc_file(proc_root + "/stat");
    if (!system_text) return coiommu::unexpected(system_text.error());
    auto btime = parse_boot_time(*system_text);
    if (!btime) return coiommu::unexpected(btime.error());
    auto status_text = read_proc_file(self + "/status");
    if (!status_text) return coiommu::unexpected(status_text.error());
    auto locked = parse_status_kb(*status_text, "VmLck");
    if (!locked) return coiommu::unexpected(locked.error());
    auto fds = count_open_fds(self + "/fd");
    if (!fds) return coiommu::unexpected(fds.error());

    const long ticks = ::sysconf(_SC_CLK_TCK);
    const long page = ::sysconf(_SC_PAGESIZE);
    if (ticks <= 0 || page <= 0) return make_error(EINVAL, "sysconf: clock ticks or page size unavailable");
    rlimit nofile{};
    if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0) return make_error(errno, "getrlimit(RLIMIT_NOFILE)");
    rlimit memlock{};
    if (::getrlimit(RLIMIT_MEMLOCK, &memlock) != 0) return make_error(errno, "getrlimit(RLIMIT_MEMLOCK)");

    const auto tick_hz = static_cast<double>(ticks);
    ProcessStats s;
    s.cpu_seconds = static_cast<double>(stat->utime_ticks + stat->stime_ticks) / tick_hz;
    s.resident_memory_bytes = stat->rss_pages * static_cast<uint64_t>(page);
    s.virtual_memory_bytes = stat->vsize_bytes;
    s.open_fds = *fds;
    s.max_fds = limit_to_double(nofile.rlim_cur);
    s.start_time_seconds = static_cast<double>(*btime) + static_cast<double>(stat->starttime_ticks) / tick_hz;
    s.locked_memory_bytes = *locked;
    s.locked_memory_limit_bytes = limit_to_double(memlock.rlim_cur);
    return s;
}

std::vector<prometheus::MetricFamily> process_families(const ProcessStats& s) {
    std::vector<prometheus::MetricFamily> out;
    out.reserve(8);
    const auto counter = [&](const char* name, const char* help, double v) {
        auto f = counter_family(name, help);
        add_counter(f, v);
        out.push_back(std::move(f));
    };
    const auto gauge = [&](const char* name, const char* help, double v) {
        auto f = gauge_family(name, help);
        add_gauge(f, v);
        out.push_back(std::move(f));
    };
    counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", s.cpu_seconds);
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
          static_cast<double>(s.resident_memory_bytes));
    gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", static_cast<double>(s.virtual_memory_bytes));
    gauge("process_open_fds", "Number of open file descriptors.", static_cast<double>(s.open_fds));
    gauge("process_max_fds", "Maximum number of open file descriptors.", s.max_fds);
    gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", s.start_time_seconds);
    gauge("coiommu_process_locked_memory_bytes",
          "Locked memory of the process (VmLck), which VFIO type1 charges pinned pages to.",
          static_cast<double>(s.locked_memory_bytes));
    gauge("coiommu_process_locked_memory_limit_bytes", "The process's RLIMIT_MEMLOCK soft limit; +Inf when unlimited.",
          s.locked_memory_limit_bytes);
    return out;
}

Status ProcessCollector::collect_into(std::vector<prometheus::MetricFamily>& out) const {
    auto stats = read_process_stats(proc_root_);
    if (!stats) return coiommu::unexpected(with_context(stats.error(), "process collector"));
    for (auto& f : process_families(*stats)) out.push_back(std::move(f));
    return ok();
}

}  // namespace coiommu::exporter
