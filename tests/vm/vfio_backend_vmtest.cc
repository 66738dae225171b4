// VfioBackend against the real kernel: runs inside the QEMU guest of scripts/vfio-vm-test.sh
// (Debian 6.1 kernel, emulated VT-d, QEMU `edu` bound to vfio-pci; VFIO_GROUP and VFIO_BDF in
// the environment). Outside that guest every case skips.
//
// Each case opens its own container on the group (the fixture) and closes it at the end, so a
// case starts with an empty container. The host memory mapped is a memfd-backed GuestMemory,
// the way a VMM hands guest RAM to the engine.
//
// Timings printed here are TCG numbers: functional only (~10x bare metal: engine/README.md, "Real
// VFIO in a QEMU guest").
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "engine/dma/vfio_backend.h"
#include "engine/guest/guest_memory.h"
#include "tests/vm/edu.h"
#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

using Clock = std::chrono::steady_clock;
using coiommu::testing::Edu;

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kMiB = uint64_t{1} << 20;
// Host memory for the mappings: 80 MiB of memfd "guest RAM" (the 64 MiB case plus room).
constexpr uint64_t kMemBytes = 80 * kMiB;
// IOVAs at 4 GiB: above the 32-bit MSI window (0xfee00000 is reserved) and inside VT-d's 39 bits.
constexpr Iova kIovaBase{uint64_t{1} << 32};
// The entry limit the ENOSPC case sets: small enough to fill quickly under TCG (~15 µs a map).
constexpr uint64_t kSmallLimit = 100;

struct VmEnv {
    std::string group;  // /dev/vfio/<n>
    std::string bdf;    // the edu device, e.g. 0000:00:01.0
};

std::optional<VmEnv> vm_env() {
    const char* group = std::getenv("VFIO_GROUP");
    const char* bdf = std::getenv("VFIO_BDF");
    if (group == nullptr || bdf == nullptr) return std::nullopt;
    return VmEnv{group, bdf};
}

Iova iova_at(uint64_t delta) { return offset(kIovaBase, delta); }

void report(const char* line) {
    std::printf("RESULT %s\n", line);
    std::fflush(stdout);
}

class VfioBackendVm : public ::testing::Test {
protected:
    void SetUp() override {
        auto env = vm_env();
        if (!env) GTEST_SKIP() << "VFIO_GROUP/VFIO_BDF not set: run inside the guest of scripts/vfio-vm-test.sh";
        env_ = *env;
        ASSERT_OK_AND_ASSIGN(backend_, VfioBackend::open_group(env_.group));
        const std::array<RegionSpec, 1> ram{{{Gpa{0}, kMemBytes}}};
        ASSERT_OK_AND_ASSIGN(mem_, GuestMemory::create(ram));
    }

    // Host address of guest-RAM offset `off` (a page-aligned stand-in for a guest page).
    Hva hva(uint64_t off, uint64_t len = kPage) const { return mem_.translate(Gpa{off}, len).value(); }
    std::byte* ptr(uint64_t off, uint64_t len = kPage) const { return mem_.host_ptr(Gpa{off}, len).value(); }

    VmEnv env_;
    std::unique_ptr<VfioBackend> backend_;
    GuestMemory mem_;
};

// ---- container setup and geometry -------------------------------------------------------------

TEST_F(VfioBackendVm, OpenGroupReportsTheType1Geometry) {
    ASSERT_OK_AND_ASSIGN(auto info, backend_->info());
    EXPECT_NE(info.iova_pgsizes & kPageSize, 0u) << std::hex << info.iova_pgsizes;
    EXPECT_FALSE(info.iova_ranges.empty());
    EXPECT_EQ(info.entries_available, backend_->entry_limit());
    EXPECT_EQ(backend_->entry_limit(), VfioBackend::module_entry_limit().value_or(0));
    EXPECT_EQ(backend_->live_entries(), 0u);
    EXPECT_GE(backend_->group_fd(), 0);
}

TEST_F(VfioBackendVm, SecondOpenOfTheSameGroupFailsWithEbusy) {
    EXPECT_ERR(VfioBackend::open_group(env_.group), EBUSY);
}

// ---- map / unmap ------------------------------------------------------------------------------

