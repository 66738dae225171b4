// The virtio-iommu queue of the strict strategy: batches of requests posted with one kick, served
// in order with a completion each, and a device thread that drains every posted mailbox per wake.
// Real eventfds, a real ViommuDevice whose endpoint is attached to a domain backed by a
// VfioMapper over the FakeBackend.
#include "engine/loadgen/viommu_queue.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "engine/base/addr.h"
#include "engine/dma/fake_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/viommu/protocol.h"
#include "engine/viommu/vfio_mapper.h"
#include "engine/viommu/viommu_device.h"
#include "tests/testing/expect.h"

namespace coiommu::loadgen {
namespace {

namespace wire = viommu::wire;
using Completion = ViommuQueue::Completion;
using Wire = std::vector<std::byte>;

constexpr uint64_t kRam = uint64_t{32} << 20;
constexpr uint32_t kEndpoint = 1;
constexpr uint32_t kDomain = 1;
constexpr uint64_t kIovaBase = uint64_t{1} << 32;

template <class Body>
Wire encode(uint8_t type, const Body& body) {
    wire::ReqHead head;
    head.type = type;
    Wire out(sizeof head + sizeof body);
    std::memcpy(out.data(), &head, sizeof head);
    std::memcpy(out.data() + sizeof head, &body, sizeof body);
    return out;
}

// MAP of one page: IOVA page `iova_page` above kIovaBase to guest page `gfn`.
Wire map_req(uint64_t iova_page, uint64_t gfn) {
    wire::ReqMap body;
    body.domain = kDomain;
    body.virt_start = kIovaBase + iova_page * kPageSize;
    body.virt_end = kIovaBase + (iova_page + 1) * kPageSize - 1;
    body.phys_start = gfn * kPageSize;
    body.flags = wire::kMapFlagRead | wire::kMapFlagWrite;
    return encode(wire::kTypeMap, body);
}

Wire unmap_req(uint64_t iova_page) {
    wire::ReqUnmap body;
    body.domain = kDomain;
    body.virt_start = kIovaBase + iova_page * kPageSize;
    body.virt_end = kIovaBase + (iova_page + 1) * kPageSize - 1;
    return encode(wire::kTypeUnmap, body);
}

Iova iova_of(uint64_t iova_page) { return Iova{kIovaBase + iova_page * kPageSize}; }

std::vector<std::span<const std::byte>> spans_of(const std::vector<Wire>& reqs) { return {reqs.begin(), reqs.end()}; }

GuestMemory make_mem() {
    const RegionSpec r{Gpa{0}, kRam};
    return GuestMemory::create(std::span<const RegionSpec>(&r, 1)).value();
}

class ViommuQueueTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_OK(dev_.add_endpoint(kEndpoint, std::make_shared<viommu::VfioMapper>(mem_, backend_, 1)));
        // Attached directly, so that the queue's counters start at zero.
        wire::ReqAttach attach;
        attach.domain = kDomain;
        attach.endpoint = kEndpoint;
        std::array<std::byte, sizeof(wire::ReqTail)> tail{};
        ASSERT_OK(dev_.handle(encode(wire::kTypeAttach, attach), tail));
        ASSERT_EQ(static_cast<uint8_t>(tail[0]), wire::kStatusOk);
    }

    void start(uint32_t vcpus) {
        auto q = ViommuQueue::start(dev_, vcpus, std::chrono::seconds(5));
        ASSERT_OK(q);
        q_ = std::move(*q);
    }

    [[nodiscard]] Hva hva_of(uint64_t gfn) const { return mem_.translate(Gpa{gfn * kPageSize}, kPageSize).value(); }

    GuestMemory mem_ = make_mem();
    dma::FakeBackend backend_;
    viommu::ViommuDevice dev_;
    std::unique_ptr<ViommuQueue> q_;  // declared last: stopped before the device goes
};

TEST_F(ViommuQueueTest, ServesABatchPostedWithOneKickInOneWake) {
    start(1);
    std::vector<Wire> reqs;
    for (uint64_t i = 0; i < 8; ++i) reqs.push_back(map_req(i, 0x100 + i));
    std::array<Completion, 8> done{};
    ASSERT_OK(q_->submit_batch(0, spans_of(reqs), done));
    for (const Completion& c : done) {
        EXPECT_EQ(c.error, 0);
        EXPECT_EQ(c.status, wire::kStatusOk);
    }
    EXPECT_EQ(q_->kicks(), 1u);
    EXPECT_EQ(q_->wakeups(), 1u);
    EXPECT_EQ(q_->served(), 8u);
    EXPECT_EQ(backend_.live_entries(), 8u);
}

TEST_F(ViommuQueueTest, ServesABatchInOrder) {
    start(1);
    // MAP, UNMAP, MAP again elsewhere: only in this order does the last MAP's page stay mapped.
    const std::vector<Wire> reqs{map_req(0, 0x100), unmap_req(0), map_req(0, 0x200)};
    std::array<Completion, 3> done{};
    ASSERT_OK(q_->submit_batch(0, spans_of(reqs), done));
    for (const Completion& c : done) EXPECT_EQ(c.status, wire::kStatusOk);
    auto m = backend_.find(iova_of(0));
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(raw(m->hva), raw(hva_of(0x200)));
    EXPECT_EQ(backend_.live_entries(), 1u);
}

