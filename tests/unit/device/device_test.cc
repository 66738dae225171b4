#include "engine/device/device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "tests/testing/expect.h"

namespace coiommu::device {
namespace {

// BDFs of two passthrough devices: 00:03.0 and 01:00.0.
constexpr uint16_t kBdfA = 0x0018;
constexpr uint16_t kBdfB = 0x0100;
constexpr uint32_t kVcpus = 4;
constexpr uint64_t kRoot = 0x7000;
constexpr uint64_t kLevel = 4;

// Records what the device asked of the engine.
class RecordingEngine final : public EngineControl {
public:
    Status activate(Gpa root, uint64_t level) override {
        ++activations;
        last_root = root;
        last_level = level;
        if (fail_activate) return make_error(EAGAIN, "engine refuses");
        return ok();
    }
    void park_unpin() override { ++parks; }
    void unpark_unpin() override { ++unparks; }

    int activations = 0;
    int parks = 0;
    int unparks = 0;
    Gpa last_root{};
    uint64_t last_level = 0;
    bool fail_activate = false;
};

std::unique_ptr<CoiommuDevice> make_device(uint32_t vcpus = kVcpus) {
    return std::move(CoiommuDevice::create(DeviceConfig{{kBdfA, kBdfB}, vcpus}).value());
}

void write_u64(CoiommuDevice& dev, uint64_t offset, uint64_t v) {
    std::array<std::byte, 8> b{};
    std::memcpy(b.data(), &v, sizeof v);
    dev.mmio_write(offset, b);
}

uint64_t read_u64(CoiommuDevice& dev, uint64_t offset, uint64_t fill = 0xa5a5a5a5a5a5a5a5ull) {
    std::array<std::byte, 8> b{};
    std::memcpy(b.data(), &fill, sizeof fill);
    dev.mmio_read(offset, b);
    uint64_t v = 0;
    std::memcpy(&v, b.data(), sizeof v);
    return v;
}

void command(CoiommuDevice& dev, core::Command c) { write_u64(dev, core::kRegCmd, static_cast<uint64_t>(c)); }

void trigger_byte(CoiommuDevice& dev, uint64_t index) {
    const std::array<std::byte, 1> one{std::byte{1}};
    dev.mmio_write(core::kRegTriggerBase + index, one);
}

// ---- identity and BARs ------------------------------------------------------------------------

TEST(CoiommuDevice, PciIdentityMatchesTheGuestDriver) {
    const PciIdentity id = CoiommuDevice::pci_identity();
    EXPECT_EQ(id.vendor_id, 0x1234);
    EXPECT_EQ(id.device_id, 0xabcd);
    EXPECT_EQ(id.subsystem_vendor_id, 0x1234);
    EXPECT_EQ(id.subsystem_id, 0xabcd);
    EXPECT_EQ(id.revision_id, 0x10);
    EXPECT_EQ(id.class_code, 0xff);
    EXPECT_EQ(id.subclass, 0xff);
    EXPECT_EQ(id.header_type, 0);
}

TEST(CoiommuDevice, ThreeSixtyFourBitPrefetchableBarsOf8KiB) {
    const auto bars = CoiommuDevice::bars();
    ASSERT_EQ(bars.size(), 3u);
    EXPECT_EQ(bars[0].index, 0);
    EXPECT_EQ(bars[0].kind, BarKind::Mmio);
    EXPECT_EQ(bars[1].index, 2);
    EXPECT_EQ(bars[1].kind, BarKind::Notifymap);
    EXPECT_TRUE(bars[1].guest_writable);
    EXPECT_EQ(bars[2].index, 4);
    EXPECT_EQ(bars[2].kind, BarKind::Topologymap);
    EXPECT_FALSE(bars[2].guest_writable);
    for (const BarSpec& b : bars) {
        EXPECT_EQ(b.size, 0x2000u);
        EXPECT_TRUE(b.is_64bit);
        EXPECT_TRUE(b.prefetchable);
    }
}

// ---- construction -----------------------------------------------------------------------------

TEST(CoiommuDevice, TooManyEndpointsIsRejected) {
    const std::vector<uint16_t> bdfs(4096, kBdfA);  // (4096 + 1) * 2 > 0x2000
    auto dev = CoiommuDevice::create(DeviceConfig{bdfs, 1});
    EXPECT_ERR(dev, EINVAL);
    EXPECT_NE(dev.error().context.find("too many endpoints"), std::string::npos);
}

TEST(CoiommuDevice, The4095EndpointsThatFitAreAccepted) {
    const std::vector<uint16_t> bdfs(4095, kBdfA);
    EXPECT_OK(CoiommuDevice::create(DeviceConfig{bdfs, 1}));
}

TEST(CoiommuDevice, ZeroVcpusIsRejected) { EXPECT_ERR(CoiommuDevice::create(DeviceConfig{{kBdfA}, 0}), EINVAL); }

TEST(CoiommuDevice, MoreVcpusThanNotifySlotsIsRejected) {
    EXPECT_ERR(CoiommuDevice::create(DeviceConfig{{kBdfA}, 1025}), EINVAL);
}

TEST(CoiommuDevice, TopologymapHoldsTheCountAndTheBdfs) {
    auto dev = make_device();
    ASSERT_OK_AND_ASSIGN(auto bdfs, read_topology(dev->topologymap_fd()));
    EXPECT_EQ(bdfs, (std::vector<uint16_t>{kBdfA, kBdfB}));
    uint16_t raw_count = 0;
    ASSERT_EQ(::pread(dev->topologymap_fd(), &raw_count, 2, 0), 2);
    EXPECT_EQ(raw_count, 2);
}

TEST(CoiommuDevice, TopologymapCannotBeMappedWritable) {
    auto dev = make_device();
    void* p = ::mmap(nullptr, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED, dev->topologymap_fd(), 0);
    EXPECT_EQ(p, MAP_FAILED);
    EXPECT_EQ(errno, EPERM);
}

TEST(CoiommuDevice, TopologymapCanBeMappedReadOnly) {
    auto dev = make_device();
    void* p = ::mmap(nullptr, 0x2000, PROT_READ, MAP_SHARED, dev->topologymap_fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    EXPECT_EQ(static_cast<const uint16_t*>(p)[1], kBdfA);
    ::munmap(p, 0x2000);
}

TEST(CoiommuDevice, TopologymapRejectsWrites) {
    auto dev = make_device();
    const uint16_t forged = 0x0200;
    EXPECT_EQ(::pwrite(dev->topologymap_fd(), &forged, 2, 2), -1);
    EXPECT_EQ(errno, EPERM);
}

TEST(CoiommuDevice, NotifymapIsSharedWithAnotherMapping) {
    auto dev = make_device();
    void* p = ::mmap(nullptr, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED, dev->notifymap_fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    auto* guest_slots = static_cast<uint64_t*>(p);
    EXPECT_EQ(dev->slot(1).load(std::memory_order_acquire), 0u);
    // Safety (test): the guest's mapping of slot 1, written atomically as the guest driver does.
    GuestAtomicU64(guest_slots + 1).store(0x1234'0018, std::memory_order_release);
    EXPECT_EQ(dev->slot(1).load(std::memory_order_acquire), 0x1234'0018u);
    ::munmap(p, 0x2000);
}

TEST(CoiommuDevice, NotifymapCannotBeTruncated) {
    auto dev = make_device();
    EXPECT_EQ(::ftruncate(dev->notifymap_fd(), 0), -1);
    EXPECT_EQ(errno, EPERM);
}

TEST(CoiommuDevice, OneDistinctTriggerEventfdPerVcpu) {
    auto dev = make_device();
    ASSERT_EQ(dev->vcpus(), kVcpus);
    for (uint32_t i = 0; i < kVcpus; ++i) {
        EXPECT_GE(dev->trigger_fd(i), 0);
        for (uint32_t j = 0; j < i; ++j) EXPECT_NE(dev->trigger_fd(i), dev->trigger_fd(j));
    }
}

// ---- register reads and writes ----------------------------------------------------------------

TEST(CoiommuDevice, RootAndLevelReadBackWhatWasWritten) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    EXPECT_EQ(read_u64(*dev, core::kRegDttRoot), kRoot);
    EXPECT_EQ(read_u64(*dev, core::kRegDttLevel), kLevel);
}

TEST(CoiommuDevice, DttRootIsWriteOnce) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttRoot, 0x9000);
    EXPECT_EQ(read_u64(*dev, core::kRegDttRoot), kRoot);
}

TEST(CoiommuDevice, DttLevelIsWriteOnce) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttLevel, kLevel);
    write_u64(*dev, core::kRegDttLevel, 5);
    EXPECT_EQ(read_u64(*dev, core::kRegDttLevel), kLevel);
}

TEST(CoiommuDevice, CommandReadsBackZero) {
    auto dev = make_device();
    command(*dev, core::Command::ParkUnpin);
    EXPECT_EQ(read_u64(*dev, core::kRegCmd), 0u);
}

TEST(CoiommuDevice, UnalignedReadLeavesDataUntouched) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttRoot, kRoot);
    EXPECT_EQ(read_u64(*dev, 0x4, 0x1111), 0x1111u);
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

