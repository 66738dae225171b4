#include "bpf/loader/bpf_util.h"

#include <sys/mount.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::bpf::detail {

namespace {

std::mutex g_reason_mu;
std::string g_reason;  // guarded by g_reason_mu

// libbpf's format strings, forwarded: the attribute tells both compilers the va_list is checked
// at libbpf's call sites.
__attribute__((format(printf, 2, 0))) int libbpf_print(enum libbpf_print_level level, const char* format,
                                                       va_list args) {
    const bool debug = log::enabled(log::Level::Debug);
    if (!debug && level != LIBBPF_WARN) return 0;
    va_list copy;
    va_copy(copy, args);
    const int n = std::vsnprintf(nullptr, 0, format, copy);
    va_end(copy);
    if (n <= 0) return n;
    std::string text(static_cast<size_t>(n) + 1, '\0');  // verifier logs run to many KiB
    std::vsnprintf(text.data(), text.size(), format, args);
    text.resize(static_cast<size_t>(n));
    if (level == LIBBPF_WARN) {
        if (std::string reason = verifier_reason(text); !reason.empty()) {
            std::lock_guard lock(g_reason_mu);
            g_reason = std::move(reason);
        }
    }
    if (debug) {
        std::string_view msg(text);
        while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
        CLOG_DEBUG("libbpf", "{}{}", level == LIBBPF_WARN ? "warn: " : "", msg);
    }
    return n;
}

constexpr const char* kTracefs = "/sys/kernel/tracing";
constexpr const char* kDebugfsTracing = "/sys/kernel/debug/tracing";

}  // namespace

std::string verifier_reason(std::string_view message) {
    constexpr std::string_view kBegin = "-- BEGIN PROG LOAD LOG --";
    constexpr std::string_view kEnd = "-- END PROG LOAD LOG --";
    const size_t begin = message.find(kBegin);
    const size_t end = message.find(kEnd);
    if (begin == std::string_view::npos || end == std::string_view::npos || end < begin) return {};
    std::string prog;
    if (const size_t p = message.rfind("prog '", begin); p != std::string_view::npos) {
        const size_t q = message.find('\'', p + 6);
        if (q != std::string_view::npos && q < begin) prog = std::string(message.substr(p, q + 1 - p));
    }
    // Walk the log's lines backwards: skip the summary ("processed ...") and blank lines.
    std::string_view log = message.substr(begin + kBegin.size(), end - begin - kBegin.size());
    std::string_view reason;
    while (!log.empty()) {
        while (!log.empty() && (log.back() == '\n' || log.back() == ' ')) log.remove_suffix(1);
        const size_t nl = log.rfind('\n');
        const std::string_view line = nl == std::string_view::npos ? log : log.substr(nl + 1);
        log = nl == std::string_view::npos ? std::string_view{} : log.substr(0, nl);
        if (line.empty() || line.starts_with("processed ") || line.starts_with("verification time")) continue;
        reason = line;
        break;
    }
    if (reason.empty()) return {};
    return prog.empty() ? std::string(reason) : prog + ": " + std::string(reason);
}

std::string take_verifier_reason() {
    std::lock_guard lock(g_reason_mu);
    return std::exchange(g_reason, {});
}

void install_libbpf_logging() {
    static std::once_flag once;
    std::call_once(once, [] { libbpf_set_print(libbpf_print); });
}

Status ensure_tracefs() {
    const std::string tracefs_events = std::string(kTracefs) + "/events";
    const std::string debugfs_events = std::string(kDebugfsTracing) + "/events";
    if (::access(tracefs_events.c_str(), F_OK) == 0) return ok();
    const int tracefs_err = errno;
    // libbpf uses the debugfs path whenever that directory exists.
    if (::access(kDebugfsTracing, F_OK) == 0 && ::access(debugfs_events.c_str(), F_OK) == 0) return ok();
    if (tracefs_err == EACCES) {
        return make_error(EACCES, fmt::format("cannot read the tracepoint ids under {} (tracefs is root-only): run as "
                                              "root, add CAP_DAC_OVERRIDE, or relax its mode",
                                              kTracefs));
    }
    if (::mount("nodev", kTracefs, "tracefs", 0, nullptr) != 0) {
        const int err = errno;
        return make_error(err, fmt::format("tracefs is not mounted and mounting it at {} failed; the syscall "
                                           "tracepoints need it: run `mount -t tracefs nodev {}` as root",
                                           kTracefs, kTracefs));
    }
    CLOG_INFO("bpf", "mounted tracefs at {}", kTracefs);
    if (::access(tracefs_events.c_str(), F_OK) != 0) {
        const int err = errno;
        return make_error(err, fmt::format("{} missing after mounting tracefs", tracefs_events));
    }
    return ok();
}

Result<int> possible_cpus() {
    const int n = libbpf_num_possible_cpus();
    if (n <= 0) return make_error(n < 0 ? -n : EINVAL, "count possible CPUs");
    return n;
}

Result<ProgramInfo> program_info(int prog_fd, std::string attach, bool attached) {
    bpf_prog_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
        const int err = errno;
        return coiommu::unexpected(bpf_error(err, "get program info"));
    }
    ProgramInfo out;
    out.program = info.name;
    out.attach = std::move(attach);
    out.id = info.id;
    for (unsigned char b : info.tag) out.tag += fmt::format("{:02x}", b);
    out.attached = attached;
    out.run_time_ns = info.run_time_ns;
    out.run_cnt = info.run_cnt;
    return out;
}

}  // namespace coiommu::bpf::detail
