// Batched request tracing: one USDT probe hit per batch of served requests instead of one per
// request.
//
// An attached uprobe traps into the kernel on every hit (~1 us here, 0.3-1 us on bare metal), which
// cost a single-page pin request ~10 % of engine throughput when it fired once per request. The
// serving thread instead appends a 24-byte RequestRecord per request to its own batch and fires
// `coiommu:requests(session, records, count)` when the batch is full (kCapacity) or its oldest
// record is kMaxAgeNs old, and before the thread idles or exits; bpf/engine.bpf.c reads the
// records from this process's memory during the hit. Untraced, the probe is a nop and a record
// costs a few stores.
//
// The flush contract with the serving loop:
//   batch.add(...)                 per served request (flushes itself when full)
//   batch.flush_if_due(now)        after each round of work
//   a timer at batch.due_ns()      armed while the batch is not empty, so a quiet engine that
//                                  blocks without a timeout still flushes within kMaxAgeNs
//                                  (a timed epoll_wait wakes 2-3x slower than an untimed one)
//   batch.flush()                  before blocking with no timer, and on exit
//
// Thread-safety: none; one batch per serving thread.
#pragma once

#include <array>
#include <cstdint>

#include "engine/telemetry/probes.h"

namespace coiommu::telemetry {

class RequestTraceBatch {
public:
    static constexpr uint32_t kCapacity = kMaxRequestRecords;
    static constexpr uint64_t kMaxAgeNs = 1'000'000;  // 1 ms: fresher than any scrape or CLI interval

    explicit RequestTraceBatch(uint32_t session) : session_(session) {}
    RequestTraceBatch(const RequestTraceBatch&) = delete;
    RequestTraceBatch& operator=(const RequestTraceBatch&) = delete;
    ~RequestTraceBatch() { flush(); }

    // `now_ns`: monotonic_ns() at completion (starts the age of a new batch).
    void add(RequestKind kind, uint64_t pages, int32_t result, uint64_t latency_ns, uint64_t now_ns) noexcept {
        if (n_ == 0) first_ns_ = now_ns;
        records_[n_++] = RequestRecord{latency_ns, pages, result, static_cast<uint32_t>(kind)};
        if (n_ == kCapacity) flush();
    }

    void flush() noexcept {
        if (n_ == 0) return;
        COIOMMU_PROBE_REQUESTS(session_, records_.data(), n_);
        n_ = 0;
    }

    void flush_if_due(uint64_t now_ns) noexcept {
        if (n_ != 0 && now_ns - first_ns_ >= kMaxAgeNs) flush();
    }

    // The monotonic_ns() at which the batch is due (its oldest record turns kMaxAgeNs); 0 when
    // empty (nothing is ever due).
    [[nodiscard]] uint64_t due_ns() const noexcept { return n_ == 0 ? 0 : first_ns_ + kMaxAgeNs; }

    [[nodiscard]] uint32_t size() const noexcept { return n_; }

private:
    uint32_t session_;
    uint32_t n_ = 0;
    uint64_t first_ns_ = 0;
    std::array<RequestRecord, kCapacity> records_{};
};

}  // namespace coiommu::telemetry
