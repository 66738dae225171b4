// FakeBackend: a VFIO type1v2 container in memory, for unit tests and load runs.
//
// It follows the kernel's semantics as measured in a real guest (engine/README.md, "VFIO type1
// semantics"), in the kernel's order of checks:
//  map:   EINVAL for size 0, iova/hva/size not aligned to the smallest page size in
//         iova_pgsizes (4 KiB by default), iova or hva range wrapping, prot with neither read nor
//         write (or unknown bits); then AlreadyMapped (EEXIST) on any overlap; then NoSpace
//         (ENOSPC) when entry_limit mappings are live; then EINVAL when the range is not inside
//         one of iova_ranges. One entry per map call, as type1 makes one vfio_dma per MAP_DMA.
//  unmap: EINVAL for size 0, misalignment, wrap; EINVAL when the range bisects a mapping at
//         either end; otherwise every mapping inside the range is removed and the bytes removed
//         are returned (0 when nothing was mapped).
//
// Latency model (optional): the kernel holds one mutex per container across every map and
// unmap, so the fake busy-waits (spins on steady_clock, never sleeps) *while holding its
// container mutex*: per_call + per_page x pages. A successful map costs per_call + per_page for
// each page mapped, an unmap per_call + per_page for each page removed; EEXIST, ENOSPC, a
// bisect EINVAL and an injected fault cost per_call only; argument EINVALs cost nothing (the
// kernel rejects them before taking the lock).
//
// Fault injection: fail_nth() and fail_if() make chosen calls fail with a chosen errno before
// any check runs. An injected EEXIST or ENOSPC on map becomes the AlreadyMapped / NoSpace
// outcome (exactly what the kernel errno would become); every other errno is an Error.
//
// Shared state (optional, attach()): the mapping set is mirrored into a memfd that someone else
// holds, the way a VFIO container outlives the daemon that mapped into it. A restarted daemon
// attaches to the same memfd and finds every mapping still there; a test or VMM reads it with
// read_shared_state() to check what a dead daemon left. Each mapping is one 32-byte slot,
// published by one release store of its `valid` word after the rest is written, so a process
// killed inside map() or unmap() leaves each mapping wholly present or wholly absent.
//
// Thread-safety: every method may be called from any thread. One mutex guards the mapping set
// and the fault state; live_entries() and entry_limit() are lock-free.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/dma/backend.h"

namespace coiommu::dma {

struct LatencyModel {  // busy-waited inside the container mutex
    std::chrono::nanoseconds map_per_call{0}, map_per_page{0}, unmap_per_call{0}, unmap_per_page{0};
    // One 4 KiB map ≈ 2 µs and one 4 KiB unmap ≈ 3 µs (bare-metal estimates, engine/README.md,
    // "VFIO cost model"), split into a per-call part (syscall, mutex, vfio_dma alloc, IOTLB sync)
    // and a per-page part (pin + iommu_map / unmap + unpin).
    static LatencyModel typical();
};

enum class Op { Map, Unmap };

struct FakeConfig {
    uint64_t entry_limit = 65535;
    uint64_t iova_pgsizes = 0x40201000;                                // 4K|2M|1G as VT-d reports
    std::vector<IovaRange> iova_ranges{{0, (uint64_t{1} << 39) - 1}};  // empty: every iova valid
    std::optional<LatencyModel> latency;                               // nullopt: no latency, no container mutex cost
};

struct FakeMapping {
    Iova iova{};
    Hva hva{};
    uint64_t size = 0;
    Prot prot = Prot::ReadWrite;
};

class FakeBackend final : public DmaBackend {
public:
    explicit FakeBackend(FakeConfig cfg = {});
    ~FakeBackend() override;

    // A memfd holding an empty shared mapping set of `entry_limit` slots (sealed against shrinking
    // and growing). Errors: EINVAL for entry_limit 0 or above 2^24; memfd/ftruncate/fcntl errno.
    [[nodiscard]] static Result<UniqueFd> create_shared_state(uint64_t entry_limit);
    // A fake whose mapping set lives in `state` (create_shared_state), starting with whatever
    // mappings it holds; cfg.entry_limit is replaced by the state's. The state is validated as
    // untrusted input. Errors: EINVAL (bad seals, size, header, a slot out of range or
    // overlapping another); fstat/mmap errno.
    [[nodiscard]] static Result<std::unique_ptr<FakeBackend>> attach(FakeConfig cfg, UniqueFd state);
    // The mappings a shared state holds right now, ascending iova (validated as attach() does).
    [[nodiscard]] static Result<std::vector<FakeMapping>> read_shared_state(int state_fd);

