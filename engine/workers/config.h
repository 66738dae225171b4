// EngineConfig: every knob of the pin engine, with crosvm's CoIommuParameters among them
// (engine/README.md, "Engine parameters") and the throughput engine's own.
//
//   variant=fast|seed            fast: the throughput engine; seed: the seed pinner (crosvm's
//                                serial algorithm: one thread, blocking wait, 4 KiB maps, one lock)
//   workers=auto|N               pin worker threads (fast; 0 = the intake thread pins inline).
//                                auto (default): 1 on hosts with >= kAutoSpinMinCpus CPUs, else 0 -
//                                on a small host the hand-off costs a second thread wake per
//                                request and every map serialises on the container anyway
//   coalesce=on|off              map contiguous gfns of a request with one DMA call (fast)
//   spin_budget=auto|50us        intake (and worker) spin before blocking; 0 = never spin (fast).
//                                auto (default): kAutoSpinBudget when the host has at least
//                                kAutoSpinMinCpus CPUs, else 0 - a spinner on an oversubscribed
//                                host steals the CPU from the thread it waits for (measured in
//                                tests/bench/workers: on 2 cores, spinning doubles the latency)
//   max_batch_pages=N            bound on a batch request's nr_pages (guest-controlled)
//   extent_store=flat|tbb        where extent records live: a flat per-gfn array, or a
//                                tbb::concurrent_hash_map keyed by head gfn (fast)
//   unpin_policy=off|lru         periodic LRU unpinning (both variants)
//   unpin_interval=60s           LRU tick period (suffix ms/s/m; a bare number is seconds, as
//                                crosvm's); 0 = no timer (ticks only on request)
//   unpin_limit=N                pages unpinned per tick at most; absent = unlimited; 0 is rejected
//   unpin_gen_threshold=10       ticks between old-generation scans and the busy count that
//                                promotes to the old generation; 0 = one generation (see unpinner.h)
//   session=N                    the session id in USDT probes
//
// Thread-safety: a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engine/base/result.h"

namespace coiommu::workers {

enum class Variant : uint8_t { Fast, Seed };
enum class UnpinPolicy : uint8_t { Off, Lru };
enum class ExtentStoreKind : uint8_t { Flat, Tbb };
enum class Coalesce : bool { Off = false, On = true };

// spin_budget value meaning "decide from the host's CPU count" (see effective_spin_budget()).
inline constexpr std::chrono::nanoseconds kSpinBudgetAuto{-1};
inline constexpr std::chrono::nanoseconds kAutoSpinBudget = std::chrono::microseconds(50);
inline constexpr unsigned kAutoSpinMinCpus = 4;
// workers value meaning "decide from the host's CPU count" (see effective_workers()).
inline constexpr uint32_t kWorkersAuto = UINT32_MAX;

struct EngineConfig {
    Variant variant = Variant::Fast;
    uint32_t workers = kWorkersAuto;
    Coalesce coalesce = Coalesce::On;
    std::chrono::nanoseconds spin_budget = kSpinBudgetAuto;
    uint64_t max_batch_pages = 65536;
    ExtentStoreKind extent_store = ExtentStoreKind::Flat;
    UnpinPolicy unpin_policy = UnpinPolicy::Off;
    std::chrono::nanoseconds unpin_interval = std::chrono::seconds(60);
    std::optional<uint64_t> unpin_limit;  // pages per tick; nullopt = unlimited
    uint64_t unpin_gen_threshold = 10;
    uint32_t session = 0;

    // Errors (EINVAL, with the offending key in the message): unpin_limit == 0 ("Please use a
    // non-zero unpin_limit value", crosvm's wording); workers > kMaxWorkers (other than kWorkersAuto); max_batch_pages
    // 0 or above kMaxBatchPages; a negative spin budget (other than kSpinBudgetAuto) or interval; spin_budget above 1
    // s.
    [[nodiscard]] Status validate() const;
};

inline constexpr uint32_t kMaxWorkers = 64;
// An extent's length and a member's offset share 29 bits of the extent word; 2^20 pages (4 GiB)
// per request is far beyond any scatterlist and far below that.
inline constexpr uint64_t kMaxBatchPages = uint64_t{1} << 20;

// The spin budget the engine uses: cfg.spin_budget, or for kSpinBudgetAuto kAutoSpinBudget when
// `cpus` >= kAutoSpinMinCpus and 0 otherwise. `cpus` defaults to std::thread::hardware_concurrency().
[[nodiscard]] std::chrono::nanoseconds effective_spin_budget(const EngineConfig& cfg, unsigned cpus = 0);

// The pin worker count the engine uses: cfg.workers, or for kWorkersAuto 1 when `cpus` >=
// kAutoSpinMinCpus and 0 (inline) otherwise.
[[nodiscard]] uint32_t effective_workers(const EngineConfig& cfg, unsigned cpus = 0);

// Parses "key=value,key=value" over defaults (the daemon's and load generator's option string).
// Unknown keys, malformed values and duplicate keys are EINVAL; the result is validated.
[[nodiscard]] Result<EngineConfig> parse_engine_options(std::string_view text, EngineConfig base = {});

// "fast", "seed", ... for logs and reports.
[[nodiscard]] std::string_view to_string(Variant v);
[[nodiscard]] std::string_view to_string(UnpinPolicy p);
[[nodiscard]] std::string_view to_string(ExtentStoreKind k);
// The option string that parse_engine_options() turns back into `cfg`.
[[nodiscard]] std::string to_string(const EngineConfig& cfg);

}  // namespace coiommu::workers
