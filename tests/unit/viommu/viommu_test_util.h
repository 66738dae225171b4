// Helpers for the virtio-iommu request-layer tests: request builders and a scriptable mapper.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <vector>

#include "engine/viommu/basic_mapper.h"
#include "engine/viommu/viommu_device.h"
#include "engine/viommu/protocol.h"

namespace coiommu::viommu::testutil {

template <class Body>
std::vector<std::byte> request(uint8_t type, const Body& body) {
    std::vector<std::byte> out(sizeof(wire::ReqHead) + sizeof(Body));
    wire::ReqHead head;
    head.type = type;
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

inline wire::ReqAttach attach_body(uint32_t domain, uint32_t endpoint) {
    wire::ReqAttach b;
    b.domain = domain;
    b.endpoint = endpoint;
    return b;
}
inline wire::ReqDetach detach_body(uint32_t domain, uint32_t endpoint) {
    wire::ReqDetach b;
    b.domain = domain;
    b.endpoint = endpoint;
    return b;
}
inline wire::ReqMap map_body(uint32_t domain, uint64_t virt_start, uint64_t virt_end, uint64_t phys_start,
                             uint32_t flags) {
    wire::ReqMap b;
    b.domain = domain;
    b.virt_start = virt_start;
    b.virt_end = virt_end;
    b.phys_start = phys_start;
    b.flags = flags;
    return b;
}
inline wire::ReqUnmap unmap_body(uint32_t domain, uint64_t virt_start, uint64_t virt_end) {
    wire::ReqUnmap b;
    b.domain = domain;
    b.virt_start = virt_start;
    b.virt_end = virt_end;
    return b;
}
inline wire::ReqProbe probe_body(uint32_t endpoint) {
    wire::ReqProbe b;
    b.endpoint = endpoint;
    return b;
}

inline constexpr uint8_t kUntouched = 0xa5;  // fill of writable buffers, to see what was written
inline constexpr uint8_t kFailed = 0xff;     // "status" of a request handle() rejected

// Sends one request with a writable part of `writable_len` bytes. Returns the tail's status,
// or kFailed when handle() returned an error (then checks nothing was written).
inline uint8_t send(ViommuDevice& dev, const std::vector<std::byte>& req, size_t writable_len = sizeof(wire::ReqTail)) {
    std::vector<std::byte> w(writable_len, std::byte{kUntouched});
    auto used = dev.handle(req, w);
    if (!used) {
        for (std::byte b : w) EXPECT_EQ(b, std::byte{kUntouched}) << "a failed request wrote its buffer";
        return kFailed;
    }
    EXPECT_GE(*used, sizeof(wire::ReqTail));
    EXPECT_LE(*used, writable_len);
    if (*used < sizeof(wire::ReqTail) || *used > writable_len) return kFailed;
    return static_cast<uint8_t>(w[*used - sizeof(wire::ReqTail)]);
}

inline uint8_t attach(ViommuDevice& dev, uint32_t domain, uint32_t endpoint) {
    return send(dev, request(wire::kTypeAttach, attach_body(domain, endpoint)));
}
inline uint8_t detach(ViommuDevice& dev, uint32_t domain, uint32_t endpoint) {
    return send(dev, request(wire::kTypeDetach, detach_body(domain, endpoint)));
}
inline uint8_t map(ViommuDevice& dev, uint32_t domain, uint64_t virt_start, uint64_t virt_end, uint64_t phys,
                   uint32_t flags = wire::kMapFlagRead | wire::kMapFlagWrite) {
    return send(dev, request(wire::kTypeMap, map_body(domain, virt_start, virt_end, phys, flags)));
}
inline uint8_t unmap(ViommuDevice& dev, uint32_t domain, uint64_t virt_start, uint64_t virt_end) {
    return send(dev, request(wire::kTypeUnmap, unmap_body(domain, virt_start, virt_end)));
}

// A mapper with a scripted identity and behaviour, storing mappings in a BasicMemoryMapper.
class TestMapper final : public MemoryMapper {
public:
    struct Options {
        uint32_t id = 1000;
        bool detach = true;
        uint64_t mask = ~uint64_t{0};
    };
    explicit TestMapper(Options o) : o_(o), inner_(o.mask) {}

    [[nodiscard]] Result<AddMapResult> add_map(const MappingInfo& map) override {
        add_calls.fetch_add(1);
        gate();
        if (int e = fail_add.exchange(0); e != 0) return make_error(e, "injected add_map failure");
        return inner_.add_map(map);
    }
    [[nodiscard]] Result<RemoveMapResult> remove_map(Iova iova, uint64_t size) override {
        if (int e = fail_remove.exchange(0); e != 0) return make_error(e, "injected remove_map failure");
        return inner_.remove_map(iova, size);
    }
    [[nodiscard]] Result<uint64_t> get_mask() const override { return o_.mask; }
    [[nodiscard]] bool supports_detach() const override { return o_.detach; }
    [[nodiscard]] EventFd reset_domain() override {
        resets.fetch_add(1);
        return inner_.reset_domain();
    }
    [[nodiscard]] uint32_t id() const override { return o_.id; }
    [[nodiscard]] Result<AddMapResult> vfio_dma_map(Iova iova, Hva hva, uint64_t size, Prot prot) override {
        std::lock_guard lock(mu_);
        dma_maps.push_back({iova, hva, size, prot});
        return AddMapResult::Ok;
    }

    [[nodiscard]] size_t size() const { return inner_.size(); }

    // Makes the next add_map block inside the mapper until open() is called.
    void close_gate() {
        std::lock_guard lock(mu_);
        gate_closed_ = true;
    }
    void open_gate() {
        {
            std::lock_guard lock(mu_);
            gate_closed_ = false;
        }
        cv_.notify_all();
    }
    // Waits until a call is blocked at the gate.
    void wait_blocked() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return blocked_ > 0; });
    }

    struct DmaMap {
        Iova iova;
        Hva hva;
        uint64_t size;
        Prot prot;
    };
    std::vector<DmaMap> dma_maps;
    std::atomic<int> fail_add{0};
    std::atomic<int> fail_remove{0};
    std::atomic<int> add_calls{0};
    std::atomic<int> resets{0};

private:
    void gate() {
        std::unique_lock lock(mu_);
        if (!gate_closed_) return;
        ++blocked_;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !gate_closed_; });
        --blocked_;
    }

    const Options o_;
    BasicMemoryMapper inner_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool gate_closed_ = false;
    int blocked_ = 0;
};

}  // namespace coiommu::viommu::testutil
