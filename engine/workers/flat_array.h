// FlatArray<T>: a zero-initialised per-gfn array in an anonymous MAP_PRIVATE|MAP_NORESERVE mapping.
// Only pages holding touched elements are committed (one 4 KiB page of u32 covers 4 MiB of guest
// RAM), so a table over a 1 TiB guest costs nothing until it is used. Move-only RAII.
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "engine/base/addr.h"
#include "engine/base/result.h"

namespace coiommu::workers {

template <class T>
class FlatArray {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    // Errors: EINVAL for 0 elements; EOVERFLOW; mmap's errno.
    [[nodiscard]] static Result<FlatArray> create(uint64_t count) {
        if (count == 0) return make_error(EINVAL, "flat array of zero elements");
        uint64_t bytes = 0;
        if (__builtin_mul_overflow(count, sizeof(T), &bytes) || __builtin_add_overflow(bytes, kPageMask, &bytes)) {
            return make_error(EOVERFLOW, fmt::format("flat array of {:#x} elements", count));
        }
        bytes &= ~kPageMask;
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return make_error(errno, fmt::format("mmap flat array of {:#x} bytes", bytes));
        return FlatArray(static_cast<T*>(p), count, bytes);
    }

    FlatArray() = default;
    ~FlatArray() { reset(); }
    FlatArray(FlatArray&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)),
          count_(std::exchange(o.count_, 0)),
          bytes_(std::exchange(o.bytes_, 0)) {}
    FlatArray& operator=(FlatArray&& o) noexcept {
        if (this != &o) {
            reset();
            data_ = std::exchange(o.data_, nullptr);
            count_ = std::exchange(o.count_, 0);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    FlatArray(const FlatArray&) = delete;
    FlatArray& operator=(const FlatArray&) = delete;

    [[nodiscard]] T* data() const { return data_; }
    [[nodiscard]] uint64_t size() const { return count_; }
    // Precondition: i < size().
    [[nodiscard]] T& operator[](uint64_t i) const { return data_[i]; }

private:
    FlatArray(T* data, uint64_t count, uint64_t bytes) : data_(data), count_(count), bytes_(bytes) {}
    void reset() {
        if (data_ != nullptr) ::munmap(data_, bytes_);
        data_ = nullptr;
        count_ = 0;
        bytes_ = 0;
    }

    T* data_ = nullptr;
    uint64_t count_ = 0;
    uint64_t bytes_ = 0;
};

}  // namespace coiommu::workers
