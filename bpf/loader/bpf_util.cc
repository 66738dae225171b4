#include "bpf/loader/bpf_util.h"

#include <sys/mount.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>

#include <fmt/format.h>

#include "engine/base/log.h"

namespace coiommu::bpf::detail {

namespace {

int libbpf_print(enum libbpf_print_level level, const char* format, va_list args) {
    if (!log::enabled(log::Level::Debug)) return 0;
    char buf[1024];
    const int n = std::vsnprintf(buf, sizeof(buf), format, args);
    if (n <= 0) return n;
    std::string_view msg(buf, std::min(static_cast<size_t>(n), sizeof(buf) - 1));
    while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
    CLOG_DEBUG("libbpf", "{}{}", level == LIBBPF_WARN ? "warn: " : "", msg);
    return n;
}

constexpr const char* kTracefs = "/sys/kernel/tracing";
constexpr const char* kDebugfsTracing = "/sys/kernel/debug/tracing";

}  // namespace

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
        return tl::unexpected(bpf_error(err, "get program info"));
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