TEST_F(VfioBackendVm, Map4KiBThenUnmapReturnsItsSize) {
    ASSERT_OK_AND_ASSIGN(auto outcome, backend_->map(kIovaBase, hva(0), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(kIovaBase, kPage));
    EXPECT_EQ(bytes, kPage);
}

TEST_F(VfioBackendVm, Map64MiBThenUnmapReturnsItsSize) {
    constexpr uint64_t kBig = 64 * kMiB;
    const auto t0 = Clock::now();
    ASSERT_OK_AND_ASSIGN(auto outcome, backend_->map(kIovaBase, hva(0, kBig), kBig, Prot::ReadWrite));
    const auto t1 = Clock::now();
    EXPECT_EQ(outcome, MapOutcome::Mapped);
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(kIovaBase, kBig));
    const auto t2 = Clock::now();
    EXPECT_EQ(bytes, kBig);
    char line[160];
    std::snprintf(line, sizeof(line), "vfio_map64m_cold_ms=%.1f vfio_unmap64m_ms=%.1f",
                  std::chrono::duration<double, std::milli>(t1 - t0).count(),
                  std::chrono::duration<double, std::milli>(t2 - t1).count());
    report(line);
}

TEST_F(VfioBackendVm, ManySmallMapsAndUnmapsAllSucceed) {
    constexpr uint64_t kN = 256;
    // Warm the pages first so the timing is of VFIO, not of first-touch faults.
    std::memset(ptr(0, kN * kPage), 1, kN * kPage);
    uint64_t mapped = 0;
    const auto t0 = Clock::now();
    for (uint64_t i = 0; i < kN; ++i) {
        auto r = backend_->map(iova_at(i * kPage), hva(i * kPage), kPage, Prot::ReadWrite);
        mapped += (r && *r == MapOutcome::Mapped) ? 1 : 0;
    }
    const auto t1 = Clock::now();
    EXPECT_EQ(backend_->live_entries(), kN);
    uint64_t unmapped = 0;
    for (uint64_t i = 0; i < kN; ++i) unmapped += backend_->unmap(iova_at(i * kPage), kPage).value_or(0);
    const auto t2 = Clock::now();
    EXPECT_EQ(mapped, kN);
    EXPECT_EQ(unmapped, kN * kPage);
    char line[160];
    std::snprintf(line, sizeof(line), "vfio_map4k_ns=%.0f vfio_unmap4k_ns=%.0f n=%llu",
                  std::chrono::duration<double, std::nano>(t1 - t0).count() / kN,
                  std::chrono::duration<double, std::nano>(t2 - t1).count() / kN, static_cast<unsigned long long>(kN));
    report(line);
}

