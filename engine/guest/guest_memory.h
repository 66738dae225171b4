// Guest memory: the VM's RAM as this process sees it.
//
// Each region is a memfd (so the VMM, the daemon and tests can map the same pages) with a GPA
// base and a size, mapped MAP_SHARED into this process. Regions never overlap and are kept
// sorted by GPA.
//
// Everything here treats guest memory as hostile and concurrently modified:
//  - translate() succeeds only when the whole [gpa, gpa+len) lies inside one region;
//  - read_obj/write_obj copy with memcpy after the bounds check; the guest may change the bytes
//    at any time, so a value read is a snapshot and must be validated by the caller;
//  - atomic_u32() hands out a GuestAtomicU32 for a naturally aligned guest word (the DTT leaf),
//    and every operation on it names its memory order.
//
// Thread-safety: after create()/adopt() the object is immutable; every const method may be
// called from any thread. Move-only (it owns the mappings and the fds).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/domain.h"
#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu {

struct RegionSpec {
    Gpa base{};
    uint64_t size = 0;  // bytes; non-zero, a multiple of 4 KiB
};

// A region handed over by another process (e.g. the VMM over SCM_RIGHTS).
struct AdoptedRegion {
    Gpa base{};
    uint64_t size = 0;
    UniqueFd fd;
    uint64_t fd_offset = 0;  // page aligned
};

// What another process needs to map a region: a borrowed fd (valid while the GuestMemory
// lives; dup it to keep it longer) and the layout.
struct RegionLayout {
    Gpa base{};
    uint64_t size = 0;
    int fd = -1;
    uint64_t fd_offset = 0;
};

// A 32-bit guest word accessed atomically. The guest accesses the same word with its own
// atomic instructions (lock cmpxchg / lock or / lock xadd on x86), so every operation here is
// a real atomic RMW or load/store on naturally aligned memory, and names its memory order.
class GuestAtomicU32 {
public:
    GuestAtomicU32() = default;
    // Precondition: p is 4-byte aligned and points into a live guest mapping.
    explicit GuestAtomicU32(uint32_t* p) : p_(p) {}

    [[nodiscard]] uint32_t load(std::memory_order mo) const { return ref().load(mo); }
    void store(uint32_t v, std::memory_order mo) const { ref().store(v, mo); }
    uint32_t fetch_or(uint32_t v, std::memory_order mo) const { return ref().fetch_or(v, mo); }
    uint32_t fetch_and(uint32_t v, std::memory_order mo) const { return ref().fetch_and(v, mo); }
    uint32_t fetch_add(uint32_t v, std::memory_order mo) const { return ref().fetch_add(v, mo); }
    uint32_t fetch_sub(uint32_t v, std::memory_order mo) const { return ref().fetch_sub(v, mo); }
    // On failure `expected` receives the current value.
    bool compare_exchange(uint32_t& expected, uint32_t desired, std::memory_order mo) const {
        return ref().compare_exchange_strong(expected, desired, mo, std::memory_order_relaxed);
    }

    [[nodiscard]] uint32_t* address() const { return p_; }
    [[nodiscard]] bool valid() const { return p_ != nullptr; }

private:
    [[nodiscard]] std::atomic_ref<uint32_t> ref() const { return std::atomic_ref<uint32_t>(*p_); }
    uint32_t* p_ = nullptr;
};

// The same for a 64-bit guest word (notify slots, DTT upper-level entries).
class GuestAtomicU64 {
public:
    GuestAtomicU64() = default;
    explicit GuestAtomicU64(uint64_t* p) : p_(p) {}

    [[nodiscard]] uint64_t load(std::memory_order mo) const { return ref().load(mo); }
    void store(uint64_t v, std::memory_order mo) const { ref().store(v, mo); }
    bool compare_exchange(uint64_t& expected, uint64_t desired, std::memory_order mo) const {
        return ref().compare_exchange_strong(expected, desired, mo, std::memory_order_relaxed);
    }
    [[nodiscard]] uint64_t* address() const { return p_; }
    [[nodiscard]] bool valid() const { return p_ != nullptr; }

private:
    [[nodiscard]] std::atomic_ref<uint64_t> ref() const { return std::atomic_ref<uint64_t>(*p_); }
    uint64_t* p_ = nullptr;
};

