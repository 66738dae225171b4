// Batched request and DMA call tracing: one USDT probe hit per batch of served requests (or of DMA
// backend calls) instead of one per request (or call).
//
// An attached uprobe traps into the kernel on every hit (~1 us here, 0.3-1 us on bare metal), which
// cost a single-page pin request ~10 % of engine throughput when it fired once per request. The
// serving thread instead appends a 24-byte RequestRecord per request to its own batch and fires
// `coiommu:requests(session, records, count)` when the batch is full (kCapacity) or its oldest
// record is kMaxAgeNs old, and before the thread idles or exits; bpf/engine.bpf.c reads the
// records from this process's memory during the hit. Untraced, the probe is a nop and a record
// costs a few stores.
//
// DMA calls go the same way (--engine-dma: a trap per call cost single-page requests 18-26 % of
// engine throughput): a DmaTraceBatch of DmaRecords, fired as `coiommu:dma_calls(session, records,
// count)`. A RequestTraceBatch carries one for the DMA calls its thread makes while serving
// (dma()), so the serving loop's flush points below hand over both kinds; a thread that makes
// DMA calls without serving requests (the unpinner) keeps its own DmaTraceBatch and flushes it at
// the end of each scan.
//
// The flush contract with the serving loop:
//   batch.add(...)                 per served request (flushes itself when full)
//   batch.flush_if_due(now)        after each round of work
//   a timer at batch.due_ns()      armed while the batch is not empty, so a quiet engine that
//                                  blocks without a timeout still flushes within kMaxAgeNs
//                                  (a timed epoll_wait wakes 2-3x slower than an untimed one)
//   batch.flush()                  before blocking with no timer, and on exit
// (each covers the batch's dma() records too: due_ns() is the earlier of the two kinds' dues).
//
// Thread-safety: none; one batch per serving thread.
#pragma once

#include <array>
#include <cstdint>

#include "engine/telemetry/probes.h"

namespace coiommu::telemetry {

// DMA call records of one thread, handed over as `dma_calls` when kCapacity are pending, when the
// owner says they are due (kMaxAgeNs after the oldest), and on flush(). No lock, no allocation:
// add() is five stores and a compare.
class DmaTraceBatch {
public:
    static constexpr uint32_t kCapacity = kMaxDmaRecords;
    static constexpr uint64_t kMaxAgeNs = 1'000'000;  // as RequestTraceBatch

    explicit DmaTraceBatch(uint32_t session) : session_(session) {}
    DmaTraceBatch(const DmaTraceBatch&) = delete;
    DmaTraceBatch& operator=(const DmaTraceBatch&) = delete;
    ~DmaTraceBatch() { flush(); }

    // `now_ns`: monotonic_ns() at the call's end (starts the age of a new batch).
    void add(DmaRecordOp op, uint64_t iova, uint64_t size, int32_t result, uint64_t latency_ns,
             uint64_t now_ns) noexcept {
        if (n_ == 0) first_ns_ = now_ns;
        records_[n_++] = DmaRecord{iova, size, latency_ns, result, static_cast<uint32_t>(op)};
        if (n_ == kCapacity) flush();
    }

    void flush() noexcept {
        if (n_ == 0) return;
        COIOMMU_PROBE_DMA_CALLS(session_, records_.data(), n_);
        n_ = 0;
    }

    void flush_if_due(uint64_t now_ns) noexcept {
        if (n_ != 0 && now_ns - first_ns_ >= kMaxAgeNs) flush();
    }

    // The records pending go out under their own session; later ones carry `session`.
    void set_session(uint32_t session) noexcept {
        if (session == session_) return;
        flush();
        session_ = session;
    }

    // When the batch is due (its oldest record turns kMaxAgeNs); 0 when empty.
    [[nodiscard]] uint64_t due_ns() const noexcept { return n_ == 0 ? 0 : first_ns_ + kMaxAgeNs; }

    [[nodiscard]] uint32_t size() const noexcept { return n_; }

private:
    uint32_t session_;
    uint32_t n_ = 0;
    uint64_t first_ns_ = 0;
    std::array<DmaRecord, kCapacity> records_{};
};

class RequestTraceBatch {
public:
    static constexpr uint32_t kCapacity = kMaxRequestRecords;
    static constexpr uint64_t kMaxAgeNs = 1'000'000;  // 1 ms: fresher than any scrape or CLI interval

    explicit RequestTraceBatch(uint32_t session) : session_(session), dma_(session) {}
    RequestTraceBatch(const RequestTraceBatch&) = delete;
    RequestTraceBatch& operator=(const RequestTraceBatch&) = delete;
    ~RequestTraceBatch() { flush(); }

    // `now_ns`: monotonic_ns() at completion (starts the age of a new batch).
    void add(RequestKind kind, uint64_t pages, int32_t result, uint64_t latency_ns, uint64_t now_ns) noexcept {
        if (n_ == 0) first_ns_ = now_ns;
        records_[n_++] = RequestRecord{latency_ns, pages, result, static_cast<uint32_t>(kind)};
        if (n_ == kCapacity) flush_requests();
    }

    // Hands over the request records and the dma() records.
    void flush() noexcept {
        flush_requests();
        dma_.flush();
    }

    void flush_if_due(uint64_t now_ns) noexcept {
        if (n_ != 0 && now_ns - first_ns_ >= kMaxAgeNs) flush_requests();
        dma_.flush_if_due(now_ns);
    }

    // The monotonic_ns() at which the batch is due (its oldest record, of either kind, turns
    // kMaxAgeNs); 0 when both kinds are empty (nothing is ever due).
    [[nodiscard]] uint64_t due_ns() const noexcept {
        const uint64_t requests = n_ == 0 ? 0 : first_ns_ + kMaxAgeNs;
        const uint64_t dma = dma_.due_ns();
        if (requests == 0 || dma == 0) return requests | dma;
        return requests < dma ? requests : dma;
    }

    [[nodiscard]] uint32_t size() const noexcept { return n_; }  // request records pending

    // The DMA calls made while serving these requests: same thread, same flush points.
    [[nodiscard]] DmaTraceBatch& dma() noexcept { return dma_; }

private:
    void flush_requests() noexcept {
        if (n_ == 0) return;
        COIOMMU_PROBE_REQUESTS(session_, records_.data(), n_);
        n_ = 0;
    }

    uint32_t session_;
    uint32_t n_ = 0;
    uint64_t first_ns_ = 0;
    std::array<RequestRecord, kCapacity> records_{};
    DmaTraceBatch dma_;
};

}  // namespace coiommu::telemetry
