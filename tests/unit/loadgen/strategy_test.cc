// The three strategies against a FakeBackend (no latency), one behaviour each, plus the guest RAM
// layout, the virtio-iommu queue and the TSC clock they rely on.
#include "engine/loadgen/strategy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <thread>

#include "engine/dma/fake_backend.h"
#include "engine/loadgen/guest_layout.h"
#include "engine/loadgen/in_process_link.h"
#include "engine/loadgen/tsc_clock.h"
#include "engine/loadgen/viommu_queue.h"
#include "engine/viommu/viommu_device.h"
#include "engine/viommu/vfio_mapper.h"
#include "engine/workers/config.h"
#include "tests/testing/expect.h"

namespace coiommu::loadgen {
namespace {

constexpr uint64_t kRam = uint64_t{32} << 20;
constexpr uint32_t kVcpus = 2;
constexpr uint32_t kOutstanding = 4;
constexpr uint32_t kPages = 8;
constexpr uint16_t kBdf = 0x0018;
constexpr uint64_t kPage = kPageSize;

// Guest RAM, its layout and a FakeBackend, as the run driver sets them up.
class Guest {
public:
    Guest()
        : layout_(GuestLayout::compute(kRam, kVcpus, kPages).value()), mem_(make_mem()), backend_(dma::FakeConfig{}) {
        env_.mem = &mem_;
        env_.layout = &layout_;
        env_.backend = &backend_;
        env_.vcpus = kVcpus;
        env_.max_outstanding = kOutstanding;
        env_.max_buffer_pages = kPages;
        env_.timeout = std::chrono::seconds(5);
    }

    [[nodiscard]] const StrategyEnv& env() const { return env_; }
    [[nodiscard]] dma::FakeBackend& backend() { return backend_; }
    [[nodiscard]] const GuestMemory& mem() const { return mem_; }
    [[nodiscard]] const GuestLayout& layout() const { return layout_; }

    [[nodiscard]] Result<std::unique_ptr<Strategy>> coiommu(workers::Variant v = workers::Variant::Fast) {
        workers::EngineConfig cfg;
        cfg.variant = v;
        device::DeviceConfig dc;
        dc.endpoints = {kBdf};
        dc.vcpus = kVcpus;
        auto link = InProcessLink::create(mem_, backend_, cfg, dc);
        if (!link) return coiommu::unexpected(link.error());
        return make_coiommu_strategy(env_, std::move(*link));
    }

private:
    static GuestMemory make_mem() {
        const RegionSpec r{Gpa{0}, kRam};
        return GuestMemory::create(std::span<const RegionSpec>(&r, 1)).value();
    }

    GuestLayout layout_;
    GuestMemory mem_;
    dma::FakeBackend backend_;
    StrategyEnv env_;
};

constexpr Buffer kBuf{Gfn{0x100}, kPages};
constexpr Iova kBufIova{0x100 * kPageSize};

// ---- guest layout -----------------------------------------------------------------------------------

TEST(GuestLayout, PutsBatchBuffersAndTheDttPoolAboveTheDataPages) {
    const GuestLayout l = GuestLayout::compute(kRam, 4, 1024).value();
    EXPECT_EQ(raw(l.batch_base), l.data_pages * kPage);
    EXPECT_EQ(l.batch_stride, 3 * kPage);  // 16 + 8 * 1024 bytes rounded up to pages
    EXPECT_EQ(raw(l.batch_gpa(3)) + l.batch_stride, raw(l.pool_base));
    EXPECT_EQ(raw(l.pool_base) + l.pool_pages * kPage, kRam);
}

TEST(GuestLayout, PoolCoversEveryLeafTable) {
    const GuestLayout l = GuestLayout::compute(uint64_t{4} << 30, 2, 16).value();
    EXPECT_GE(l.pool_pages, (uint64_t{4} << 30) / kPage / 1024 + 3);
}

TEST(GuestLayout, RejectsRamOutsideTheLimits) {
    EXPECT_ERR(GuestLayout::compute(kMinRamBytes - kPage, 1, 16), EINVAL);
    EXPECT_ERR(GuestLayout::compute(kMaxRamBytes + kPage, 1, 16), EINVAL);
    EXPECT_ERR(GuestLayout::compute(kRam + 1, 1, 16), EINVAL);
}

TEST(GuestLayout, RejectsBatchBuffersThatEatAllRam) {
    EXPECT_ERR(GuestLayout::compute(kMinRamBytes, 1024, 4096), EINVAL);
}

// ---- static ------------------------------------------------------------------------------------------

TEST(StaticStrategy, MapsAllGuestRamWithOneEntry) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_static_strategy(g.env()));
    EXPECT_EQ(g.backend().live_entries(), 1u);
    EXPECT_TRUE(g.backend().is_mapped(Iova{0}, kRam));
}

TEST(StaticStrategy, BufferMapIsFreeAndIdentity) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_static_strategy(g.env()));
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    const MapStatus st = v->map(kBuf, 0, &iova);
    EXPECT_TRUE(st.ok);
    EXPECT_FALSE(st.notified);
    EXPECT_EQ(iova, kBufIova);
    EXPECT_EQ(g.backend().counters().map_calls.load(), 1u);  // only the setup map
}