class GuestMemory {
public:
    struct Region {
        Gpa base{};
        uint64_t size = 0;
        std::byte* host = nullptr;  // this process's mapping of the region
        UniqueFd fd;
        uint64_t fd_offset = 0;
    };

    // Creates memfd-backed regions (sealed against shrinking) and maps them.
    // Errors: EINVAL for an empty list, a zero or unaligned size or base, overlapping regions;
    // EOVERFLOW when base + size exceeds 2^64; errno of memfd_create/ftruncate/mmap.
    [[nodiscard]] static Result<GuestMemory> create(std::span<const RegionSpec> regions);

    // Maps regions whose fds came from another process. Same validation as create(), plus
    // EINVAL when an fd is smaller than fd_offset + size.
    [[nodiscard]] static Result<GuestMemory> adopt(std::vector<AdoptedRegion> regions);

    GuestMemory() = default;
    ~GuestMemory();
    GuestMemory(GuestMemory&&) noexcept;
    GuestMemory& operator=(GuestMemory&&) noexcept;
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;

    // Host address of [gpa, gpa+len). Errors: EFAULT when the range is not wholly inside one
    // region (including len == 0 at a gap, and gpa+len overflow).
    [[nodiscard]] Result<Hva> translate(Gpa gpa, uint64_t len) const;
    // Same, as a pointer.
    [[nodiscard]] Result<std::byte*> host_ptr(Gpa gpa, uint64_t len) const;
    // Whether [gpa, gpa+len) lies in one region.
    [[nodiscard]] bool contains(Gpa gpa, uint64_t len) const;

    // Bounds-checked copy of a trivially copyable object from / to guest memory.
    template <class T>
    [[nodiscard]] Result<T> read_obj(Gpa gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        auto p = host_ptr(gpa, sizeof(T));
        if (!p) return coiommu::unexpected(p.error());
        T out;
        std::memcpy(&out, *p, sizeof(T));
        return out;
    }
    template <class T>
    [[nodiscard]] Status write_obj(Gpa gpa, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        auto p = host_ptr(gpa, sizeof(T));
        if (!p) return coiommu::unexpected(p.error());
        std::memcpy(*p, &value, sizeof(T));
        return ok();
    }

    // Atomic views of a naturally aligned guest word. Errors: EINVAL when unaligned, EFAULT
    // when outside guest RAM.
    [[nodiscard]] Result<GuestAtomicU32> atomic_u32(Gpa gpa) const;
    [[nodiscard]] Result<GuestAtomicU64> atomic_u64(Gpa gpa) const;

    [[nodiscard]] std::span<const Region> regions() const { return regions_; }
    [[nodiscard]] std::vector<RegionLayout> layout() const;
    // Sum of region sizes.
    [[nodiscard]] uint64_t total_bytes() const { return total_bytes_; }
    // One past the highest guest-physical address backed by a region (0 when empty).
    [[nodiscard]] Gpa end() const { return end_; }
    // Number of gfns below end(): the size of a flat per-gfn table.
    [[nodiscard]] uint64_t gfn_span() const { return raw(end_) >> kPageShift; }
    // Each region as the gfn range it covers, ascending (the RAM a host record is checked against).
    [[nodiscard]] std::vector<GfnRange> ram_ranges() const;

private:
    [[nodiscard]] static Result<GuestMemory> map_all(std::vector<Region> regions);
    [[nodiscard]] const Region* find(Gpa gpa) const;
    void unmap_all();

    std::vector<Region> regions_;
    uint64_t total_bytes_ = 0;
    Gpa end_{};
};

}  // namespace coiommu
