// The QEMU `edu` PCI device driven through its VFIO device fd, for the tests that run inside the
// QEMU guest of scripts/vfio-vm-test.sh: its BAR0 registers and its DMA engine, the device whose
// DMA proves (or disproves) that an IOVA is mapped by the emulated VT-d.
//
// Thread-safety: none; one thread drives the device at a time.
#pragma once

#include <fcntl.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu::testing {

// The edu device through its VFIO device fd: BAR0 registers and its DMA engine. QEMU 7.2 pitfalls
// (engine/README.md, "Real VFIO in a QEMU guest"): a 4096-byte DMA aborts QEMU (use < 4096), DMA
// addresses are masked to 28 bits (IOVA < 256 MiB), each DMA takes 100 ms of virtual time.
class Edu {
public:
    static constexpr uint64_t kRegId = 0x00;
    static constexpr uint64_t kRegLiveness = 0x04;
    static constexpr uint64_t kRegDmaSrc = 0x80;
    static constexpr uint64_t kRegDmaDst = 0x88;
    static constexpr uint64_t kRegDmaCount = 0x90;
    static constexpr uint64_t kRegDmaCmd = 0x98;
    static constexpr uint32_t kCmdRun = 1;
    static constexpr uint32_t kCmdToRam = 2;
    static constexpr uint32_t kDeviceBuffer = 0x40000;  // edu's internal 4 KiB buffer
    static constexpr uint32_t kXfer = 2048;

    // Opens the device of `bdf` in the VFIO group `group_fd` (which must be in a container with
    // its IOMMU set) and enables memory decoding and bus mastering (vfio-pci leaves bus
    // mastering off).
    static Result<Edu> open(int group_fd, const std::string& bdf) {
        Edu edu;
        edu.fd_ = UniqueFd(::ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, bdf.c_str()));
        if (!edu.fd_) return make_error(errno, "VFIO_GROUP_GET_DEVICE_FD " + bdf);
        COIOMMU_TRY(edu.enable());
        return edu;
    }

    // The same from a device fd the caller already has (the VFIO cdev bound to an iommufd):
    // duplicated, the caller keeps its own.
    static Result<Edu> from_device(int device_fd) {
        Edu edu;
        edu.fd_ = UniqueFd(::fcntl(device_fd, F_DUPFD_CLOEXEC, 0));
        if (!edu.fd_) return make_error(errno, "dup of the edu device fd");
        COIOMMU_TRY(edu.enable());
        return edu;
    }

    [[nodiscard]] uint32_t read32(uint64_t reg) const {
        uint32_t v = ~0u;
        if (::pread(fd_.get(), &v, sizeof(v), static_cast<off_t>(bar0_ + reg)) != sizeof(v)) return ~0u;
        return v;
    }
    [[nodiscard]] bool write32(uint64_t reg, uint32_t v) const {
        return ::pwrite(fd_.get(), &v, sizeof(v), static_cast<off_t>(bar0_ + reg)) == sizeof(v);
    }

    // One DMA of kXfer bytes; true when the engine reported completion within 5 s.
    [[nodiscard]] bool dma(uint32_t src, uint32_t dst, uint32_t cmd) const {
        if (!write32(kRegDmaSrc, src) || !write32(kRegDmaDst, dst) || !write32(kRegDmaCount, kXfer) ||
            !write32(kRegDmaCmd, kCmdRun | cmd)) {
            return false;
        }
        for (int i = 0; i < 500; ++i) {
            if ((read32(kRegDmaCmd) & kCmdRun) == 0) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    }
    [[nodiscard]] bool ram_to_device(Iova src) const { return dma(static_cast<uint32_t>(raw(src)), kDeviceBuffer, 0); }
    [[nodiscard]] bool device_to_ram(Iova dst) const {
        return dma(kDeviceBuffer, static_cast<uint32_t>(raw(dst)), kCmdToRam);
    }

private:
    // BAR0's offset in the device fd; memory decoding and bus mastering on (vfio-pci leaves bus
    // mastering off).
    Status enable() {
        vfio_region_info bar0{};
        bar0.argsz = sizeof(bar0);
        bar0.index = VFIO_PCI_BAR0_REGION_INDEX;
        if (::ioctl(fd_.get(), VFIO_DEVICE_GET_REGION_INFO, &bar0) < 0) return make_error(errno, "BAR0 info");
        bar0_ = bar0.offset;
        vfio_region_info cfg{};
        cfg.argsz = sizeof(cfg);
        cfg.index = VFIO_PCI_CONFIG_REGION_INDEX;
        if (::ioctl(fd_.get(), VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0) return make_error(errno, "config info");
        uint16_t cmd = 0;
        if (::pread(fd_.get(), &cmd, sizeof(cmd), static_cast<off_t>(cfg.offset + PCI_COMMAND)) != sizeof(cmd)) {
            return make_error(errno, "read PCI_COMMAND");
        }
        cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if (::pwrite(fd_.get(), &cmd, sizeof(cmd), static_cast<off_t>(cfg.offset + PCI_COMMAND)) != sizeof(cmd)) {
            return make_error(errno, "write PCI_COMMAND");
        }
        return ok();
    }

    UniqueFd fd_;
    uint64_t bar0_ = 0;
};

}  // namespace coiommu::testing