TEST(StaticStrategy, ShutdownUnmapsGuestRam) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_static_strategy(g.env()));
    s->shutdown();
    EXPECT_EQ(g.backend().live_entries(), 0u);
}

TEST(StaticStrategy, BalloonCannotTakePagesBack) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_static_strategy(g.env()));
    const GfnRange r{Gfn{0}, 16};
    ASSERT_OK_AND_ASSIGN(auto out, s->balloon(std::span(&r, 1)));
    EXPECT_EQ(out, telemetry::BalloonResult::Failed);
}

TEST(StaticStrategy, FailsWhenGuestRamIsAlreadyMapped) {
    Guest g;
    ASSERT_TRUE(g.backend().map(Iova{0}, Hva{0x10000000}, kPage, dma::Prot::ReadWrite).has_value());
    EXPECT_ERR(make_static_strategy(g.env()), EEXIST);
}

// ---- strict ------------------------------------------------------------------------------------------

TEST(StrictStrategy, EachOutstandingSlotHasItsOwnIova) {
    Guest g;
    EXPECT_EQ(strict_iova(g.env(), 0, 0), Iova{kStrictIovaBase});
    EXPECT_EQ(raw(strict_iova(g.env(), 0, 1)) - raw(strict_iova(g.env(), 0, 0)), kPages * kPage);
    EXPECT_EQ(raw(strict_iova(g.env(), 1, 0)) - raw(strict_iova(g.env(), 0, 0)), kOutstanding * kPages * kPage);
}

TEST(StrictStrategy, MapBecomesOneBackendMappingAtTheSlotIova) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_strict_strategy(g.env()));
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(1));
    Iova iova{};
    const MapStatus st = v->map(kBuf, 2, &iova);
    ASSERT_TRUE(st.ok);
    EXPECT_TRUE(st.notified);
    EXPECT_EQ(iova, strict_iova(g.env(), 1, 2));
    auto m = g.backend().find(iova);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->size, kPages * kPage);
    EXPECT_EQ(raw(m->hva), raw(g.mem().translate(Gpa{0x100 * kPage}, kPage).value()));
}

TEST(StrictStrategy, UnmapRemovesTheMapping) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_strict_strategy(g.env()));
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    EXPECT_EQ(v->unmap(kBuf, iova), std::nullopt);
    EXPECT_EQ(g.backend().live_entries(), 0u);
    EXPECT_EQ(v->notifications(), 2u);  // one MAP, one UNMAP request
}

TEST(StrictStrategy, OverlappingMapIsRefusedWithAStatus) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, make_strict_strategy(g.env()));
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    const MapStatus again = v->map(kBuf, 0, &iova);
    EXPECT_FALSE(again.ok);
    EXPECT_EQ(again.failure, MapFailure::IommuStatus);
}

TEST(StrictStrategy, RejectsMoreOutstandingBuffersThanTheIovaSpaceHolds) {
    Guest g;
    StrategyEnv env = g.env();
    env.vcpus = 1024;
    env.max_outstanding = 4096;
    env.max_buffer_pages = 4096;  // 1024 x 4096 x 16 MiB = 64 PiB of IOVA
    EXPECT_ERR(make_strict_strategy(env), EINVAL);
}

// ---- coiommu -----------------------------------------------------------------------------------------

TEST(CoiommuStrategy, ActivatesTheDeviceThroughBar0) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    EXPECT_NE(s->description().find("variant=fast"), std::string::npos);
}

TEST(CoiommuStrategy, FirstMapSendsAPinRequestAndPinsEveryPage) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    const MapStatus st = v->map(kBuf, 0, &iova);
    ASSERT_TRUE(st.ok);
    EXPECT_TRUE(st.notified);
    EXPECT_EQ(st.requested, kPages);
    EXPECT_EQ(iova, kBufIova);
    EXPECT_TRUE(g.backend().is_mapped(kBufIova, kPages * kPage));
}

TEST(CoiommuStrategy, MapOfPinnedPagesSendsNothing) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    ASSERT_EQ(v->unmap(kBuf, iova), std::nullopt);
    const MapStatus again = v->map(kBuf, 0, &iova);
    EXPECT_TRUE(again.ok);
    EXPECT_FALSE(again.notified);
    EXPECT_EQ(v->notifications(), 1u);
}

TEST(CoiommuStrategy, UnmapLeavesThePagesPinned) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    ASSERT_EQ(v->unmap(kBuf, iova), std::nullopt);
    EXPECT_TRUE(g.backend().is_mapped(kBufIova, kPages * kPage));  // lazy unpinning
}

TEST(CoiommuStrategy, BalloonUnpinsIdlePages) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(1));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    ASSERT_EQ(v->unmap(kBuf, iova), std::nullopt);
    const GfnRange r{kBuf.first, kPages};
    ASSERT_OK_AND_ASSIGN(auto out, s->balloon(std::span(&r, 1)));
    EXPECT_EQ(out, telemetry::BalloonResult::Success);
    EXPECT_FALSE(g.backend().is_mapped(kBufIova, kPage));
}