TEST_F(VfioBackendVm, DuplicateMapReturnsAlreadyMapped) {
    ASSERT_OK(backend_->map(kIovaBase, hva(0), kMiB, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, backend_->map(kIovaBase, hva(0), kMiB, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
    EXPECT_EQ(backend_->counters().map_eexist.load(), 1u);
    EXPECT_EQ(backend_->counters().map_failures.load(), 0u);
}

TEST_F(VfioBackendVm, MapInsideAnExistingMappingReturnsAlreadyMapped) {
    ASSERT_OK(backend_->map(kIovaBase, hva(0), kMiB, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto outcome, backend_->map(iova_at(kPage), hva(kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::AlreadyMapped);
}

TEST_F(VfioBackendVm, BisectingUnmapFailsWithEinval) {
    ASSERT_OK(backend_->map(kIovaBase, hva(0), kMiB, Prot::ReadWrite));
    EXPECT_ERR(backend_->unmap(iova_at(kPage), kPage), EINVAL);
    EXPECT_EQ(backend_->live_entries(), 1u);
}

TEST_F(VfioBackendVm, UnmapOfNothingReturnsZeroBytes) {
    ASSERT_OK_AND_ASSIGN(auto bytes, backend_->unmap(iova_at(16 * kMiB), kPage));
    EXPECT_EQ(bytes, 0u);
}

TEST_F(VfioBackendVm, UnmapExactOfAPartlyMappedRangeFailsWithEio) {
    ASSERT_OK(backend_->map(kIovaBase, hva(0), kPage, Prot::ReadWrite));
    EXPECT_ERR(backend_->unmap_exact(kIovaBase, 2 * kPage), EIO);
}

TEST_F(VfioBackendVm, UnalignedMapFailsWithEinval) {
    EXPECT_ERR(backend_->map(iova_at(512), hva(0), kPage, Prot::ReadWrite), EINVAL);
}

TEST_F(VfioBackendVm, MapOfUnbackedHostMemoryFailsWithEfault) {
    EXPECT_ERR(backend_->map(kIovaBase, Hva{0x1000}, kPage, Prot::ReadWrite), EFAULT);
    EXPECT_EQ(backend_->counters().map_failures.load(), 1u);
}

// ---- capacity ---------------------------------------------------------------------------------

TEST_F(VfioBackendVm, DmaAvailDecreasesByOnePerMap) {
    ASSERT_OK_AND_ASSIGN(auto before, backend_->info());
    ASSERT_OK(backend_->map(iova_at(0), hva(0), kPage, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto after_one, backend_->info());
    ASSERT_OK(backend_->map(iova_at(kMiB), hva(kMiB), kMiB, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto after_two, backend_->info());
    EXPECT_EQ(after_one.entries_available, before.entries_available - 1);
    EXPECT_EQ(after_two.entries_available, before.entries_available - 2);
    EXPECT_EQ(backend_->live_entries(), 2u);
}

// Restores the module parameter when a case that lowered it ends (later cases open containers
// that sample it).
class EntryLimitRestorer {
public:
    explicit EntryLimitRestorer(uint64_t saved) : saved_(saved) {}
    ~EntryLimitRestorer() { EXPECT_OK(VfioBackend::set_module_entry_limit(saved_)); }
    EntryLimitRestorer(const EntryLimitRestorer&) = delete;
    EntryLimitRestorer& operator=(const EntryLimitRestorer&) = delete;

private:
    uint64_t saved_;
};

TEST_F(VfioBackendVm, MapPastALoweredEntryLimitReturnsNoSpace) {
    // dma_entry_limit is sampled when a container gets its IOMMU: lower it, then move the group
    // to a NEW container (a group belongs to one container, so close the fixture's first).
    const auto saved = VfioBackend::module_entry_limit();
    ASSERT_TRUE(saved.has_value());
    backend_.reset();
    EntryLimitRestorer restore(*saved);
    ASSERT_OK(VfioBackend::set_module_entry_limit(kSmallLimit));
    ASSERT_OK_AND_ASSIGN(auto small, VfioBackend::open_group(env_.group));
    EXPECT_EQ(small->entry_limit(), kSmallLimit);

    uint64_t mapped = 0;
    for (uint64_t i = 0; i < kSmallLimit; ++i) {
        auto r = small->map(iova_at(i * kPage), hva(i * kPage), kPage, Prot::ReadWrite);
        mapped += (r && *r == MapOutcome::Mapped) ? 1 : 0;
    }
    EXPECT_EQ(mapped, kSmallLimit);
    ASSERT_OK_AND_ASSIGN(auto outcome,
                         small->map(iova_at(kSmallLimit * kPage), hva(kSmallLimit * kPage), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::NoSpace);
    EXPECT_EQ(small->counters().map_enospc.load(), 1u);
    ASSERT_OK_AND_ASSIGN(auto info, small->info());
    EXPECT_EQ(info.entries_available, 0u);
    // One unmap covering every entry frees them all.
    ASSERT_OK_AND_ASSIGN(auto bytes, small->unmap(kIovaBase, (kSmallLimit + 1) * kPage));
    EXPECT_EQ(bytes, kSmallLimit * kPage);
}

// ---- adopt ------------------------------------------------------------------------------------

TEST_F(VfioBackendVm, AdoptedContainerFromAVmmMapsAndUnmaps) {
    // Play the VMM: set up a container by hand, keep the group, hand over a dup of the fd.
    backend_.reset();
    UniqueFd container(::open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(container.valid()) << std::strerror(errno);
    UniqueFd group(::open(env_.group.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(group.valid()) << std::strerror(errno);
    int cfd = container.get();
    ASSERT_EQ(::ioctl(group.get(), VFIO_GROUP_SET_CONTAINER, &cfd), 0) << std::strerror(errno);
    ASSERT_EQ(::ioctl(container.get(), VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), 0) << std::strerror(errno);

    ASSERT_OK_AND_ASSIGN(auto adopted, VfioBackend::adopt(UniqueFd(::dup(container.get()))));
    EXPECT_EQ(adopted->group_fd(), -1);
    EXPECT_EQ(adopted->entry_limit(), VfioBackend::module_entry_limit().value_or(0));
    ASSERT_OK_AND_ASSIGN(auto outcome, adopted->map(kIovaBase, hva(0), kPage, Prot::ReadWrite));
    EXPECT_EQ(outcome, MapOutcome::Mapped);
    EXPECT_EQ(adopted->live_entries(), 1u);
    EXPECT_OK(adopted->unmap_exact(kIovaBase, kPage));
}

TEST_F(VfioBackendVm, AdoptOfAContainerWithoutAnIommuFailsWithEinval) {
    UniqueFd bare(::open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(bare.valid()) << std::strerror(errno);
    EXPECT_ERR(VfioBackend::adopt(std::move(bare)), EINVAL);
}

// ---- real device DMA through the emulated VT-d (QEMU edu) ---------------------------------------

// Low IOVAs for edu (28-bit DMA addresses), known to work with it.
constexpr Iova kEduSrc{0x100000};
constexpr Iova kEduDst{0x200000};
constexpr Iova kEduCheck{0x300000};
constexpr uint64_t kSrcOff = 0;  // guest-RAM offsets of the three pages
constexpr uint64_t kDstOff = kPage;
constexpr uint64_t kCheckOff = 2 * kPage;

TEST_F(VfioBackendVm, EduRespondsThroughTheVfioDeviceFd) {
    ASSERT_OK_AND_ASSIGN(auto edu, Edu::open(backend_->group_fd(), env_.bdf));
    EXPECT_EQ(edu.read32(Edu::kRegId), 0x010000edu);
    ASSERT_TRUE(edu.write32(Edu::kRegLiveness, 0x12345678));
    EXPECT_EQ(edu.read32(Edu::kRegLiveness), ~0x12345678u);
}

TEST_F(VfioBackendVm, EduDmaThroughMappedIovasCopiesTheBuffer) {
    ASSERT_OK_AND_ASSIGN(auto edu, Edu::open(backend_->group_fd(), env_.bdf));
    std::byte* src = ptr(kSrcOff);
    std::byte* dst = ptr(kDstOff);
    for (uint64_t i = 0; i < kPage; ++i) src[i] = static_cast<std::byte>(i * 7 + 3);
    std::memset(dst, 0, kPage);
    ASSERT_OK(backend_->map(kEduSrc, hva(kSrcOff), kPage, Prot::Read));
    ASSERT_OK(backend_->map(kEduDst, hva(kDstOff), kPage, Prot::Write));

    ASSERT_TRUE(edu.ram_to_device(kEduSrc));
    ASSERT_TRUE(edu.device_to_ram(kEduDst));

    EXPECT_EQ(std::memcmp(src, dst, Edu::kXfer), 0);
    EXPECT_EQ(dst[Edu::kXfer], std::byte{0});  // exactly kXfer bytes were written
}

TEST_F(VfioBackendVm, EduDmaToAnUnmappedIovaIsBlocked) {
    ASSERT_OK_AND_ASSIGN(auto edu, Edu::open(backend_->group_fd(), env_.bdf));
    std::byte* src = ptr(kSrcOff);
    std::byte* dst = ptr(kDstOff);
    std::byte* check = ptr(kCheckOff);
    std::memset(src, 0x5a, kPage);
    std::memset(dst, 0, kPage);
    std::memset(check, 0, kPage);
    ASSERT_OK(backend_->map(kEduSrc, hva(kSrcOff), kPage, Prot::Read));
    ASSERT_OK(backend_->map(kEduDst, hva(kDstOff), kPage, Prot::Write));
    ASSERT_OK(backend_->map(kEduCheck, hva(kCheckOff), kPage, Prot::Write));
    ASSERT_TRUE(edu.ram_to_device(kEduSrc));
    ASSERT_OK(backend_->unmap_exact(kEduDst, kPage));

    ASSERT_TRUE(edu.device_to_ram(kEduDst));    // the engine completes; the IOMMU drops the write
    ASSERT_TRUE(edu.device_to_ram(kEduCheck));  // control: the device did hold the pattern

    EXPECT_EQ(check[0], std::byte{0x5a});
    EXPECT_EQ(check[Edu::kXfer - 1], std::byte{0x5a});
    const std::array<std::byte, Edu::kXfer> zeros{};
    EXPECT_EQ(std::memcmp(dst, zeros.data(), zeros.size()), 0) << "DMA reached an unmapped IOVA";
}

}  // namespace
}  // namespace coiommu::dma
