// virtio-iommu wire format (virtio 1.2 §5.13, crosvm's protocol.rs layout).
//
// Everything the guest driver and the device exchange is little-endian and byte-packed. The
// fields are `Le<T>` byte arrays rather than plain integers, so the structs have alignment 1,
// no padding, and decode the same on any host; the static_asserts below pin every size and
// offset to the virtio spec's layout.
//
// A request is the device-readable part `head + body` followed by the device-writable part
// `[properties (PROBE only)] + tail`. The request structs here are the bodies only (crosvm
// reads head and tail as separate payloads).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace coiommu::viommu::wire {

// A little-endian integer stored as bytes. Trivially copyable, alignment 1.
template <class T>
class Le {
    static_assert(std::is_unsigned_v<T>);

public:
    constexpr Le() = default;
    constexpr Le(T v) { set(v); }  // NOLINT(google-explicit-constructor): wire fields read as values

    [[nodiscard]] constexpr T get() const {
        T v = 0;
        for (size_t i = 0; i < sizeof(T); ++i) {
            v = static_cast<T>(v | static_cast<T>(static_cast<T>(bytes_[i]) << (8 * i)));
        }
        return v;
    }
    constexpr void set(T v) {
        for (size_t i = 0; i < sizeof(T); ++i) {
            bytes_[i] = static_cast<uint8_t>(v >> (8 * i));
        }
    }

private:
    std::array<uint8_t, sizeof(T)> bytes_{};
};
using Le16 = Le<uint16_t>;
using Le32 = Le<uint32_t>;
using Le64 = Le<uint64_t>;

// Feature bits (virtio 1.2 §5.13.3).
inline constexpr uint32_t kFeatureInputRange = 0;
inline constexpr uint32_t kFeatureDomainRange = 1;
inline constexpr uint32_t kFeatureMapUnmap = 2;
inline constexpr uint32_t kFeatureBypass = 3;
inline constexpr uint32_t kFeatureProbe = 4;
inline constexpr uint32_t kFeatureMmio = 5;

// Request types.
inline constexpr uint8_t kTypeAttach = 1;
inline constexpr uint8_t kTypeDetach = 2;
inline constexpr uint8_t kTypeMap = 3;
inline constexpr uint8_t kTypeUnmap = 4;
inline constexpr uint8_t kTypeProbe = 5;

// Status codes written into the tail.
inline constexpr uint8_t kStatusOk = 0;
inline constexpr uint8_t kStatusIoErr = 1;
inline constexpr uint8_t kStatusUnsupp = 2;
inline constexpr uint8_t kStatusDevErr = 3;
inline constexpr uint8_t kStatusInval = 4;
inline constexpr uint8_t kStatusRange = 5;
inline constexpr uint8_t kStatusNoEnt = 6;
inline constexpr uint8_t kStatusFault = 7;
inline constexpr uint8_t kStatusNoMem = 8;

// MAP flags.
inline constexpr uint32_t kMapFlagRead = 1;
inline constexpr uint32_t kMapFlagWrite = 2;
inline constexpr uint32_t kMapFlagMmio = 4;
inline constexpr uint32_t kMapFlagMask = 7;

// PROBE property types and RESV_MEM subtypes.
inline constexpr uint16_t kProbeTypeNone = 0;
inline constexpr uint16_t kProbeTypeResvMem = 1;
inline constexpr uint16_t kProbeTypeMask = 0xfff;
inline constexpr uint8_t kResvMemReserved = 0;
inline constexpr uint8_t kResvMemMsi = 1;

// The x86 MSI doorbell window every endpoint reports as reserved (inclusive bounds).
inline constexpr uint64_t kX86MsiIovaStart = 0xfee0'0000;
inline constexpr uint64_t kX86MsiIovaEnd = 0xfeef'ffff;

struct Range64 {
    Le64 start;
    Le64 end;  // inclusive
};
struct Range32 {
    Le32 start;
    Le32 end;  // inclusive
};

// Device configuration space (virtio 1.2 layout: crosvm's 36 bytes plus bypass/reserved,
// which stay zero because BYPASS_CONFIG is never offered).
struct Config {
    Le64 page_size_mask;
    Range64 input_range;
    Range32 domain_range;
    Le32 probe_size;
    uint8_t bypass = 0;
    std::array<uint8_t, 3> reserved{};
};