TEST(CoiommuStrategy, EngineStatsCountTheRequest) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu(workers::Variant::Seed));
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    ASSERT_OK(s->quiesce());
    ASSERT_OK_AND_ASSIGN(auto stats, s->engine_stats());
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->totals.requests[telemetry::RequestKind::Batch], 1u);
    EXPECT_EQ(stats->gauges.pinned_pages, kPages);
}

TEST(CoiommuStrategy, ShutdownLeavesNoMapping) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    Iova iova{};
    ASSERT_TRUE(v->map(kBuf, 0, &iova).ok);
    ASSERT_EQ(v->unmap(kBuf, iova), std::nullopt);
    s->shutdown();
    EXPECT_EQ(g.backend().live_entries(), 0u);
}

TEST(CoiommuStrategy, MapFailsWithNotPinnedWhenTheContainerIsFull) {
    Guest g;
    ASSERT_OK_AND_ASSIGN(auto s, g.coiommu());
    ASSERT_OK_AND_ASSIGN(auto v, s->vcpu(0));
    g.backend().fail_if([](dma::Op op, Iova, uint64_t) { return op == dma::Op::Map ? ENOSPC : 0; });
    Iova iova{};
    const MapStatus st = v->map(kBuf, 0, &iova);
    EXPECT_FALSE(st.ok);
    EXPECT_EQ(st.failure, MapFailure::NotPinned);
}

// ---- the virtio-iommu queue --------------------------------------------------------------------------

class QueueTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_OK(dev_.add_endpoint(1, std::make_shared<viommu::VfioMapper>(g_.mem(), g_.backend(), 1)));
        auto q = ViommuQueue::start(dev_, 2, std::chrono::seconds(5));
        ASSERT_OK(q);
        q_ = std::move(*q);
    }
    Guest g_;
    viommu::ViommuDevice dev_;
    std::unique_ptr<ViommuQueue> q_;
};

std::vector<std::byte> attach_request(uint32_t domain, uint32_t endpoint) {
    viommu::wire::ReqHead head;
    head.type = viommu::wire::kTypeAttach;
    viommu::wire::ReqAttach body;
    body.domain = domain;
    body.endpoint = endpoint;
    std::vector<std::byte> out(sizeof head + sizeof body);
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

TEST_F(QueueTest, ServesARequestAndReturnsItsStatus) {
    ASSERT_OK_AND_ASSIGN(uint8_t status, q_->submit(0, attach_request(7, 1)));
    EXPECT_EQ(status, viommu::wire::kStatusOk);
    EXPECT_EQ(dev_.endpoint_domain(1), 7u);
}

TEST_F(QueueTest, ReturnsTheDevicesErrorStatus) {
    ASSERT_OK_AND_ASSIGN(uint8_t status, q_->submit(1, attach_request(7, 99)));
    EXPECT_EQ(status, viommu::wire::kStatusNoEnt);
}

TEST_F(QueueTest, ServesVcpusConcurrently) {
    std::thread other([&] {
        for (int i = 0; i < 200; ++i) ASSERT_TRUE(q_->submit(1, attach_request(7, 99)).has_value());
    });
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(q_->submit(0, attach_request(7, 99)).has_value());
    other.join();
    EXPECT_EQ(q_->kicks(), 400u);
    EXPECT_GE(q_->wakeups(), 1u);
}

TEST_F(QueueTest, RejectsAnUnknownVcpu) { EXPECT_ERR(q_->submit(2, attach_request(7, 1)), EINVAL); }

TEST_F(QueueTest, RejectsAnOversizedRequest) {
    EXPECT_ERR(q_->submit(0, std::vector<std::byte>(ViommuQueue::kMaxRequestBytes + 1)), EINVAL);
}

TEST_F(QueueTest, ForwardsAHandleError) {
    // A request shorter than its head: the device completes it with used length 0.
    EXPECT_ERR(q_->submit(0, std::vector<std::byte>(2)), EMSGSIZE);
}

TEST_F(QueueTest, RefusesRequestsAfterStop) {
    q_->stop();
    EXPECT_ERR(q_->submit(0, attach_request(7, 1)), ECANCELED);
}

// ---- the clock ----------------------------------------------------------------------------------------

TEST(TscClock, MeasuresASleepWithinTwoPercent) {
    const TscClock c = TscClock::calibrate();
    const uint64_t m0 = telemetry::monotonic_ns();
    const uint64_t t0 = c.now();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const uint64_t t1 = c.now();
    const uint64_t m1 = telemetry::monotonic_ns();
    const double measured = static_cast<double>(c.ns(t0, t1));
    EXPECT_NEAR(measured, static_cast<double>(m1 - m0), 0.02 * static_cast<double>(m1 - m0));
}

TEST(TscClock, ReversedTimestampsGiveZero) {
    const TscClock c = TscClock::calibrate(1'000'000);
    EXPECT_EQ(c.ns(100, 50), 0u);
}

}  // namespace
}  // namespace coiommu::loadgen