TEST(CoiommuDevice, ShortReadLeavesDataUntouched) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttRoot, kRoot);
    std::array<std::byte, 4> b{std::byte{0x77}, std::byte{0x77}, std::byte{0x77}, std::byte{0x77}};
    dev->mmio_read(core::kRegDttRoot, b);
    EXPECT_EQ(b[0], std::byte{0x77});
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

TEST(CoiommuDevice, ReadOfTheTriggerAreaLeavesDataUntouched) {
    auto dev = make_device();
    EXPECT_EQ(read_u64(*dev, core::kRegTriggerBase, 0x2222), 0x2222u);
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

TEST(CoiommuDevice, UnalignedWriteIsIgnored) {
    auto dev = make_device();
    write_u64(*dev, 0x4, kRoot);
    EXPECT_EQ(read_u64(*dev, core::kRegDttRoot), 0u);
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

TEST(CoiommuDevice, FourByteRegisterWriteIsIgnored) {
    auto dev = make_device();
    const std::array<std::byte, 4> b{std::byte{0}, std::byte{0x70}, std::byte{0}, std::byte{0}};
    dev->mmio_write(core::kRegDttRoot, b);
    EXPECT_EQ(read_u64(*dev, core::kRegDttRoot), 0u);
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

// ---- commands ---------------------------------------------------------------------------------

TEST(CoiommuDevice, WritingRootAndLevelDoesNotStartTheEngine) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    EXPECT_EQ(engine.activations, 0);
    EXPECT_FALSE(dev->active());
}

TEST(CoiommuDevice, ActivateStartsTheEngineWithRootAndLevel) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    EXPECT_EQ(engine.activations, 1);
    EXPECT_EQ(engine.last_root, Gpa{kRoot});
    EXPECT_EQ(engine.last_level, kLevel);
    EXPECT_TRUE(dev->active());
}

TEST(CoiommuDevice, SecondActivateDoesNotRestartTheEngine) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    command(*dev, core::Command::Activate);
    EXPECT_EQ(engine.activations, 1);
}

