// Helpers for the BPF integration tests: real VFIO/iommufd ioctls on a non-VFIO fd (they fail
// with ENOTTY, but the syscall tracepoints fire), and the USDT fixture process.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/vfio.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "bpf/loader/privileges.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

// Skips, printing why, when this process may not load BPF (not root, no CAP_BPF+CAP_PERFMON).
#define COIOMMU_REQUIRE_BPF()                                                    \
    do {                                                                         \
        auto require_bpf_st_ = ::coiommu::bpf::check_bpf_privileges();           \
        if (!require_bpf_st_) GTEST_SKIP() << require_bpf_st_.error().message(); \
    } while (0)

namespace coiommu::bpf::testing {

// iommufd uAPI (linux/iommufd.h is not in every linux-libc-dev): engine/README.md, "iommufd uAPI".
struct IommuIoasMap {
    uint32_t size;
    uint32_t flags;
    uint32_t ioas_id;
    uint32_t reserved;
    uint64_t user_va;
    uint64_t length;
    uint64_t iova;
};
struct IommuIoasUnmap {
    uint32_t size;
    uint32_t ioas_id;
    uint64_t iova;
    uint64_t length;
};
inline constexpr unsigned long kIommuIoasMap = 0x3b85;    // _IO(';', 0x85)
inline constexpr unsigned long kIommuIoasUnmap = 0x3b86;  // _IO(';', 0x86)

// Each returns 0 or -errno.
inline int vfio_map(int fd, uint64_t iova, uint64_t size) {
    vfio_iommu_type1_dma_map map{};
    map.argsz = sizeof(map);
    map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    map.vaddr = 0x7f0000000000ull;
    map.iova = iova;
    map.size = size;
    return ::ioctl(fd, VFIO_IOMMU_MAP_DMA, &map) == 0 ? 0 : -errno;
}

inline int vfio_unmap(int fd, uint64_t iova, uint64_t size) {
    vfio_iommu_type1_dma_unmap unmap{};
    unmap.argsz = sizeof(unmap);
    unmap.iova = iova;
    unmap.size = size;
    return ::ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 ? 0 : -errno;
}

inline int ioas_map(int fd, uint64_t iova, uint64_t length) {
    IommuIoasMap map{};
    map.size = sizeof(map);
    map.flags = 1 | 2 | 4;  // FIXED_IOVA | WRITEABLE | READABLE
    map.user_va = 0x7f0000000000ull;
    map.length = length;
    map.iova = iova;
    return ::ioctl(fd, kIommuIoasMap, &map) == 0 ? 0 : -errno;
}

inline int ioas_unmap(int fd, uint64_t iova, uint64_t length) {
    IommuIoasUnmap unmap{};
    unmap.size = sizeof(unmap);
    unmap.iova = iova;
    unmap.length = length;
    return ::ioctl(fd, kIommuIoasUnmap, &unmap) == 0 ? 0 : -errno;
}

inline UniqueFd open_dev_null() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

// The USDT fixture binary (tests/integration/bpf/usdt_fixture.cc) as a child process driven
// through its stdin/stdout.
class FixtureProcess {
public:
    FixtureProcess() = default;
    FixtureProcess(const FixtureProcess&) = delete;
    FixtureProcess& operator=(const FixtureProcess&) = delete;
    FixtureProcess(FixtureProcess&& o) noexcept
        : pid_(std::exchange(o.pid_, -1)), in_(std::exchange(o.in_, nullptr)), out_(std::exchange(o.out_, nullptr)) {}
    ~FixtureProcess() { stop(); }

    [[nodiscard]] static Result<FixtureProcess> spawn(const std::string& path) {
        int to_child[2], from_child[2];
        if (::pipe2(to_child, O_CLOEXEC) != 0) return make_error(errno, "pipe");
        if (::pipe2(from_child, O_CLOEXEC) != 0) return make_error(errno, "pipe");
        const pid_t pid = ::fork();
        if (pid < 0) return make_error(errno, "fork");
        if (pid == 0) {
            ::dup2(to_child[0], 0);
            ::dup2(from_child[1], 1);
            ::execl(path.c_str(), path.c_str(), static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(to_child[0]);
        ::close(from_child[1]);
        FixtureProcess f;
        f.pid_ = pid;
        f.in_ = ::fdopen(to_child[1], "w");
        f.out_ = ::fdopen(from_child[0], "r");
        auto line = f.read_line();
        if (!line) return coiommu::unexpected(line.error());
        if (line->rfind("ready ", 0) != 0) return make_error(EPROTO, "fixture said '" + *line + "'");
        return f;
    }

    [[nodiscard]] pid_t pid() const { return pid_; }

    // Sends one command and waits for "ok".
    [[nodiscard]] Status command(const std::string& cmd) {
        if (std::fprintf(in_, "%s\n", cmd.c_str()) < 0 || std::fflush(in_) != 0)
            return make_error(errno, "write " + cmd);
        auto line = read_line();
        if (!line) return coiommu::unexpected(line.error());
        if (*line != "ok") return make_error(EPROTO, cmd + ": " + *line);
        return ok();
    }

    void stop() {
        if (in_ != nullptr) {
            std::fprintf(in_, "exit\n");
            std::fclose(in_);
            in_ = nullptr;
        }
        if (out_ != nullptr) {
            std::fclose(out_);
            out_ = nullptr;
        }
        if (pid_ > 0) {
            int status = 0;
            ::waitpid(pid_, &status, 0);
            pid_ = -1;
        }
    }

private:
    [[nodiscard]] Result<std::string> read_line() {
        char buf[256];
        if (std::fgets(buf, sizeof(buf), out_) == nullptr) return make_error(EPIPE, "fixture closed its output");
        std::string s(buf);
        while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
        return s;
    }

    pid_t pid_ = -1;
    FILE* in_ = nullptr;
    FILE* out_ = nullptr;
};

}  // namespace coiommu::bpf::testing
