#include "engine/loadgen/in_process_link.h"

namespace coiommu::loadgen {

Result<std::unique_ptr<InProcessLink>> InProcessLink::create(const GuestMemory& mem, dma::DmaBackend& backend,
                                                             const workers::EngineConfig& cfg,
                                                             const device::DeviceConfig& dev_cfg) {
    auto dev = device::CoiommuDevice::create(dev_cfg);
    if (!dev) return coiommu::unexpected(with_context(dev.error(), "coiommu device"));
    auto engine = workers::Engine::create(cfg, workers::device_deps(**dev, mem, backend));
    if (!engine) return coiommu::unexpected(with_context(engine.error(), "engine"));
    (*dev)->set_engine(engine->get());
    return std::unique_ptr<InProcessLink>(new InProcessLink(std::move(*dev), std::move(*engine)));
}

InProcessLink::~InProcessLink() {
    shutdown();
    dev_->set_engine(nullptr);
}

Status InProcessLink::mmio_write(uint64_t offset, std::span<const std::byte> data) {
    dev_->mmio_write(offset, data);
    return ok();
}

Status InProcessLink::mmio_read(uint64_t offset, std::span<std::byte> data) {
    dev_->mmio_read(offset, data);
    return ok();
}

Result<telemetry::BalloonResult> InProcessLink::balloon_unpin(std::span<const workers::GfnRange> ranges) {
    return engine_->balloon_unpin(ranges);
}

Result<telemetry::StatsSnapshot> InProcessLink::stats() { return engine_->stats(); }

std::string InProcessLink::engine_description() const { return workers::to_string(engine_->config()); }

void InProcessLink::shutdown() { engine_->stop(); }

}  // namespace coiommu::loadgen
