// The CoIOMMU device ABI: every constant and layout the guest driver and the host agree on.
//
// Sources: the ChromiumOS guest driver (kernel/dma/coiommu.{c,h}, pci-coiommu) and crosvm's CoIOMMU
// device; the protocol around them is in engine/README.md ("DTT format", "Guest driver protocol",
// "Device model"). Nothing here may change without breaking existing guests. This header is
// self-contained (constants and plain structs only) so the guest emulator can include it without
// linking the host engine.
#pragma once

#include <cstddef>
#include <cstdint>

namespace coiommu::core {

// ---- PCI identity -------------------------------------------------------------------------
inline constexpr uint16_t kPciVendorId = 0x1234;
inline constexpr uint16_t kPciDeviceId = 0xabcd;
inline constexpr uint16_t kPciSubsystemVendorId = 0x1234;
inline constexpr uint16_t kPciSubsystemId = 0xabcd;
inline constexpr uint8_t kPciRevisionId = 0x10;
inline constexpr uint8_t kPciClassCode = 0xff;   // "other"
inline constexpr uint8_t kPciSubclass = 0xff;    // "other"
inline constexpr uint8_t kPciProgIf = 0x00;      // none
inline constexpr uint8_t kPciHeaderType = 0x00;  // type 0 (device)

// ---- BARs (all 64-bit, prefetchable, aligned to their size) --------------------------------
inline constexpr uint8_t kMmioBar = 0;
inline constexpr uint64_t kMmioBarSize = 0x2000;
inline constexpr uint8_t kNotifymapBar = 2;  // u64 notify slot per vCPU, shared memory (RW)
inline constexpr uint64_t kNotifymapSize = 0x2000;
inline constexpr uint8_t kTopologymapBar = 4;  // u16 count + u16 BDFs, shared memory (RO)
inline constexpr uint64_t kTopologymapSize = 0x2000;

// ---- BAR0 registers -----------------------------------------------------------------------
// Registers below kRegTriggerBase are u64, 8-byte aligned, accessed with len 8.
inline constexpr uint64_t kRegDttRoot = 0x00;   // GPA of the DTT root page (write-once)
inline constexpr uint64_t kRegCmd = 0x08;       // command; reads back as 0
inline constexpr uint64_t kRegDttLevel = 0x10;  // number of DTT levels (write-once)
inline constexpr uint64_t kRegSize = 8;
// One byte per vCPU from here: trigger i lives at kRegTriggerBase + i (an ioeventfd).
inline constexpr uint64_t kRegTriggerBase = 0x18;

// Values written to kRegCmd.
enum class Command : uint64_t {
    Deactivate = 0,
    Activate = 1,
    ParkUnpin = 2,
    UnparkUnpin = 3,
};

// ---- Notify map (BAR2) and topology map (BAR4) ---------------------------------------------
inline constexpr uint64_t kNotifySlotSize = sizeof(uint64_t);
inline constexpr uint64_t kMaxVcpus = kNotifymapSize / kNotifySlotSize;  // 1024
static_assert(kMaxVcpus == 1024);
static_assert(kRegTriggerBase + kMaxVcpus <= kMmioBarSize, "every vCPU trigger fits in BAR0");

inline constexpr uint64_t kTopologyEntrySize = sizeof(uint16_t);
// The count word plus n BDFs must fit: (n + 1) * 2 <= 0x2000.
inline constexpr uint64_t kMaxEndpoints = kTopologymapSize / kTopologyEntrySize - 1;  // 4095
static_assert(kMaxEndpoints == 4095);
static_assert((kMaxEndpoints + 1) * kTopologyEntrySize <= kTopologymapSize);

// ---- DMA Tracking Table --------------------------------------------------------------------
// A radix tree of 4 KiB guest pages indexed by gfn.
//   level 1 (leaf):  1024 u32 entries, index = gfn & 0x3FF
//   level L >= 2:     512 u64 entries, index = (gfn >> (10 + (L-2)*9)) & 0x1FF
inline constexpr uint64_t kDttLeafStride = 10;
inline constexpr uint64_t kDttLeafMask = (uint64_t{1} << kDttLeafStride) - 1;  // 0x3FF
inline constexpr uint64_t kDttLeafEntries = uint64_t{1} << kDttLeafStride;     // 1024
using DttLeafEntry = uint32_t;

inline constexpr uint64_t kDttUpperStride = 9;
inline constexpr uint64_t kDttUpperMask = (uint64_t{1} << kDttUpperStride) - 1;  // 0x1FF
inline constexpr uint64_t kDttUpperEntries = uint64_t{1} << kDttUpperStride;     // 512
using DttUpperEntry = uint64_t;

inline constexpr uint64_t kDttPageSize = 4096;
static_assert(kDttLeafEntries * sizeof(DttLeafEntry) == kDttPageSize);
static_assert(kDttUpperEntries * sizeof(DttUpperEntry) == kDttPageSize);

// Upper entry: bit 0 PRESENT, bits 12..63 the GPA of the next-level page.
inline constexpr uint64_t kDttEntryPresent = 1;
inline constexpr uint64_t kDttEntryPfnShift = 12;
inline constexpr uint64_t kDttEntryAddrMask = ~((uint64_t{1} << kDttEntryPfnShift) - 1);

// Leaf entry (u32, accessed atomically by guest and host).
inline constexpr uint32_t kDttePinned = uint32_t{1} << 31;    // set/cleared by the host only
inline constexpr uint32_t kDtteAccessed = uint32_t{1} << 30;  // set by the guest on every map
inline constexpr uint32_t kDtteMapCountMask = 0xFFFF;         // outstanding guest DMA mappings

// The deepest table whose index shifts stay below 64: the top level L indexes gfn bits
// [10 + 9*(L-2), 10 + 9*(L-1)); level 7 covers bits 55..63, level 8 would shift by 64 (UB in C++,
// a masked or panicking shift in Rust). Levels 1..kMaxDttLevel are valid.
inline constexpr uint64_t kMaxDttLevel = 7;

// Number of gfn bits a table of `levels` levels can index (64 means every gfn).
// Precondition: 1 <= levels <= kMaxDttLevel.
[[nodiscard]] constexpr uint64_t dtt_gfn_bits(uint64_t levels) {
    const uint64_t bits = kDttLeafStride + kDttUpperStride * (levels - 1);
    return bits > 64 ? 64 : bits;
}
static_assert(dtt_gfn_bits(1) == 10);
static_assert(dtt_gfn_bits(4) == 37);
static_assert(dtt_gfn_bits(kMaxDttLevel) == 64);
static_assert(kDttLeafStride + kDttUpperStride * (kMaxDttLevel - 2) < 64, "the top level's shift must stay below 64");

// The guest driver's choice of dtt_level for a physical address width (MAX_PHYSMEM_BITS):
// pfn_width = bits - 12; 1 level if pfn_width <= 10, else ceil((pfn_width - 10) / 9) + 1.
[[nodiscard]] constexpr uint64_t dtt_level_for_physmem_bits(uint64_t physmem_bits) {
    const uint64_t pfn_width = physmem_bits > 12 ? physmem_bits - 12 : 0;
    if (pfn_width <= kDttLeafStride) return 1;
    return (pfn_width - kDttLeafStride + kDttUpperStride - 1) / kDttUpperStride + 1;
}
static_assert(dtt_level_for_physmem_bits(46) == 4);  // x86-64 4-level paging
static_assert(dtt_level_for_physmem_bits(48) == 4);
static_assert(dtt_level_for_physmem_bits(52) == 5);  // 5-level paging

// ---- Pin requests (the u64 a vCPU writes into its notify slot) ------------------------------
// Single page: (gfn << 16) | bdf. Batch: gpa_of(PinPageInfo) | kPinPagesInBatch, where the header
// is followed by nr_pages u64 gfns.
inline constexpr uint64_t kPinPagesInBatch = uint64_t{1} << 63;
inline constexpr uint64_t kSingleBdfMask = 0xFFFF;
inline constexpr uint64_t kSingleGfnShift = 16;

struct PinPageInfo {
    uint16_t bdf;
    uint16_t pad[3];
    uint64_t nr_pages;
    // followed by uint64_t gfn[nr_pages]
};
static_assert(sizeof(PinPageInfo) == 16);
static_assert(offsetof(PinPageInfo, bdf) == 0);
static_assert(offsetof(PinPageInfo, pad) == 2);
static_assert(offsetof(PinPageInfo, nr_pages) == 8);
inline constexpr uint64_t kPinPageGfnSize = sizeof(uint64_t);

}  // namespace coiommu::core
