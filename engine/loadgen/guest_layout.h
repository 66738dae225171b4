// How the emulated guest lays out its RAM (one region from GPA 0):
//
//   [0, data_pages)                 data pages: every workload buffer lies here
//   [batch_base, pool_base)         one PinPageInfo buffer per vCPU (16 + 8 * batch_capacity bytes,
//                                   rounded up to pages), as the guest driver's kzalloc'd lists
//   [pool_base, end of RAM)         the DTT table-page pool (the guest's pre-filled page cache)
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>

#include "engine/base/addr.h"
#include "engine/base/result.h"

namespace coiommu::loadgen {

inline constexpr uint64_t kMinRamBytes = uint64_t{16} << 20;   // 16 MiB
inline constexpr uint64_t kMaxRamBytes = uint64_t{256} << 30;  // 256 GiB (memfd is sparse)
inline constexpr uint64_t kDttLevels = 4;                      // x86-64 4-level paging

struct GuestLayout {
    uint64_t ram_bytes = 0;
    uint64_t data_pages = 0;
    Gpa batch_base{};
    uint64_t batch_stride = 0;    // bytes per vCPU (page multiple)
    uint64_t batch_capacity = 0;  // gfns per PinPageInfo
    Gpa pool_base{};
    uint64_t pool_pages = 0;

    // Errors (EINVAL): ram_bytes outside [kMinRamBytes, kMaxRamBytes] or not a page multiple;
    // vcpus 0; batch_capacity 0; batch buffers and DTT pool leave no data page.
    [[nodiscard]] static Result<GuestLayout> compute(uint64_t ram_bytes, uint32_t vcpus, uint64_t batch_capacity);

    // Precondition: vcpu < the vcpus given to compute().
    [[nodiscard]] Gpa batch_gpa(uint32_t vcpu) const { return offset(batch_base, vcpu * batch_stride); }
};

}  // namespace coiommu::loadgen