    FakeBackend(const FakeBackend&) = delete;
    FakeBackend& operator=(const FakeBackend&) = delete;

    // Fault injection (thread-safe). fail_nth: the n-th call of `op` from now (1-based) fails
    // with err; several may be armed at once. n == 0 or err == 0 arms nothing.
    void fail_nth(Op op, uint64_t n, int err);
    // Every call for which pred returns an errno fails with it (returns 0 = no fault). Replaces
    // any previous predicate. pred runs under the container mutex: it must not call back into
    // this backend.
    void fail_if(std::function<int(Op, Iova, uint64_t size)> pred);
    // Disarms every fail_nth and the predicate.
    void clear_faults();

    // Inspection (thread-safe, for invariant checks in tests/load runs).
    // Every byte of [iova, iova+size) is covered by mappings (true for size 0; false on wrap).
    [[nodiscard]] bool is_mapped(Iova iova, uint64_t size) const;
    // The mapping containing iova.
    [[nodiscard]] std::optional<FakeMapping> find(Iova iova) const;
    // Snapshot, ascending iova.
    [[nodiscard]] std::vector<FakeMapping> mappings() const;
    [[nodiscard]] const FakeConfig& config() const { return cfg_; }

    [[nodiscard]] Result<MapOutcome> map(Iova iova, Hva hva, uint64_t size, Prot prot) override;
    [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t size) override;
    [[nodiscard]] Result<ContainerInfo> info() const override;
    [[nodiscard]] uint64_t live_entries() const override {
        live_queries_.fetch_add(1, std::memory_order_relaxed);
        return live_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] uint64_t entry_limit() const override { return cfg_.entry_limit; }
    [[nodiscard]] std::string_view name() const override { return "fake"; }
    // How often live_entries() was asked. On a real container each ask is a GET_INFO ioctl, so
    // tests use this to keep the query off the pin and unpin paths.
    [[nodiscard]] uint64_t live_entries_queries() const { return live_queries_.load(std::memory_order_relaxed); }

private:
    struct NthFault {
        Op op;
        uint64_t remaining;  // calls of `op` left until (and including) the failing one
        int err;
    };
    using MapSet = std::map<uint64_t, FakeMapping>;  // keyed by iova
    // What one call decided under the container mutex; turned into a Result after unlocking.
    struct Verdict {
        int err = 0;
        std::string_view why;  // static text
        uint64_t bytes = 0;    // unmap: bytes removed
    };

    [[nodiscard]] Verdict do_map(Iova iova, Hva hva, uint64_t size, Prot prot);
    [[nodiscard]] Verdict do_unmap(Iova iova, uint64_t size);

    // The errno an armed fault injects into this call (0: none). Counts the call for fail_nth.
    [[nodiscard]] int take_fault_locked(Op op, Iova iova, uint64_t size);
    // The mapping whose range contains `addr`, or end().
    [[nodiscard]] MapSet::const_iterator containing_locked(uint64_t addr) const;
    [[nodiscard]] bool in_iova_ranges(uint64_t first, uint64_t last) const;
    void charge(std::chrono::nanoseconds per_call, std::chrono::nanoseconds per_page, uint64_t bytes) const;

    struct Shared;  // the attached state (fake_backend.cc)
    // Mirrors one mapping into / out of the shared state (no-ops without one). Under mu_.
    void share_added_locked(const FakeMapping& m);
    void share_removed_locked(uint64_t iova);

    const FakeConfig cfg_;
    const uint64_t align_mask_;
    std::unique_ptr<Shared> shared_;  // smallest page size in iova_pgsizes, minus one
    mutable std::mutex mu_;           // the container mutex
    MapSet maps_;
    std::vector<NthFault> nth_faults_;
    std::function<int(Op, Iova, uint64_t)> fault_pred_;
    std::atomic<uint64_t> live_{0};  // == maps_.size(), readable without the mutex
    mutable std::atomic<uint64_t> live_queries_{0};
};

}  // namespace coiommu::dma
