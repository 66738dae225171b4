// IommufdBackend against the real kernel (the guest kernel built with iommufd, VFIO_CDEV set by
// scripts/vfio-vm-test.sh --kernel iommufd), and the capacity difference to type1 through the
// engine's pin path. Where iommufd answers differently from type1, the case says what the kernel
// answers natively and what the DmaBackend interface makes of it.
//
// Outside that guest the iommufd cases skip; the type1 capacity case runs on both guest kernels.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "engine/dma/iommufd_backend.h"
#include "engine/dma/vfio_backend.h"
#include "engine/guest/guest_memory.h"
#include "tests/testing/expect.h"
#include "tests/vm/edu.h"
#include "tests/vm/pin_path.h"

namespace coiommu::dma {
namespace {

using coiommu::testing::Edu;
using coiommu::testing::PinPath;
using coiommu::testing::PinPathLayout;

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kMemBytes = uint64_t{16} << 20;

const char* cdev() { return std::getenv("VFIO_CDEV"); }

class IommufdVm : public ::testing::Test {
protected:
    void SetUp() override {
        if (cdev() == nullptr) GTEST_SKIP() << "VFIO_CDEV not set: run inside scripts/vfio-vm-test.sh --kernel iommufd";
        ASSERT_OK_AND_ASSIGN(backend_, IommufdBackend::open_device(cdev()));
        const std::array<RegionSpec, 1> ram{{{Gpa{0}, kMemBytes}}};
        ASSERT_OK_AND_ASSIGN(mem_, GuestMemory::create(ram));
    }
    Hva hva(uint64_t off, uint64_t len = kPage) const { return mem_.translate(Gpa{off}, len).value(); }

