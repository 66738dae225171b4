// EngineTracer: the engine program attached to the engine's USDT probes (provider "coiommu",
// engine/telemetry/probes.h) of one binary, for every process running it or for one pid.
//
// Produces request latency per kind (the engine's own measure), pages per request, request counts
// by kind and result, unpin scan durations, and, with EngineDmaProbes::Yes, engine-measured DMA
// map/unmap latency, calls and bytes (EngineSnapshot). An attached probe costs a uprobe trap per
// hit (~1 us on the development host), so every per-request or per-call figure is read from
// batches the engine hands over (engine/telemetry/request_trace.h: up to 64 records a hit, at
// most 1 ms late): `requests` and unpin_scan (one per scan) by default, and `dma_calls` with
// EngineDmaProbes::Yes. The per-call probes (request_done, dma_map, dma_unmap) stay for bpftrace.
// Costs: bpf/README.md, "Overhead".
//
// Thread-safety: as VfioDmaTracer (snapshot/programs/pin from any thread).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bpf/loader/pin.h"
#include "bpf/loader/snapshot.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

// Whether the engine's DMA call records (the batched `dma_calls` probe) are read too.
enum class EngineDmaProbes : bool { No, Yes };

struct EngineTarget {
    std::string binary;  // ELF carrying the coiommu USDT notes
    int pid = -1;        // -1: every process running `binary`; else only this process
    EngineDmaProbes dma = EngineDmaProbes::No;

    // "1234" -> that pid and its executable (/proc/1234/exe resolved); anything else is a path
    // to the binary (ENOENT when it does not exist).
    [[nodiscard]] static Result<EngineTarget> parse(std::string_view binary_or_pid);
};

class EngineTracer {
public:
    EngineTracer(EngineTracer&&) noexcept;
    EngineTracer& operator=(EngineTracer&&) noexcept;
    ~EngineTracer();

    // Loads the program and attaches requests and unpin_scan (and dma_calls when target.dma says
    // so; eng_dma_batch is loaded only then). A probe missing from the binary (dma_calls in an
    // engine older than the DMA batches) is logged and left detached (programs() shows it);
    // ENOENT when none is found. eng_dma_map/eng_dma_unmap are loaded and never attached.
    [[nodiscard]] static Result<EngineTracer> attach(const EngineTarget& target);

    [[nodiscard]] Result<EngineSnapshot> snapshot() const;

    // Pins every eng_* map under <root>/v2/.
    [[nodiscard]] Status pin(const PinOptions& options);
    [[nodiscard]] std::vector<std::string> pinned_paths() const;

    [[nodiscard]] Result<std::vector<ProgramInfo>> programs() const;
    // Names of the probes attached ("requests", ...).
    [[nodiscard]] const std::vector<std::string>& attached_probes() const;

private:
    struct Impl;
    explicit EngineTracer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace coiommu::bpf
