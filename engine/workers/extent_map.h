// Extents: the unit of coalesced pinning. A run of consecutive gfns mapped by one DMA call is one
// type1 mapping, and type1 v2 cannot unmap part of a mapping (no bisecting), so the run is recorded
// as one extent {head gfn, length} and is unpinned as a whole.
//
// ExtentMap keeps, per gfn, one 32-bit word in a flat NORESERVE array:
//     0                  the gfn is in no extent of ours
//     kHead | len        the head of an extent (len in the low bits with the flat store; 0 with tbb)
//     offset (>= 1)      a member: its distance to the head
// so any member finds its head in O(1). Where an extent's length (its record) lives is the one
// thing that differs between the two stores the engine can use:
//     flat  in the head's word (no extra memory, one cache line per extent)
//     tbb   in a tbb::concurrent_hash_map<head gfn, len> (sparse; a hash lookup per extent)
// tests/bench/workers compares them (the note in the report has the numbers).
//
// Thread-safety: record/erase/length for an extent are called with the PinTable page locks of its
// members held (so no two threads touch the same words at once); head_of() may be called without
// locks and returns a snapshot to be verified under the head's lock. Words are relaxed atomics;
// the page locks give the ordering.
//
// ExtentHandoff: a lock-free multi-producer stack of newly created extent heads, drained by the one
// unpinner thread (pin workers never take a lock to hand extents over). Intrusive: the link of
// head h lives in a flat per-gfn array, so a push allocates nothing. An extent is pushed once, at
// creation, while its page locks are held; it cannot be unpinned (and its head reused) before the
// unpinner drained it, because every unpin drains first while holding the head's lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/workers/config.h"
#include "engine/workers/flat_array.h"

namespace coiommu::workers {

class ExtentMap {
public:
    static constexpr uint32_t kHead = uint32_t{1} << 31;
    static constexpr uint32_t kLenMask = kHead - 1;

    // A map for gfns [0, gfn_count). Errors: those of FlatArray::create.
    [[nodiscard]] static Result<ExtentMap> create(uint64_t gfn_count, ExtentStoreKind kind);

    ExtentMap();
    ~ExtentMap();
    ExtentMap(ExtentMap&&) noexcept;
    ExtentMap& operator=(ExtentMap&&) noexcept;

    // Records [head, head+len). Preconditions: the caller holds the page locks of every member;
    // 1 <= len <= kMaxBatchPages; head + len <= gfn_count; no member is in another extent.
    void record(Gfn head, uint32_t len);
    // Forgets the extent at head. Preconditions: as record(); `len` is its recorded length.
    void erase(Gfn head, uint32_t len);
    // The head of the extent holding gfn, from its word (relaxed, lock-free snapshot).
    [[nodiscard]] std::optional<Gfn> head_of(Gfn gfn) const;
    // Length of the extent whose head is `head`; 0 when `head` is not a head. Hold head's lock.
    [[nodiscard]] uint32_t length(Gfn head) const;
    // Number of live extents (relaxed).
    [[nodiscard]] uint64_t extents() const { return count_->load(std::memory_order_relaxed); }
    [[nodiscard]] ExtentStoreKind kind() const { return kind_; }

private:
    struct TbbStore;

    [[nodiscard]] std::atomic_ref<uint32_t> word(uint64_t gfn) const { return std::atomic_ref<uint32_t>(words_[gfn]); }

    ExtentStoreKind kind_ = ExtentStoreKind::Flat;
    FlatArray<uint32_t> words_;
    std::unique_ptr<TbbStore> tbb_;
    std::unique_ptr<std::atomic<uint64_t>> count_;
};

class ExtentHandoff {
public:
    [[nodiscard]] static Result<ExtentHandoff> create(uint64_t gfn_count);

    ExtentHandoff() = default;
    ExtentHandoff(ExtentHandoff&&) noexcept = default;
    ExtentHandoff& operator=(ExtentHandoff&&) noexcept = default;

    // Any thread. Precondition: head < gfn_count and not currently pushed.
    void push(Gfn head);
    // The unpinner only: takes every pushed head and calls f(Gfn) in push order (oldest first).
    template <class F>
    void drain(F&& f) {
        uint64_t top = top_->exchange(0, std::memory_order_acquire);
        if (top == 0) return;
        // The stack is newest-first; reverse it in place through the links to hand out oldest-first.
        uint64_t reversed = 0;
        while (top != 0) {
            const uint64_t next = link(top - 1).load(std::memory_order_relaxed);
            link(top - 1).store(reversed, std::memory_order_relaxed);
            reversed = top;
            top = next;
        }
        while (reversed != 0) {
            const uint64_t next = link(reversed - 1).load(std::memory_order_relaxed);
            link(reversed - 1).store(0, std::memory_order_relaxed);
            f(Gfn{reversed - 1});
            reversed = next;
        }
    }
    [[nodiscard]] bool empty() const { return top_->load(std::memory_order_relaxed) == 0; }

private:
    [[nodiscard]] std::atomic_ref<uint64_t> link(uint64_t gfn) const { return std::atomic_ref<uint64_t>(links_[gfn]); }

    FlatArray<uint64_t> links_;  // gfn + 1 of the next (older) entry; 0 = end
    std::unique_ptr<std::atomic<uint64_t>> top_ = std::make_unique<std::atomic<uint64_t>>(0);
};

}  // namespace coiommu::workers