    std::unique_ptr<IommufdBackend> backend_;
    GuestMemory mem_;
};

TEST_F(IommufdVm, OpenDeviceAttachesAnIoasWithTheIommusIovaRanges) {
    EXPECT_NE(backend_->ioas_id(), 0u);
    uint64_t alignment = 0;
    ASSERT_OK_AND_ASSIGN(auto ranges, backend_->iova_ranges(&alignment));
    ASSERT_FALSE(ranges.empty());
    EXPECT_EQ(ranges.front().start, 0u);
    EXPECT_LE(alignment, kPage);
    for (const auto& r : ranges) fmt::print("RESULT iommufd IOVA range {:#x}-{:#x}\n", r.start, r.end);
}

TEST_F(IommufdVm, InfoHasNoDmaAvailOnlyTheNoLimitSentinel) {
    ASSERT_OK_AND_ASSIGN(auto info, backend_->info());
    EXPECT_EQ(info.entry_limit, IommufdBackend::kNoEntryLimit);
    EXPECT_EQ(info.entries_available, IommufdBackend::kNoEntryLimit);
    ASSERT_OK(backend_->map(Iova{0x100000}, hva(0), kPage, Prot::ReadWrite));
    EXPECT_EQ(backend_->live_entries(), 1u);
}

TEST_F(IommufdVm, MapThenUnmapReturnsItsSize) {
    ASSERT_OK_AND_ASSIGN(auto o, backend_->map(Iova{0x100000}, hva(0), 4 * kPage, Prot::ReadWrite));
    EXPECT_EQ(o, MapOutcome::Mapped);
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(Iova{0x100000}, 4 * kPage));
    EXPECT_EQ(bytes, 4 * kPage);
    EXPECT_EQ(backend_->live_entries(), 0u);
}

TEST_F(IommufdVm, DuplicateMapIsAlreadyMappedAsOnType1) {
    ASSERT_OK(backend_->map(Iova{0x100000}, hva(0), kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto o, backend_->map(Iova{0x100000}, hva(kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(o, MapOutcome::AlreadyMapped);
}

// Native: ENOENT. type1: 0 bytes. The interface: 0 bytes, success.
TEST_F(IommufdVm, UnmapOfNothingIsZeroBytesAsOnType1) {
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(Iova{0x400000}, kPage));
    EXPECT_EQ(bytes, 0u);
    EXPECT_ERR(backend_->unmap_exact(Iova{0x400000}, kPage), EIO);
}

// Native: ENOENT (type1: EINVAL). Nothing was removed: 0 bytes, and the mapping is whole.
TEST_F(IommufdVm, UnmapThatWouldSplitAMappingRemovesNothing) {
    ASSERT_OK(backend_->map(Iova{0x100000}, hva(0), 2 * kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(Iova{0x100000}, kPage));
    EXPECT_EQ(bytes, 0u);
    ASSERT_OK_AND_ASSIGN(auto again, backend_->map(Iova{0x101000}, hva(kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(again, MapOutcome::AlreadyMapped) << "the second page is still mapped";
    ASSERT_OK_AND_ASSIGN(auto whole, backend_->unmap(Iova{0x100000}, 2 * kPage));
    EXPECT_EQ(whole, 2 * kPage);
}

TEST_F(IommufdVm, EduDmaThroughTheIoasLandsAndIsBlockedAfterUnmap) {
    ASSERT_OK_AND_ASSIGN(auto edu, Edu::from_device(backend_->device_fd()));
    std::byte* src = mem_.host_ptr(Gpa{0}, kPage).value();
    std::byte* dst = mem_.host_ptr(Gpa{kPage}, kPage).value();
    for (uint64_t i = 0; i < kPage; ++i) src[i] = static_cast<std::byte>(i * 5 + 1);
    std::memset(dst, 0, kPage);
    ASSERT_OK(backend_->map(Iova{0x100000}, hva(0), kPage, Prot::Read));
    ASSERT_OK(backend_->map(Iova{0x200000}, hva(kPage), kPage, Prot::Write));
    ASSERT_TRUE(edu.ram_to_device(Iova{0x100000}));
    ASSERT_TRUE(edu.device_to_ram(Iova{0x200000}));
    EXPECT_EQ(std::memcmp(src, dst, Edu::kXfer), 0);

    std::memset(dst, 0xee, kPage);
    ASSERT_OK(backend_->unmap_exact(Iova{0x200000}, kPage));
    ASSERT_TRUE(edu.device_to_ram(Iova{0x200000}));
    EXPECT_EQ(dst[0], std::byte{0xee}) << "DMA reached an IOVA unmapped from the IOAS";
}

// Capacity on iommufd is the locked-memory accounting: without CAP_IPC_LOCK and with a small
// RLIMIT_MEMLOCK the kernel answers ENOMEM, which the interface reports as NoSpace (as ENOSPC on
// type1). Run in a child that drops the capability (root's iommufd accounts nothing).
TEST_F(IommufdVm, MapsPastTheMemlockLimitAreNoSpace) {
    backend_.reset();  // the child binds the device itself
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const rlimit lim{16 * kPage, 16 * kPage};
        if (::setrlimit(RLIMIT_MEMLOCK, &lim) != 0) ::_exit(10);
        __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
        std::array<__user_cap_data_struct, 2> caps{};
        if (::syscall(SYS_capget, &hdr, caps.data()) != 0) ::_exit(11);
        caps[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
        caps[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
        if (::syscall(SYS_capset, &hdr, caps.data()) != 0) ::_exit(12);
        auto b = IommufdBackend::open_device(cdev());
        if (!b) ::_exit(13);
        for (uint64_t i = 0; i < 64; ++i) {
            auto o = (*b)->map(Iova{0x100000 + i * kPage}, hva(i * kPage), kPage, Prot::ReadWrite);
            if (!o) ::_exit(14);
            if (*o == MapOutcome::NoSpace) ::_exit(i >= 1 && i <= 16 ? 0 : 15);
        }
        ::_exit(16);  // never refused
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "10-12 setup, 13 open, 14 a map failed otherwise, 15 refused at the "
                                         "wrong page, 16 never refused";
}

// ---- capacity through the engine: iommufd has no entry limit, type1 stops at 65535 -----------

constexpr uint64_t kPins = 70'000;
const PinPathLayout kCapacityLayout{uint64_t{320} << 20, 0x10, kPins, 0x12000};

struct Capacity {
    uint64_t pinned = 0, refused = 0, pinned_bits = 0;
};

Capacity pin_singles(PinPath& path) {
    Capacity c;
    for (uint64_t g = kCapacityLayout.first; g < kCapacityLayout.first + kPins; ++g) {
        (path.single(Gfn{g}) ? c.pinned : c.refused)++;
    }
    for (uint64_t g = kCapacityLayout.first; g < kCapacityLayout.first + kPins; ++g)
        c.pinned_bits += path.pinned(Gfn{g});
    return c;
}

TEST(IommufdCapacityVm, SeventyThousandSinglePagePinsAllSucceed) {
    if (cdev() == nullptr) GTEST_SKIP() << "VFIO_CDEV not set: run inside scripts/vfio-vm-test.sh --kernel iommufd";
    ASSERT_OK_AND_ASSIGN(auto backend, IommufdBackend::open_device(cdev()));
    ASSERT_OK_AND_ASSIGN(auto path, PinPath::create(*backend, kCapacityLayout));
    const auto t0 = std::chrono::steady_clock::now();
    const Capacity c = pin_singles(*path);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("RESULT iommufd: {} of {} single-page pins succeeded ({:.1f} s)\n", c.pinned, kPins, s);
    EXPECT_EQ(c.pinned, kPins);
    EXPECT_EQ(c.pinned_bits, kPins);
    EXPECT_EQ(backend->live_entries(), kPins);
    EXPECT_EQ(path->reset(), kPins);
}

TEST(Type1CapacityVm, SinglePagePinsStopAtEntry65535WithPinnedClearForTheRest) {
    const char* group = std::getenv("VFIO_GROUP");
    if (group == nullptr) GTEST_SKIP() << "VFIO_GROUP not set: run inside scripts/vfio-vm-test.sh";
    ASSERT_OK_AND_ASSIGN(auto backend, VfioBackend::open_group(group));
    ASSERT_EQ(backend->entry_limit(), 65535u) << "the default dma_entry_limit";
    ASSERT_OK_AND_ASSIGN(auto path, PinPath::create(*backend, kCapacityLayout));
    const Capacity c = pin_singles(*path);
    fmt::print("RESULT type1: {} of {} single-page pins succeeded, {} refused\n", c.pinned, kPins, c.refused);
    EXPECT_EQ(c.pinned, 65535u);
    EXPECT_EQ(c.refused, kPins - 65535u);
    EXPECT_EQ(c.pinned_bits, 65535u) << "PINNED stays clear on every refused page";
    const auto stats = path->stats();
    EXPECT_EQ(stats.totals.pin_failures[telemetry::PinFailureReason::NoSpace], kPins - 65535u);
    EXPECT_EQ(path->reset(), 65535u);
}

}  // namespace
}  // namespace coiommu::dma
