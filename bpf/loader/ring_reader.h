// RingReader: consumes a BPF ring buffer map, handing each record to a callback.
// Single consumer: poll()/consume() from one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>

#include "engine/base/result.h"

struct ring_buffer;

namespace coiommu::bpf {

class RingReader {
public:
    using Callback = std::function<void(std::span<const std::byte> record)>;

    RingReader() = default;
    ~RingReader();
    RingReader(const RingReader&) = delete;
    RingReader& operator=(const RingReader&) = delete;
    RingReader(RingReader&& other) noexcept;
    RingReader& operator=(RingReader&& other) noexcept;

    [[nodiscard]] static Result<RingReader> open(int map_fd, Callback callback);

    // Waits up to `timeout` for records and consumes all available ones; returns how many.
    // A signal interrupting the wait yields Error{EINTR}.
    [[nodiscard]] Result<int> poll(std::chrono::milliseconds timeout);
    // Consumes what is available without waiting.
    [[nodiscard]] Result<int> consume();
    // An epoll fd that becomes readable when records arrive (for an external event loop).
    [[nodiscard]] int epoll_fd() const;

private:
    ring_buffer* rb_ = nullptr;
    std::unique_ptr<Callback> callback_;  // stable address: libbpf keeps a pointer to it
};

}  // namespace coiommu::bpf