struct ReqHead {
    uint8_t type = 0;
    std::array<uint8_t, 3> reserved{};
};
struct ReqTail {
    uint8_t status = 0;
    std::array<uint8_t, 3> reserved{};
};

struct ReqAttach {
    Le32 domain;
    Le32 endpoint;
    std::array<uint8_t, 8> reserved{};  // virtio 1.2 puts `le32 flags` in the first 4 bytes
};
struct ReqDetach {
    Le32 domain;
    Le32 endpoint;
    std::array<uint8_t, 8> reserved{};
};
struct ReqMap {
    Le32 domain;
    Le64 virt_start;
    Le64 virt_end;  // inclusive
    Le64 phys_start;
    Le32 flags;
};
struct ReqUnmap {
    Le32 domain;
    Le64 virt_start;
    Le64 virt_end;  // inclusive
    std::array<uint8_t, 4> reserved{};
};
struct ReqProbe {
    Le32 endpoint;
    std::array<uint8_t, 64> reserved{};
};

struct ProbeProperty {
    Le16 type;
    Le16 length;  // bytes of the property after this header
};
struct ProbeResvMem {
    ProbeProperty head;
    uint8_t subtype = 0;
    std::array<uint8_t, 3> reserved{};
    Le64 start;
    Le64 end;  // inclusive
};

// The properties area PROBE needs: exactly one RESV_MEM property.
inline constexpr uint32_t kProbeSize = 24;

#define COIOMMU_WIRE_LAYOUT_(T, size)                                          \
    static_assert(sizeof(T) == (size), #T " size");                            \
    static_assert(alignof(T) == 1, #T " must be byte-aligned");                \
    static_assert(std::is_trivially_copyable_v<T>, #T " must be memcpy-able"); \
    static_assert(std::is_standard_layout_v<T>, #T " must be standard layout")

COIOMMU_WIRE_LAYOUT_(Le16, 2);
COIOMMU_WIRE_LAYOUT_(Le32, 4);
COIOMMU_WIRE_LAYOUT_(Le64, 8);
COIOMMU_WIRE_LAYOUT_(Range64, 16);
COIOMMU_WIRE_LAYOUT_(Range32, 8);
COIOMMU_WIRE_LAYOUT_(Config, 40);
COIOMMU_WIRE_LAYOUT_(ReqHead, 4);
COIOMMU_WIRE_LAYOUT_(ReqTail, 4);
COIOMMU_WIRE_LAYOUT_(ReqAttach, 16);
COIOMMU_WIRE_LAYOUT_(ReqDetach, 16);
COIOMMU_WIRE_LAYOUT_(ReqMap, 32);
COIOMMU_WIRE_LAYOUT_(ReqUnmap, 24);
COIOMMU_WIRE_LAYOUT_(ReqProbe, 68);
COIOMMU_WIRE_LAYOUT_(ProbeProperty, 4);
COIOMMU_WIRE_LAYOUT_(ProbeResvMem, 24);
#undef COIOMMU_WIRE_LAYOUT_

static_assert(offsetof(Config, input_range) == 8);
static_assert(offsetof(Config, domain_range) == 24);
static_assert(offsetof(Config, probe_size) == 32);
static_assert(offsetof(Config, bypass) == 36);
static_assert(offsetof(ReqAttach, endpoint) == 4);
static_assert(offsetof(ReqAttach, reserved) == 8);
static_assert(offsetof(ReqDetach, endpoint) == 4);
static_assert(offsetof(ReqMap, virt_start) == 4);
static_assert(offsetof(ReqMap, virt_end) == 12);
static_assert(offsetof(ReqMap, phys_start) == 20);
static_assert(offsetof(ReqMap, flags) == 28);
static_assert(offsetof(ReqUnmap, virt_start) == 4);
static_assert(offsetof(ReqUnmap, virt_end) == 12);
static_assert(offsetof(ReqUnmap, reserved) == 20);
static_assert(offsetof(ReqProbe, reserved) == 4);
static_assert(offsetof(ProbeResvMem, subtype) == 4);
static_assert(offsetof(ProbeResvMem, start) == 8);
static_assert(offsetof(ProbeResvMem, end) == 16);
static_assert(sizeof(ProbeResvMem) == kProbeSize);

}  // namespace coiommu::viommu::wire