// A level never written (0) is an invalid DTT like a level above 7: the engine starts and fails
// every request on the walk, so no vCPU is left spinning (it used to be refused here).
TEST(CoiommuDevice, ActivateWithoutLevelStartsTheEngineWhichJudgesTheDtt) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    command(*dev, core::Command::Activate);
    EXPECT_EQ(engine.activations, 1);
    EXPECT_TRUE(dev->active());
    EXPECT_EQ(dev->counters().activate_refused.load(), 0u);
}

TEST(CoiommuDevice, ActivateWithoutAnEngineIsRefused) {
    auto dev = make_device();
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    EXPECT_FALSE(dev->active());
    EXPECT_EQ(dev->counters().activate_refused.load(), 1u);
}

TEST(CoiommuDevice, RefusedActivateCompletesTheSlotsAlreadyWritten) {
    auto dev = make_device();
    dev->slot(0).store(0x1234'0018, std::memory_order_release);  // a request written before ACTIVATE
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);  // no engine: refused
    EXPECT_EQ(dev->slot(0).load(std::memory_order_acquire), 0u) << "the vCPU would spin until its timeout";
}

TEST(CoiommuDevice, ActivateTheEngineFailsCompletesTheSlotsAlreadyWritten) {
    auto dev = make_device();
    RecordingEngine engine;
    engine.fail_activate = true;
    dev->set_engine(&engine);
    dev->slot(0).store(0x1234'0018, std::memory_order_release);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    EXPECT_EQ(dev->slot(0).load(std::memory_order_acquire), 0u);
}

TEST(CoiommuDevice, ActivateThatTheEngineFailsLeavesTheDeviceInactiveAndRetryable) {
    auto dev = make_device();
    RecordingEngine engine;
    engine.fail_activate = true;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    EXPECT_FALSE(dev->active());
    EXPECT_EQ(dev->counters().activate_refused.load(), 1u);
    engine.fail_activate = false;
    command(*dev, core::Command::Activate);
    EXPECT_TRUE(dev->active());
    EXPECT_EQ(engine.activations, 2);
}

TEST(CoiommuDevice, DeactivateIsRefusedAndTheDeviceStaysActive) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegDttRoot, kRoot);
    write_u64(*dev, core::kRegDttLevel, kLevel);
    command(*dev, core::Command::Activate);
    command(*dev, core::Command::Deactivate);
    EXPECT_TRUE(dev->active());
    EXPECT_EQ(dev->counters().deactivate_refused.load(), 1u);
}

