#include "bpf/loader/ring_reader.h"

#include <bpf/libbpf.h>

#include <cerrno>
#include <climits>
#include <utility>

#include "bpf/loader/privileges.h"

namespace coiommu::bpf {

namespace {

int on_record(void* ctx, void* data, size_t size) {
    auto* cb = static_cast<RingReader::Callback*>(ctx);
    (*cb)(std::span<const std::byte>(static_cast<const std::byte*>(data), size));
    return 0;
}

}  // namespace

RingReader::~RingReader() {
    if (rb_ != nullptr) ring_buffer__free(rb_);
}

RingReader::RingReader(RingReader&& other) noexcept
    : rb_(std::exchange(other.rb_, nullptr)), callback_(std::move(other.callback_)) {}

RingReader& RingReader::operator=(RingReader&& other) noexcept {
    if (this != &other) {
        if (rb_ != nullptr) ring_buffer__free(rb_);
        rb_ = std::exchange(other.rb_, nullptr);
        callback_ = std::move(other.callback_);
    }
    return *this;
}

Result<RingReader> RingReader::open(int map_fd, Callback callback) {
    RingReader r;
    r.callback_ = std::make_unique<Callback>(std::move(callback));
    errno = 0;
    r.rb_ = ring_buffer__new(map_fd, on_record, r.callback_.get(), nullptr);
    if (r.rb_ == nullptr) {
        const int err = errno;
        return coiommu::unexpected(bpf_error(err != 0 ? err : EINVAL, "open ring buffer"));
    }
    return r;
}

Result<int> RingReader::poll(std::chrono::milliseconds timeout) {
    const auto ms = timeout.count() > INT_MAX ? INT_MAX : static_cast<int>(timeout.count());
    const int n = ring_buffer__poll(rb_, ms);
    if (n < 0) return make_error(-n, "poll ring buffer");
    return n;
}

Result<int> RingReader::consume() {
    const int n = ring_buffer__consume(rb_);
    if (n < 0) return make_error(-n, "consume ring buffer");
    return n;
}

int RingReader::epoll_fd() const { return ring_buffer__epoll_fd(rb_); }

}  // namespace coiommu::bpf
