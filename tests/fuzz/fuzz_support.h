// What every libFuzzer target in tests/fuzz shares: a byte reader for the input, the matching
// writer its seed generator uses, the invariant check that aborts, and the seed-writing hook.
//
// Input encoding: little-endian fixed-width fields read front to back; a field past the end of
// the input reads as zeros (Reader::exhausted() says when), so every byte string is a valid
// input and the seeds written by SeedWriter read back field for field.
//
// Seeds: each target writes its own seed corpus from the same encoder its decoder reads, when
// COIOMMU_FUZZ_WRITE_SEEDS=DIR is set (LLVMFuzzerInitialize calls write_seeds_if_asked(); the
// program exits after writing). scripts/fuzz.sh --write-seeds regenerates tests/fuzz/corpus/.
//
// Thread-safety: plain values; a target runs one input at a time.
#pragma once

#include <dirent.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/log.h"

namespace coiommu::fuzz {

// An invariant of the code under test failed: print what, then abort so that libFuzzer saves the
// input as a crash (a plain abort() would do too; the trap keeps the frame in the report).
[[noreturn]] inline void fail(const char* what, const char* file, int line) {
    std::fprintf(stderr, "fuzz invariant violated at %s:%d: %s\n", file, line, what);
    std::fflush(stderr);
    __builtin_trap();
}
#define FUZZ_CHECK(cond)                                               \
    do {                                                               \
        if (!(cond)) ::coiommu::fuzz::fail(#cond, __FILE__, __LINE__); \
    } while (0)

class Reader {
public:
    explicit Reader(std::span<const uint8_t> data) : data_(data) {}

    [[nodiscard]] bool exhausted() const { return pos_ >= data_.size(); }
    [[nodiscard]] std::size_t remaining() const { return exhausted() ? 0 : data_.size() - pos_; }

    template <class T>
    [[nodiscard]] T get() {
        static_assert(std::is_trivially_copyable_v<T>);
        T v{};
        const std::size_t n = std::min(sizeof(T), remaining());
        if (n > 0) std::memcpy(&v, data_.data() + pos_, n);
        pos_ += sizeof(T);
        return v;
    }
    [[nodiscard]] uint8_t u8() { return get<uint8_t>(); }
    [[nodiscard]] uint16_t u16() { return get<uint16_t>(); }
    [[nodiscard]] uint32_t u32() { return get<uint32_t>(); }
    [[nodiscard]] uint64_t u64() { return get<uint64_t>(); }
    // Up to `n` bytes (fewer at the end of the input).
    [[nodiscard]] std::span<const uint8_t> bytes(std::size_t n) {
        const std::size_t k = std::min(n, remaining());
        auto out = data_.subspan(exhausted() ? data_.size() : pos_, k);
        pos_ += n;
        return out;
    }
    [[nodiscard]] std::string_view text(std::size_t n) {
        auto b = bytes(n);
        return {reinterpret_cast<const char*>(b.data()), b.size()};
    }

private:
    std::span<const uint8_t> data_;
    std::size_t pos_ = 0;
};

// Builds an input field by field (the seeds).
class SeedWriter {
public:
    template <class T>
    SeedWriter& put(const T& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        out_.insert(out_.end(), p, p + sizeof(T));
        return *this;
    }
    SeedWriter& u8(uint8_t v) { return put(v); }
    SeedWriter& u16(uint16_t v) { return put(v); }
    SeedWriter& u32(uint32_t v) { return put(v); }
    SeedWriter& u64(uint64_t v) { return put(v); }
    SeedWriter& bytes(std::span<const uint8_t> b) {
        out_.insert(out_.end(), b.begin(), b.end());
        return *this;
    }
    SeedWriter& text(std::string_view s) {
        out_.insert(out_.end(), s.begin(), s.end());
        return *this;
    }
    [[nodiscard]] const std::vector<uint8_t>& data() const { return out_; }

private:
    std::vector<uint8_t> out_;
};

using SeedSink = std::function<void(std::string_view name, const std::vector<uint8_t>& bytes)>;

// When COIOMMU_FUZZ_WRITE_SEEDS names a directory: calls `make` with a sink that writes each
// seed to DIR/NAME, then exits (0, or 1 when a file could not be written). Otherwise returns.
inline void write_seeds_if_asked(const std::function<void(const SeedSink&)>& make) {
    const char* dir = std::getenv("COIOMMU_FUZZ_WRITE_SEEDS");
    if (dir == nullptr || *dir == '\0') return;
    int status = 0;
    int written = 0;
    make([&](std::string_view name, const std::vector<uint8_t>& bytes) {
        const std::string path = std::string(dir) + "/" + std::string(name);
        std::FILE* f = std::fopen(path.c_str(), "wb");
        if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
            std::fprintf(stderr, "cannot write seed %s\n", path.c_str());
            status = 1;
        }
        if (f != nullptr) std::fclose(f);
        ++written;
    });
    std::fprintf(stderr, "wrote %d seeds to %s\n", written, dir);
    std::exit(status);
}

// COIOMMU_FUZZ_TRACE=1: the targets print what each step did (to check what a seed reaches).
inline bool tracing() {
    static const bool on = [] {
        const char* v = std::getenv("COIOMMU_FUZZ_TRACE");
        return v != nullptr && *v == '1';
    }();
    return on;
}
#define FUZZ_TRACE(...)                                                    \
    do {                                                                   \
        if (::coiommu::fuzz::tracing()) std::fprintf(stderr, __VA_ARGS__); \
    } while (0)

// Every target runs with logging off (unless tracing): the code under test logs each refused input, and a
// formatted line per input would dominate the run time.
inline void quiet_logs() { log::set_level(tracing() ? log::Level::Debug : log::Level::Off); }

// Open descriptors of this process (a target checks that an input leaves none behind), -1 when
// /proc/self/fd cannot be read.
inline int open_fd_count() {
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return -1;
    int n = 0;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    return n - 1;  // the directory's own descriptor
}

}  // namespace coiommu::fuzz

// The two libFuzzer entry points of a target, after its namespace coiommu::fuzz has defined
// `void make_seeds(const SeedSink&)` and `int run_one(std::span<const uint8_t>)` (one input).
#define COIOMMU_FUZZ_ENTRY_POINTS()                                           \
    extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {    \
        coiommu::fuzz::quiet_logs();                                          \
        coiommu::fuzz::write_seeds_if_asked(coiommu::fuzz::make_seeds);       \
        return 0;                                                             \
    }                                                                         \
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
        return coiommu::fuzz::run_one(std::span<const uint8_t>(data, size));  \
    }