TEST(CoiommuDevice, FirstParkParksTheEngine) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    command(*dev, core::Command::ParkUnpin);
    EXPECT_EQ(engine.parks, 1);
    EXPECT_EQ(dev->park_count(), 1u);
}

TEST(CoiommuDevice, NestedParksParkOnceAndUnparkAtZero) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    command(*dev, core::Command::ParkUnpin);
    command(*dev, core::Command::ParkUnpin);
    command(*dev, core::Command::UnparkUnpin);
    EXPECT_EQ(engine.parks, 1);
    EXPECT_EQ(engine.unparks, 0);
    command(*dev, core::Command::UnparkUnpin);
    EXPECT_EQ(engine.unparks, 1);
    EXPECT_EQ(dev->park_count(), 0u);
}

TEST(CoiommuDevice, UnparkWhileNotParkedIsLoggedAndIgnored) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    command(*dev, core::Command::UnparkUnpin);
    EXPECT_EQ(engine.unparks, 0);
    EXPECT_EQ(dev->park_count(), 0u);
    EXPECT_EQ(dev->counters().unpark_underflows.load(), 1u);
}

TEST(CoiommuDevice, ParkBeyondTheDepthLimitIsRefused) {
    auto dev = make_device();
    for (uint64_t i = 0; i < kMaxParkDepth; ++i) command(*dev, core::Command::ParkUnpin);
    command(*dev, core::Command::ParkUnpin);
    EXPECT_EQ(dev->park_count(), kMaxParkDepth);
    EXPECT_EQ(dev->counters().park_overflows.load(), 1u);
}

TEST(CoiommuDevice, UnknownCommandIsIgnored) {
    auto dev = make_device();
    RecordingEngine engine;
    dev->set_engine(&engine);
    write_u64(*dev, core::kRegCmd, 7);
    EXPECT_EQ(engine.activations + engine.parks + engine.unparks, 0);
    EXPECT_EQ(dev->counters().ignored_commands.load(), 1u);
}

// ---- the trigger area -------------------------------------------------------------------------

TEST(CoiommuDevice, TrappedTriggerByteSignalsThatVcpusEventfd) {
    auto dev = make_device();
    trigger_byte(*dev, 2);
    EXPECT_TRUE(dev->trigger(2).is_signaled().value());
    EXPECT_FALSE(dev->trigger(1).is_signaled().value());
    EXPECT_EQ(dev->counters().trigger_signalled.load(), 1u);
}

TEST(CoiommuDevice, TriggerWriteOfTwoBytesIsIgnored) {
    auto dev = make_device();
    const std::array<std::byte, 2> two{std::byte{1}, std::byte{0}};
    dev->mmio_write(core::kRegTriggerBase + 1, two);
    EXPECT_FALSE(dev->trigger(1).is_signaled().value());
    EXPECT_EQ(dev->counters().bad_mmio_accesses.load(), 1u);
}

TEST(CoiommuDevice, TriggerForAVcpuWithoutEventfdCompletesItsSlot) {
    auto dev = make_device();
    const uint32_t kNoSuchVcpu = kVcpus + 3;
    dev->slot(kNoSuchVcpu).store(0xdead'0018, std::memory_order_release);
    trigger_byte(*dev, kNoSuchVcpu);
    EXPECT_EQ(dev->slot(kNoSuchVcpu).load(std::memory_order_acquire), 0u);
    EXPECT_EQ(dev->counters().trigger_completed.load(), 1u);
}

TEST(CoiommuDevice, TriggerBeyondTheNotifymapIsIgnoredWithoutTouchingMemory) {
    auto dev = make_device();
    // Every slot holds a marker; an out-of-bounds write (crosvm's panic) would change none of them
    // but also must not crash.
    for (uint32_t i = 0; i < core::kMaxVcpus; ++i) dev->slot(i).store(i + 1, std::memory_order_relaxed);
    trigger_byte(*dev, core::kMaxVcpus);            // 0x18 + 1024
    trigger_byte(*dev, core::kMmioBarSize - 0x19);  // the last byte of BAR0
    for (uint32_t i = 0; i < core::kMaxVcpus; ++i) EXPECT_EQ(dev->slot(i).load(std::memory_order_relaxed), i + 1);
    EXPECT_EQ(dev->counters().trigger_out_of_range.load(), 2u);
}

}  // namespace
}  // namespace coiommu::device
