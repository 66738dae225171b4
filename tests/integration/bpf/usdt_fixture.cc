// A stand-in for the engine: fires the engine's USDT probes (engine/telemetry/probes.h) with
// arguments chosen by the test, so engine.bpf.c can be checked without the pin engine.
//
// Protocol: reads one command per line on stdin, answers "ok" (or "error: ...") on stdout after
// the probes fired. Prints "ready <pid>" first, so the test can attach before any probe fires.
//   requests N KIND PAGES RESULT LATENCY   N requests: request_start and request_done each, and the
//                                          records in `requests` batches (RequestTraceBatch)
//   batch_count COUNT                      one `requests` hit claiming COUNT records (64 valid ones)
//   batch_unreadable COUNT                 one `requests` hit whose records pointer is unmapped
//   dma_map N SIZE RESULT LATENCY    N DMA calls as the engine reports them: dma_map(iova 0x1000 * i,
//                                    ...) each, and the records in `dma_calls` batches (DmaTraceBatch)
//   dma_unmap N SIZE RESULT LATENCY
//   dma_batch_count COUNT            one `dma_calls` hit claiming COUNT records (64 valid map records)
//   dma_batch_unreadable COUNT       one `dma_calls` hit whose records pointer is unmapped
//   dma_bad_op N                     one `dma_calls` hit of N records with op 7
//   scan N KIND EXAMINED UNPINNED DURATION
//   exit
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include <sys/mman.h>

#include <array>

#include "engine/telemetry/request_trace.h"

namespace {

using coiommu::telemetry::DmaRecord;
using coiommu::telemetry::DmaRecordOp;
using coiommu::telemetry::RequestKind;
using coiommu::telemetry::RequestRecord;

void requests(uint64_t n, uint32_t kind, uint64_t pages, int32_t result, uint64_t latency) {
    coiommu::telemetry::RequestTraceBatch batch(1);
    for (uint64_t i = 0; i < n; ++i) {
        const auto vcpu = static_cast<uint32_t>(i % 4);
        COIOMMU_PROBE_REQUEST_START(1u, vcpu, kind);
        COIOMMU_PROBE_REQUEST_DONE(1u, vcpu, kind, pages, result, latency);
        batch.add(static_cast<RequestKind>(kind), pages, result, latency, 0);
    }
    batch.flush();
}

void batch_count(uint32_t count) {
    std::array<RequestRecord, coiommu::telemetry::kMaxRequestRecords> records{};
    for (auto& r : records) r = RequestRecord{1000, 1, 0, 0};
    COIOMMU_PROBE_REQUESTS(1u, records.data(), count);
}

void batch_unreadable(uint32_t count) {
    // A page reserved and never accessible: the program's copy from it fails.
    void* p = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    COIOMMU_PROBE_REQUESTS(1u, p, count);
    ::munmap(p, 4096);
}

void dma_map(uint64_t n, uint64_t size, int32_t result, uint64_t latency) {
    coiommu::telemetry::DmaTraceBatch batch(1);
    for (uint64_t i = 0; i < n; ++i) {
        COIOMMU_PROBE_DMA_MAP(0x1000 * i, size, result, latency);
        batch.add(DmaRecordOp::Map, 0x1000 * i, size, result, latency, 0);
    }
}

void dma_unmap(uint64_t n, uint64_t size, int32_t result, uint64_t latency) {
    coiommu::telemetry::DmaTraceBatch batch(1);
    for (uint64_t i = 0; i < n; ++i) {
        COIOMMU_PROBE_DMA_UNMAP(0x1000 * i, size, result, latency);
        batch.add(DmaRecordOp::Unmap, 0x1000 * i, size, result, latency, 0);
    }
}

void dma_batch_count(uint32_t count) {
    std::array<DmaRecord, coiommu::telemetry::kMaxDmaRecords> records{};
    for (auto& r : records) r = DmaRecord{0x1000, 4096, 1000, 0, 0};
    COIOMMU_PROBE_DMA_CALLS(1u, records.data(), count);
}

void dma_batch_unreadable(uint32_t count) {
    void* p = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    COIOMMU_PROBE_DMA_CALLS(1u, p, count);
    ::munmap(p, 4096);
}

void dma_bad_op(uint32_t n) {
    std::array<DmaRecord, coiommu::telemetry::kMaxDmaRecords> records{};
    for (auto& r : records) r = DmaRecord{0x1000, 4096, 1000, 0, 7};
    COIOMMU_PROBE_DMA_CALLS(1u, records.data(), n);
}

void scan(uint64_t n, uint32_t kind, uint64_t examined, uint64_t unpinned, uint64_t duration) {
    for (uint64_t i = 0; i < n; ++i) COIOMMU_PROBE_UNPIN_SCAN(1u, kind, examined, unpinned, duration);
}

}  // namespace

int main() {
    std::cout << "ready " << ::getpid() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string cmd;
        in >> cmd;
        uint64_t n = 0, a = 0, b = 0, c = 0;
        int64_t r = 0;
        if (cmd == "exit") break;
        if (cmd == "requests" && in >> n >> a >> b >> r >> c) {
            requests(n, static_cast<uint32_t>(a), b, static_cast<int32_t>(r), c);
        } else if (cmd == "batch_count" && in >> n) {
            batch_count(static_cast<uint32_t>(n));
        } else if (cmd == "batch_unreadable" && in >> n) {
            batch_unreadable(static_cast<uint32_t>(n));
        } else if (cmd == "dma_map" && in >> n >> a >> r >> b) {
            dma_map(n, a, static_cast<int32_t>(r), b);
        } else if (cmd == "dma_unmap" && in >> n >> a >> r >> b) {
            dma_unmap(n, a, static_cast<int32_t>(r), b);
        } else if (cmd == "dma_batch_count" && in >> n) {
            dma_batch_count(static_cast<uint32_t>(n));
        } else if (cmd == "dma_batch_unreadable" && in >> n) {
            dma_batch_unreadable(static_cast<uint32_t>(n));
        } else if (cmd == "dma_bad_op" && in >> n && n <= coiommu::telemetry::kMaxDmaRecords) {
            dma_bad_op(static_cast<uint32_t>(n));
        } else if (cmd == "scan" && in >> n >> a >> b >> c >> r) {
            scan(n, static_cast<uint32_t>(a), b, c, static_cast<uint64_t>(r));
        } else {
            std::cout << "error: bad command '" << line << "'" << std::endl;
            continue;
        }
        std::cout << "ok" << std::endl;
    }
    return 0;
}
