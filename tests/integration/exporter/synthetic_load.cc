#include "tests/integration/exporter/synthetic_load.h"

#include <algorithm>

#include "engine/base/addr.h"
#include "engine/telemetry/clock.h"

namespace coiommu::exporter::testing {

using namespace telemetry;

SyntheticLoad::SyntheticLoad(StatsRegistry& stats, std::chrono::microseconds pace)
    : stats_(stats), pace_(pace), thread_([this] { run(); }) {}

SyntheticLoad::~SyntheticLoad() {
    stop_.store(true, std::memory_order_relaxed);
    thread_.join();
}

void SyntheticLoad::run() {
    StatsShard& s = stats_.shard(0);
    EngineGauges& g = stats_.gauges();
    g.dma_entry_limit.set(65535);
    g.guest_ram_bytes.set(uint64_t{4} << 30);
    g.vcpus.set(4);
    g.active_sessions.set(1);
    uint64_t i = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
        one_request(s, i++);
        requests_.fetch_add(1, std::memory_order_relaxed);
        if (pace_.count() > 0) std::this_thread::sleep_for(pace_);
    }
}

void SyntheticLoad::one_request(StatsShard& s, uint64_t i) {
    EngineGauges& g = stats_.gauges();
    // A pseudo-random but deterministic spread (Knuth's multiplicative hash).
    const uint64_t h = (i * 2654435761u) >> 7;
    const RequestKind kind = (i % 4 == 0) ? RequestKind::Batch : RequestKind::Single;
    const uint64_t pages = kind == RequestKind::Batch ? 1 + h % 64 : 1;
    s.requests[kind].add();
    s.pages_requested.add(pages);
    s.pages_per_request.observe(pages);
    uint64_t pinned = pages;
    if (i % 97 == 0) {
        const auto reason = static_cast<PinFailureReason>((i / 97) % kPinFailureReasons);
        s.pin_failures[reason].add();
        s.requests_failed.add();
        pinned -= 1;
    }
    const uint64_t already = (i % 5 == 0) ? pinned / 2 : 0;
    s.pages_already_pinned.add(already);
    s.pages_pinned.add(pinned - already);
    if (pinned > already) {
        s.dma_calls[DmaOp::Map].add();
        s.dma_bytes[DmaOp::Map].add((pinned - already) * kPageSize);
        s.dma_call_latency_ns[DmaOp::Map].observe(1500 + h % 3000 + (pinned - already) * 200);
        if (i % 211 == 0) s.dma_call_failures[DmaOp::Map].add();
    }
    s.request_latency_ns[kind].observe(2000 + h % 20000 + pages * 300);
    g.pinned_pages.add(pinned - already);
    g.dma_entries.add(pinned > already ? 1 : 0);
    g.queue_depth.set(h % 8);

    // Every 500 requests an LRU scan unpins part of the set; every 2000 a balloon request.
    if (i % 500 == 499) {
        const uint64_t pinned_now = g.pinned_pages.load();
        const uint64_t unpin = pinned_now / 3;
        const bool balloon = i % 2000 == 1999;
        const ScanKind scan = balloon ? ScanKind::Balloon : ScanKind::Lru;
        s.unpin_scans[scan].add();
        s.unpin_scan_duration_ns[scan].observe(50'000 + h % 200'000);
        s.unpin_attempts[UnpinResult::Unpinned].add(unpin);
        s.unpin_attempts[UnpinResult::NotUnpinned].add(unpin / 2);
        s.unpin_attempts[UnpinResult::NotPinned].add(3);
        if (i % 1500 == 1499) s.unpin_attempts[UnpinResult::Failed].add();
        if (i % 3000 == 2999) s.unpin_attempts[UnpinResult::Parked].add();
        s.pages_unpinned.add(unpin);
        s.dma_calls[DmaOp::Unmap].add(unpin);
        s.dma_bytes[DmaOp::Unmap].add(unpin * kPageSize);
        s.dma_call_latency_ns[DmaOp::Unmap].observe(2500 + h % 5000);
        if (balloon) s.balloon_requests[(i / 2000) % 7 == 3 ? BalloonResult::Failed : BalloonResult::Success].add();
        g.pinned_pages.sub(unpin);
        const uint64_t entries = g.dma_entries.load();
        g.dma_entries.sub(std::min(entries, unpin));
        g.last_unpin_run_unix_ns.set(unix_time_ns());
        g.unpin_worker_parked.set((i / 500) % 10 == 9 ? 1 : 0);
    }
    // Some virtio-iommu traffic on the side.
    if (i % 3 == 0) {
        const DmaOp op = (i % 6 == 0) ? DmaOp::Map : DmaOp::Unmap;
        s.viommu_requests[op].add();
        if (i % 301 == 0) {
            s.viommu_request_failures[op].add();
            s.viommu_fault_events.add();
        }
    }
}

}  // namespace coiommu::exporter::testing
