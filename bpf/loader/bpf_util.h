// Internal helpers of the loader around libbpf and the BPF syscalls. Not for the exporter:
// use the tracers and snapshot.h instead.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "bpf/loader/privileges.h"
#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf::detail {

// Routes libbpf's messages to the log at debug level (once per process). libbpf warns about
// failures we handle ourselves (trial loads), so they stay out of the normal output; run with
// debug logging (coiommu-trace -v) to see verifier logs. The verifier's reason for refusing a
// program is kept whatever the level, for take_verifier_reason().
void install_libbpf_logging();

// From one libbpf warning holding a program load log ("prog 'p': -- BEGIN PROG LOAD LOG --" ...
// "-- END PROG LOAD LOG --"): "prog 'p': <the verifier's last message>"; empty when `message` is
// not such a log. The reason is the last line before the "processed N insns" summary.
[[nodiscard]] std::string verifier_reason(std::string_view message);

// The reason of the last program the verifier refused in this process (then forgotten); empty
// when none was refused since the last call. Thread-safe.
[[nodiscard]] std::string take_verifier_reason();

// Syscall tracepoints need tracefs (libbpf reads the event id from
// /sys/kernel/tracing/events/...). Mounts it at /sys/kernel/tracing when it is not mounted
// anywhere; EPERM without CAP_SYS_ADMIN, with a message saying how to mount it by hand.
[[nodiscard]] Status ensure_tracefs();

// Number of possible CPUs (the stride of per-CPU map values), > 0.
[[nodiscard]] Result<int> possible_cpus();

// Reads entries [0, entries) of a per-CPU array whose value type T is a struct of u64 counters,
// summing each field over every possible CPU.
template <class T>
[[nodiscard]] Result<std::vector<T>> read_percpu_array(int map_fd, uint32_t entries) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % sizeof(uint64_t) == 0,
                  "per-CPU values must be structs of u64 fields");
    constexpr size_t kWords = sizeof(T) / sizeof(uint64_t);
    auto cpus = possible_cpus();
    if (!cpus) return coiommu::unexpected(cpus.error());
    std::vector<uint64_t> buf(kWords * static_cast<size_t>(*cpus));
    std::vector<T> out(entries);
    for (uint32_t key = 0; key < entries; ++key) {
        if (bpf_map_lookup_elem(map_fd, &key, buf.data()) != 0) {
            const int err = errno;
            return coiommu::unexpected(bpf_error(err, "read per-CPU map entry " + std::to_string(key)));
        }
        uint64_t sum[kWords] = {};
        for (int cpu = 0; cpu < *cpus; ++cpu) {
            for (size_t w = 0; w < kWords; ++w) sum[w] += buf[static_cast<size_t>(cpu) * kWords + w];
        }
        std::memcpy(&out[key], sum, sizeof(T));
    }
    return out;
}

// Kernel info of one program: id, tag, run time when stats are on.
[[nodiscard]] Result<ProgramInfo> program_info(int prog_fd, std::string attach, bool attached);

// The programs of a skeleton-owned object that are loaded (autoload on), with `attach` kind and
// whether a link exists (`linked(prog)`).
template <class F>
[[nodiscard]] Result<std::vector<ProgramInfo>> object_programs(bpf_object* obj, const std::string& attach, F linked) {
    std::vector<ProgramInfo> out;
    bpf_program* prog = nullptr;
    bpf_object__for_each_program(prog, obj) {
        if (!bpf_program__autoload(prog)) continue;
        auto info = program_info(bpf_program__fd(prog), attach, linked(prog));
        if (!info) return coiommu::unexpected(info.error());
        out.push_back(std::move(*info));
    }
    return out;
}

}  // namespace coiommu::bpf::detail
