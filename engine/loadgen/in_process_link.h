// InProcessLink: a VmLink served in this process: a device::CoiommuDevice with a workers::Engine
// behind it, over the load generator's guest memory and DMA backend.
//
// Lifetime: `mem` and `backend` are borrowed and must outlive the link.
// Thread-safety: VmLink's.
#pragma once

#include <memory>
#include <vector>

#include "engine/device/device.h"
#include "engine/dma/backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/loadgen/transport.h"
#include "engine/workers/config.h"
#include "engine/workers/engine.h"

namespace coiommu::loadgen {

class InProcessLink final : public VmLink {
public:
    // Errors: CoiommuDevice::create's and Engine::create's.
    [[nodiscard]] static Result<std::unique_ptr<InProcessLink>> create(const GuestMemory& mem, dma::DmaBackend& backend,
                                                                       const workers::EngineConfig& cfg,
                                                                       const device::DeviceConfig& dev_cfg);
    ~InProcessLink() override;
    InProcessLink(const InProcessLink&) = delete;
    InProcessLink& operator=(const InProcessLink&) = delete;

    [[nodiscard]] uint32_t vcpus() const override { return dev_->vcpus(); }
    [[nodiscard]] int notifymap_fd() const override { return dev_->notifymap_fd(); }
    [[nodiscard]] std::span<uint64_t> notify_slots() const override { return dev_->notify_slots(); }
    [[nodiscard]] int topologymap_fd() const override { return dev_->topologymap_fd(); }
    [[nodiscard]] int trigger_fd(uint32_t vcpu) const override { return dev_->trigger_fd(vcpu); }
    [[nodiscard]] Status mmio_write(uint64_t offset, std::span<const std::byte> data) override;
    [[nodiscard]] Status mmio_read(uint64_t offset, std::span<std::byte> data) override;
    [[nodiscard]] Result<bool> active() override { return dev_->active(); }
    [[nodiscard]] Result<telemetry::BalloonResult> balloon_unpin(std::span<const workers::GfnRange> ranges) override;
    [[nodiscard]] Result<telemetry::StatsSnapshot> stats() override;
    [[nodiscard]] std::string engine_description() const override;
    void shutdown() override;

    [[nodiscard]] const device::CoiommuDevice& device() const { return *dev_; }

private:
    InProcessLink(std::unique_ptr<device::CoiommuDevice> dev, std::unique_ptr<workers::Engine> engine)
        : dev_(std::move(dev)), engine_(std::move(engine)) {}

    std::unique_ptr<device::CoiommuDevice> dev_;
    std::unique_ptr<workers::Engine> engine_;
};

}  // namespace coiommu::loadgen