TEST_F(ViommuQueueTest, ABadRequestDoesNotStopTheRestOfItsBatch) {
    start(1);
    std::vector<Wire> reqs;
    for (uint64_t i = 0; i < 5; ++i) reqs.push_back(map_req(i, 0x100 + i));
    reqs[2].resize(2);            // shorter than its head: the device completes it with used length 0
    reqs[3] = map_req(0, 0x180);  // overlaps the first: answered with a status
    std::array<Completion, 5> done{};
    ASSERT_OK(q_->submit_batch(0, spans_of(reqs), done));
    EXPECT_EQ(done[0].error, 0);
    EXPECT_EQ(done[0].status, wire::kStatusOk);
    EXPECT_EQ(done[1].status, wire::kStatusOk);
    EXPECT_EQ(done[2].error, EMSGSIZE);
    EXPECT_EQ(done[3].error, 0);
    EXPECT_NE(done[3].status, wire::kStatusOk);
    EXPECT_EQ(done[4].error, 0);
    EXPECT_EQ(done[4].status, wire::kStatusOk);
    EXPECT_TRUE(backend_.is_mapped(iova_of(4), kPageSize));
    EXPECT_EQ(q_->served(), 5u);
}

TEST_F(ViommuQueueTest, TakesABatchPostedBehindTheScanInTheSameWake) {
    start(2);
    // vCPU 1's MAP holds the device (inside the container) until vCPU 0 has kicked: mailbox 0 was
    // already scanned in that pass, so only a drain serves vCPU 0's MAP before the next wake.
    std::atomic<bool> holding{false};
    std::atomic<uint64_t> wake_of_second{0};
    backend_.fail_if([&](dma::Op op, Iova iova, uint64_t /*size*/) {
        if (op != dma::Op::Map) return 0;
        if (iova == iova_of(1)) {
            holding.store(true);
            const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
            while (q_->kicks() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        } else if (iova == iova_of(0)) {
            wake_of_second.store(q_->wakeups());
        }
        return 0;
    });
    std::thread first([&] { EXPECT_OK(q_->submit(1, map_req(1, 0x101))); });
    while (!holding.load()) std::this_thread::yield();
    ASSERT_OK_AND_ASSIGN(uint8_t status, q_->submit(0, map_req(0, 0x100)));
    first.join();
    EXPECT_EQ(status, wire::kStatusOk);
    EXPECT_EQ(wake_of_second.load(), 1u);
}

TEST_F(ViommuQueueTest, CompletesEveryRequestOfConcurrentVcpus) {
    constexpr uint32_t kVcpus = 4;
    constexpr uint64_t kRounds = 200;
    start(kVcpus);
    std::vector<std::thread> vcpus;
    std::atomic<uint64_t> ok{0};
    for (uint32_t v = 0; v < kVcpus; ++v) {
        vcpus.emplace_back([&, v] {
            // Each round maps and unmaps this vCPU's own page: a batch of two, then one UNMAP.
            for (uint64_t r = 0; r < kRounds; ++r) {
                const std::vector<Wire> reqs{map_req(v, 0x100 + v), map_req(kVcpus + v, 0x100 + v)};
                std::array<Completion, 2> done{};
                if (!q_->submit_batch(v, spans_of(reqs), done)) continue;
                for (const Completion& c : done) ok += c.error == 0 && c.status == wire::kStatusOk ? 1 : 0;
                for (const uint64_t page : {uint64_t{v}, uint64_t{kVcpus} + v}) {
                    auto st = q_->submit(v, unmap_req(page));
                    ok += st && *st == wire::kStatusOk ? 1 : 0;
                }
            }
        });
    }
    for (std::thread& t : vcpus) t.join();
    const uint64_t requests = kVcpus * kRounds * 4;
    EXPECT_EQ(ok.load(), requests);
    EXPECT_EQ(q_->served(), requests);
    EXPECT_EQ(q_->kicks(), kVcpus * kRounds * 3);
    EXPECT_EQ(backend_.live_entries(), 0u);
    RecordProperty("wakeups", static_cast<int>(q_->wakeups()));
}

TEST_F(ViommuQueueTest, RefusesABatchOverTheMailboxSize) {
    start(1);
    std::vector<Wire> reqs;
    for (uint64_t i = 0; i < ViommuQueue::kMaxBatch + 1; ++i) reqs.push_back(map_req(i, 0x100 + i));
    std::vector<Completion> done(reqs.size());
    EXPECT_ERR(q_->submit_batch(0, spans_of(reqs), done), EINVAL);
    EXPECT_EQ(q_->kicks(), 0u);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(ViommuQueueTest, RefusesABatchWithAnOversizedRequestAndPostsNoneOfIt) {
    start(1);
    const std::vector<Wire> reqs{map_req(0, 0x100), Wire(ViommuQueue::kMaxRequestBytes + 1)};
    std::array<Completion, 2> done{};
    EXPECT_ERR(q_->submit_batch(0, spans_of(reqs), done), EINVAL);
    EXPECT_EQ(q_->kicks(), 0u);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(ViommuQueueTest, RefusesFewerCompletionsThanRequests) {
    start(1);
    const std::vector<Wire> reqs{map_req(0, 0x100), map_req(1, 0x101)};
    std::array<Completion, 1> done{};
    EXPECT_ERR(q_->submit_batch(0, spans_of(reqs), done), EINVAL);
    EXPECT_EQ(backend_.live_entries(), 0u);
}

TEST_F(ViommuQueueTest, RefusesBatchesAfterStop) {
    start(1);
    q_->stop();
    const std::vector<Wire> reqs{map_req(0, 0x100)};
    std::array<Completion, 1> done{};
    EXPECT_ERR(q_->submit_batch(0, spans_of(reqs), done), ECANCELED);
    EXPECT_ERR(q_->submit(0, map_req(0, 0x100)), ECANCELED);
}

}  // namespace
}  // namespace coiommu::loadgen
