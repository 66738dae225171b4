#include "bpf/loader/privileges.h"

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <string>

#include <fmt/format.h>

namespace coiommu::bpf {

namespace {

// linux/capability.h numbers; CAP_BPF and CAP_PERFMON are newer than some libc headers.
constexpr int kCapDacOverride = 1;
constexpr int kCapSysAdmin = 21;
constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;

bool has(uint64_t caps, int cap) { return (caps >> cap) & 1u; }

}  // namespace

std::string Privileges::describe() const {
    std::string out;
    auto add = [&out](bool on, const char* name) {
        if (!on) return;
        if (!out.empty()) out += ' ';
        out += name;
    };
    add(sys_admin, "CAP_SYS_ADMIN");
    add(bpf, "CAP_BPF");
    add(perfmon, "CAP_PERFMON");
    add(dac_override, "CAP_DAC_OVERRIDE");
    return out.empty() ? "no relevant capabilities" : out;
}

Result<Privileges> current_privileges() {
    std::ifstream status("/proc/self/status");
    if (!status) return make_error(errno != 0 ? errno : ENOENT, "open /proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("CapEff:", 0) != 0) continue;
        uint64_t caps = 0;
        const size_t begin = line.find_first_not_of(" \t", 7);
        if (begin == std::string::npos) return make_error(EINVAL, "parse CapEff in /proc/self/status");
        const auto parsed = std::from_chars(line.data() + begin, line.data() + line.size(), caps, 16);
        if (parsed.ec != std::errc{}) return make_error(EINVAL, "parse CapEff in /proc/self/status");
        Privileges p;
        p.sys_admin = has(caps, kCapSysAdmin);
        p.bpf = has(caps, kCapBpf);
        p.perfmon = has(caps, kCapPerfmon);
        p.dac_override = has(caps, kCapDacOverride);
        return p;
    }
    return make_error(ENOENT, "no CapEff line in /proc/self/status");
}

std::string privilege_hint() {
    return "BPF tracing needs root or CAP_BPF+CAP_PERFMON (run with sudo, or "
           "setcap cap_bpf,cap_perfmon+ep on the binary)";
}

Status check_bpf_privileges() {
    auto p = current_privileges();
    if (!p) return coiommu::unexpected(p.error());
    if (p->can_trace()) return ok();
    return make_error(EPERM, fmt::format("{} (have: {})", privilege_hint(), p->describe()));
}

Error bpf_error(int err, std::string context) {
    if (err == EPERM || err == EACCES) context += " [" + privilege_hint() + "]";
    return Error{err, std::move(context)};
}

}  // namespace coiommu::bpf
