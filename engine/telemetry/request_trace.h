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
//   epoll_wait(..., batch.wait_timeout_ms(now))   so a quiet engine flushes within kMaxAgeNs
//   batch.flush()                  before blocking without a timeout, and on exit
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

    // epoll_wait timeout: -1 (no timeout) when empty, else the ms until the batch is due, rounded
    // up; 0 when it is already due (call flush_if_due first).
    [[nodiscard]] int wait_timeout_ms(uint64_t now_ns) const noexcept {
        if (n_ == 0) return -1;
        const uint64_t age = now_ns - first_ns_;
        const uint64_t left = age >= kMaxAgeNs ? 0 : kMaxAgeNs - age;
        return static_cast<int>((left + 999'999) / 1'000'000);
    }

    [[nodiscard]] uint32_t size() const noexcept { return n_; }

private:
    uint32_t session_;
    uint32_t n_ = 0;
    uint64_t first_ns_ = 0;
    std::array<RequestRecord, kCapacity> records_{};
};

}  // namespace coiommu::telemetry
