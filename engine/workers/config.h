// EngineConfig: every knob of the pin engine, with crosvm's CoIommuParameters among them
// (engine/README.md, "Engine parameters") and the throughput engine's own.
//
// The option string of coiommud's --engine (and `engine =` in coiommud.conf) and of
// coiommu-load's --engine-opts is "name=value,name=value": each name at most once, spaces around
// items and around '=' ignored, names not given keep the base's values. One table in config.cc
// gives every option's name, values, range, help and default; engine_options_help() prints it
// (coiommud --help), and this list is its summary:
//
//   variant=fast|seed            the throughput engine, or the seed pinner (crosvm's serial
//                                algorithm: one thread, blocking wait, 4 KiB maps, one lock)
//   workers=auto|N               pin worker threads (fast; 0 = the intake thread pins inline).
//                                auto (default): 1 on hosts with >= kAutoSpinMinCpus CPUs, else 0 -
//                                on a small host the hand-off costs a second thread wake per
//                                request and every map serialises on the container anyway
//   coalesce=on|off              map contiguous gfns of a request with one DMA call (fast)
//   spin_budget=auto|DURATION    intake (and worker) spin before blocking; 0 = never spin (fast).
//                                auto (default): kAutoSpinBudget when the host has at least
//                                kAutoSpinMinCpus CPUs, else kAutoShortSpinBudget - on a small
//                                host a long spin steals the CPU from the vCPU it waits for, a
//                                short one still catches a vCPU's next request before the intake
//                                blocks (measured in tests/bench/workers/README.md)
//   max_batch_pages=N            bound on a batch request's nr_pages (guest-controlled)
//   extent_store=flat|tbb        where extent records live: a flat per-gfn array, or a
//                                tbb::concurrent_hash_map keyed by head gfn (fast)
//   unpin_policy=off|lru         periodic LRU unpinning (both variants)
//   unpin_interval=DURATION      LRU tick period (a bare number is seconds, as crosvm's);
//                                0 = no timer (ticks only on request)
//   unpin_limit=N                pages unpinned per tick at most; absent = unlimited; 0 is rejected
//   unpin_gen_threshold=N        ticks between old-generation scans and the busy count that
//                                promotes to the old generation; 0 = one generation (see unpinner.h)
//   session=N                    the session id in USDT probes
//
// Durations are those of engine/base/quantity.h ("50us", "1.5s"; a bare spin_budget is
// microseconds).
//
// Thread-safety: a plain value; the functions are pure.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace coiommu::workers {

enum class Variant : uint8_t { Fast, Seed };
enum class UnpinPolicy : uint8_t { Off, Lru };
enum class ExtentStoreKind : uint8_t { Flat, Tbb };
enum class Coalesce : bool { Off = false, On = true };

// spin_budget value meaning "decide from the host's CPU count" (see effective_spin_budget()).
inline constexpr std::chrono::nanoseconds kSpinBudgetAuto{-1};
inline constexpr std::chrono::nanoseconds kAutoSpinBudget = std::chrono::microseconds(50);
inline constexpr std::chrono::nanoseconds kAutoShortSpinBudget = std::chrono::microseconds(10);
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
inline constexpr std::chrono::nanoseconds kMaxSpinBudget = std::chrono::seconds(1);
// An extent's length and a member's offset share 29 bits of the extent word; 2^20 pages (4 GiB)
// per request is far beyond any scatterlist and far below that.
inline constexpr uint64_t kMaxBatchPages = uint64_t{1} << 20;

// The spin budget the engine uses: cfg.spin_budget, or for kSpinBudgetAuto kAutoSpinBudget when
// `cpus` >= kAutoSpinMinCpus and kAutoShortSpinBudget otherwise. `cpus` defaults to
// std::thread::hardware_concurrency().
[[nodiscard]] std::chrono::nanoseconds effective_spin_budget(const EngineConfig& cfg, unsigned cpus = 0);

// The pin worker count the engine uses: cfg.workers, or for kWorkersAuto 1 when `cpus` >=
// kAutoSpinMinCpus and 0 (inline) otherwise.
[[nodiscard]] uint32_t effective_workers(const EngineConfig& cfg, unsigned cpus = 0);

// Parses "name=value,name=value" over `base` (the daemon's and load generator's option string).
// Errors (EINVAL, naming the option): an unknown name (with the closest known one, "did you mean
// 'unpin_policy'?"), an item without '=', a name given twice, a malformed or out-of-range value;
// the result is validated.
[[nodiscard]] Result<EngineConfig> parse_engine_options(std::string_view text, EngineConfig base = {});

// The option table as help text: one entry per option, "  name=values  help (range) [default]",
// wrapped to 100 columns, with the defaults of `defaults`.
[[nodiscard]] std::string engine_options_help(const EngineConfig& defaults = {});
// Every option name, in the table's order.
[[nodiscard]] std::vector<std::string_view> engine_option_names();

// "fast", "seed", ... for logs and reports.
[[nodiscard]] std::string_view to_string(Variant v);
[[nodiscard]] std::string_view to_string(UnpinPolicy p);
[[nodiscard]] std::string_view to_string(ExtentStoreKind k);
// The option string that parse_engine_options() turns back into `cfg`: every option in the
// table's order (unpin_limit only when set), each value in the option's own grammar.
[[nodiscard]] std::string to_string(const EngineConfig& cfg);

}  // namespace coiommu::workers
