// NullBackend: a container that maps nothing and says yes at once. It measures the engine alone
// (no kernel cost, no mapping state): every map is Mapped, every unmap returns the bytes asked.
// No argument is checked. It keeps only the counters and a live-entry count by calls (maps minus
// unmaps, never below zero); entry_limit is reported, never enforced.
//
// Thread-safety: lock-free; every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "engine/dma/backend.h"

namespace coiommu::dma {

class NullBackend final : public DmaBackend {
public:
    explicit NullBackend(uint64_t entry_limit = 65535) : entry_limit_(entry_limit) {}

    [[nodiscard]] Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) override;
    [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t size) override;
    [[nodiscard]] Result<ContainerInfo> info() const override;
    [[nodiscard]] uint64_t live_entries() const override { return live_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint64_t entry_limit() const override { return entry_limit_; }
    [[nodiscard]] std::string_view name() const override { return "null"; }

private:
    const uint64_t entry_limit_;
    std::atomic<uint64_t> live_{0};
};

}  // namespace coiommu::dma
