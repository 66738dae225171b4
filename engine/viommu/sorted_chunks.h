// SortedChunkMap: an ordered map from uint64_t keys to a 64-bit tag and a small trivially
// copyable value each, as a two-level sorted-array B-tree. BasicMemoryMapper keeps its mappings in
// one (key = IOVA start, tag = IOVA end, value = the MappingInfo).
//
// Layout: a sorted vector of chunks, each entry the chunk's first key and the chunk; a chunk holds
// up to kChunkCapacity (key, tag) pairs in key order and their values, in one block of a slab pool.
// A lookup is a binary search of the chunk vector (contiguous, small: it stays in cache) and one of
// a chunk's pairs (adjacent cache lines, fetched together), so a million keys cost a handful of
// cache misses instead of std::map's ~20 dependent ones. The tag sits next to its key: a lookup
// that needs the neighbour's key and tag (an overlap test) reads no value. Values never move once
// written (a per-chunk slot table says where each is): an insert or erase moves 16-byte pairs and
// 1-byte slot numbers within one chunk.
//
// Invariants (check_invariants() verifies them): no chunk is empty; keys strictly increase across
// the whole map; every entry's first key is its chunk's first key; when there are two chunks or
// more, each holds at least kMinFill (a quarter of kChunkCapacity) entries. A full chunk that
// receives a key splits into halves; a chunk that falls below kMinFill merges with a neighbour
// when both hold at most kMergeLimit (three quarters) together, else takes entries from it until
// they hold half each. Every split, merge or exchange leaves its chunks at least an eighth of the
// capacity away from the next one, so the copies they cost amortise to O(1) entries per call and
// no sequence of calls makes a chunk oscillate.
//
// Memory: chunks come from 64 KiB..2 MiB slabs (detail::SlabPool, huge pages when the kernel
// grants them); a freed chunk is reused, and the slabs are returned by clear() and the destructor.
//
// Errors: the only allocations are a slab and growth of the chunk vector (first insert, split);
// insert() reports their failure as ENOMEM and then leaves the map as it was. erase() and clear()
// never allocate and never fail. No method throws.
//
// Iterators: any insert() or erase() invalidates every iterator. end() is the position after the
// last key; begin() == end() when empty.
//
// Thread-safety: none; callers serialise (BasicMemoryMapper holds its mutex).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
#include <type_traits>
#include <vector>

#include <sys/mman.h>

#include "engine/base/result.h"

namespace coiommu::viommu {

namespace detail {

// Fixed-size blocks carved from slabs that double from 64 KiB up to 2 MiB. A 2 MiB slab is
// 2 MiB-aligned and advised as a transparent huge page (MADV_HUGEPAGE; a hint the kernel may
// ignore), so a map of 10^6 keys spreads its chunks over a few dozen TLB entries instead of
// thousands of 4 KiB pages. Freed blocks are reused (LIFO); the slabs go back only with
// release() or the pool. allocate() returns null when a slab cannot be allocated; nothing throws.
// Not thread-safe.
class SlabPool {
public:
    static constexpr size_t kMinSlabBytes = size_t{64} << 10;
    static constexpr size_t kHugeSlabBytes = size_t{2} << 20;

    // Preconditions: align is a power of two, block_bytes a multiple of it, and at most
    // kMinSlabBytes.
    SlabPool(size_t block_bytes, size_t align) : block_bytes_(block_bytes), align_(align) {}
    SlabPool(const SlabPool&) = delete;
    SlabPool& operator=(const SlabPool&) = delete;
    ~SlabPool() { release(); }

    [[nodiscard]] void* allocate() {
        if (free_ != nullptr) {
            FreeBlock* b = free_;
            free_ = b->next;
            return b;
        }
        // Blocks never handed out come from the newest slab in address order, untouched until
        // then (a slab costs memory only as it fills).
        if (static_cast<size_t>(bump_end_ - bump_) < block_bytes_ && !grow()) return nullptr;
        void* b = bump_;
        bump_ += block_bytes_;
        return b;
    }
    // Precondition: `p` came from allocate() since the last release().
    void deallocate(void* p) { free_ = new (p) FreeBlock{free_}; }
    // Frees every slab: every block handed out is gone.
    void release() {
        for (const Slab& s : slabs_) ::operator delete (s.base, std::align_val_t{s.align});
        slabs_.clear();
        free_ = nullptr;
        bump_ = bump_end_ = nullptr;
        slab_bytes_ = 0;
    }

private:
    struct FreeBlock {
        FreeBlock* next;
    };
    struct Slab {
        void* base;
        size_t align;
    };

    [[nodiscard]] bool grow() {
        try {
            slabs_.reserve(slabs_.size() + 1);  // slabs double in size: few, and rare
        } catch (const std::bad_alloc&) {
            return false;
        }
        const size_t bytes = std::clamp(slab_bytes_, kMinSlabBytes, kHugeSlabBytes);
        const size_t align = bytes == kHugeSlabBytes ? kHugeSlabBytes : align_;
        void* base = ::operator new (bytes, std::align_val_t{align}, std::nothrow);
        if (base == nullptr) return false;
        if (bytes == kHugeSlabBytes) (void)::madvise(base, bytes, MADV_HUGEPAGE);  // only a hint
        slabs_.push_back(Slab{base, align});
        slab_bytes_ += bytes;
        bump_ = static_cast<std::byte*>(base);
        bump_end_ = bump_ + bytes;
        return true;
    }

    const size_t block_bytes_;
    const size_t align_;
    FreeBlock* free_ = nullptr;
    std::byte* bump_ = nullptr;  // [bump_, bump_end_): the newest slab's blocks not handed out yet
    std::byte* bump_end_ = nullptr;
    std::vector<Slab> slabs_;
    size_t slab_bytes_ = 0;  // all slabs' bytes: the next slab's size, clamped
};

}  // namespace detail

template <class V, uint32_t kChunkCapacity = 64>
class SortedChunkMap {
    static_assert(std::is_trivially_copyable_v<V> && std::is_default_constructible_v<V>, "entries move with memcpy");
    static_assert(kChunkCapacity >= 4, "a split must leave both halves above kMinFill");
    static_assert(kChunkCapacity <= 256, "slot numbers are bytes");

public:
    static constexpr uint32_t kCapacity = kChunkCapacity;
    static constexpr uint32_t kMinFill = kChunkCapacity / 4;
    static constexpr uint32_t kMergeLimit = kChunkCapacity * 3 / 4;

    class const_iterator {
    public:
        using iterator_category = std::bidirectional_iterator_tag;
        using value_type = V;
        using difference_type = std::ptrdiff_t;
        using pointer = const V*;
        using reference = const V&;

        const_iterator() = default;
        // Preconditions for key(), tag(), value(), * and ->: not end().
        [[nodiscard]] uint64_t key() const { return chunk().pairs[index_].key; }
        [[nodiscard]] uint64_t tag() const { return chunk().pairs[index_].tag; }
        [[nodiscard]] const V& value() const { return chunk().value(index_); }
        const V& operator*() const { return value(); }
        const V* operator->() const { return &value(); }
        // Precondition: not end().
        const_iterator& operator++() {
            if (++index_ == chunk().size) {
                ++chunk_;
                index_ = 0;
            }
            return *this;
        }
        // Precondition: not begin().
        const_iterator& operator--() {
            if (index_ == 0) {
                --chunk_;
                index_ = chunk().size;
            }
            --index_;
            return *this;
        }
        const_iterator operator++(int) {
            const_iterator old = *this;
            ++*this;
            return old;
        }
        const_iterator operator--(int) {
            const_iterator old = *this;
            --*this;
            return old;
        }
        friend bool operator==(const const_iterator& a, const const_iterator& b) {
            return a.chunk_ == b.chunk_ && a.index_ == b.index_;
        }

    private:
        friend class SortedChunkMap;
        // Normalised: index_ < that chunk's size, or (chunk count, 0) for end().
        const_iterator(const SortedChunkMap* map, size_t chunk, uint32_t index)
            : map_(map), chunk_(chunk), index_(index) {}
        [[nodiscard]] const auto& chunk() const { return *map_->chunks_[chunk_].chunk; }
        const SortedChunkMap* map_ = nullptr;
        size_t chunk_ = 0;
        uint32_t index_ = 0;
    };

    SortedChunkMap() = default;
    SortedChunkMap(const SortedChunkMap&) = delete;
    SortedChunkMap& operator=(const SortedChunkMap&) = delete;
    ~SortedChunkMap() = default;  // the pool frees every chunk

    [[nodiscard]] size_t size() const { return size_; }
    [[nodiscard]] bool empty() const { return size_ == 0; }
    [[nodiscard]] size_t chunk_count() const { return chunks_.size(); }

    [[nodiscard]] const_iterator begin() const { return {this, 0, 0}; }
    [[nodiscard]] const_iterator end() const { return {this, chunks_.size(), 0}; }

    // The first position whose key is >= `key` (end() if none).
    [[nodiscard]] const_iterator lower_bound(uint64_t key) const {
        if (chunks_.empty()) return end();
        const size_t c = chunk_for(key);
        return normalised(c, chunks_[c].chunk->lower_bound(key));
    }
    // The first position whose key is > `key` (end() if none).
    [[nodiscard]] const_iterator upper_bound(uint64_t key) const {
        if (key == UINT64_MAX) return end();
        return lower_bound(key + 1);
    }
    // The position of `key`, or end().
    [[nodiscard]] const_iterator find(uint64_t key) const {
        const const_iterator it = lower_bound(key);
        return it != end() && it.key() == key ? it : end();
    }

    // Inserts `key` with `tag` and `value` at `hint`, which must be lower_bound(key) (the mapper
    // has just computed it). Errors: EEXIST when `key` is present, EINVAL when `hint` is not where
    // `key` belongs, ENOMEM when an allocation failed. On any error nothing changed.
    [[nodiscard]] Status insert(const_iterator hint, uint64_t key, uint64_t tag, const V& value) {
        if (hint != end() && hint.key() == key) return make_error(EEXIST, "key present");
        if ((hint != end() && hint.key() < key) || (hint != begin() && std::prev(hint).key() >= key)) {
            return make_error(EINVAL, "misplaced hint");
        }
        const Pair pair{key, tag};
        if (chunks_.empty()) return insert_first(pair, value);
        // A key between two chunks goes to the end of the lower one unless only the upper one has
        // room; a key before every chunk goes to the front of the first.
        size_t c = hint.chunk_;
        uint32_t i = hint.index_;
        if (i == 0 && c > 0 && (c == chunks_.size() || chunks_[c - 1].chunk->size < kChunkCapacity)) {
            --c;
            i = chunks_[c].chunk->size;
        }
        return insert_at(c, i, pair, value);
    }
    // insert() at lower_bound(key).
    [[nodiscard]] Status insert(uint64_t key, uint64_t tag, const V& value) {
        return insert(lower_bound(key), key, tag, value);
    }

    // Removes [first, last). Precondition: first <= last, both from this map since the last change.
    void erase(const_iterator first, const_iterator last) {
        if (first == last) return;
        const size_t c0 = first.chunk_;
        const size_t c1 = last.chunk_;
        if (c0 == c1) {
            chunks_[c0].chunk->erase(first.index_, last.index_);
            size_ -= last.index_ - first.index_;
            sync_first(c0);
            fix_underflow(c0);
            return;
        }
        // The tail of c0, every chunk strictly between, and the head of c1.
        size_t removed = chunks_[c0].chunk->size - first.index_;
        if (c1 < chunks_.size() && last.index_ > 0) {
            chunks_[c1].chunk->erase(0, last.index_);
            removed += last.index_;
            sync_first(c1);
        }
        for (size_t c = c0 + 1; c < c1; ++c) removed += chunks_[c].chunk->size;
        chunks_[c0].chunk->size = first.index_;
        const size_t drop_from = first.index_ == 0 ? c0 : c0 + 1;
        drop_chunks(drop_from, c1);
        size_ -= removed;
        // Only the chunks now at drop_from - 1 and drop_from can be under-filled.
        const size_t p = drop_from > 0 ? drop_from - 1 : 0;
        if (p + 1 < chunks_.size()) fix_underflow(p + 1);
        if (!chunks_.empty()) fix_underflow(std::min(p, chunks_.size() - 1));
    }
    // Removes the entry at `pos` (not end()).
    void erase(const_iterator pos) { erase(pos, std::next(pos)); }

    void clear() {
        chunks_.clear();
        pool_.release();
        size_ = 0;
    }

    // Whether every invariant in the header comment holds (tests).
    [[nodiscard]] bool check_invariants() const {
        size_t total = 0;
        uint64_t prev_last = 0;
        for (size_t c = 0; c < chunks_.size(); ++c) {
            const Chunk& ch = *chunks_[c].chunk;
            if (ch.size == 0 || ch.size > kChunkCapacity || chunks_[c].first != ch.pairs[0].key) return false;
            if (chunks_.size() > 1 && ch.size < kMinFill) return false;
            for (uint32_t i = 0; i < ch.size; ++i) {
                if ((c > 0 || i > 0) && ch.pairs[i].key <= prev_last) return false;
                prev_last = ch.pairs[i].key;
            }
            total += ch.size;
        }
        return total == size_;
    }

private:
    struct Pair {
        uint64_t key;
        uint64_t tag;
    };

    // pairs[0, size) are sorted by key; values stay where they were written and slot[i] says where
    // the i-th pair's value is. slot[] is a permutation of 0 .. kChunkCapacity - 1 whose first
    // `size` entries are in use; the rest are free.
    struct alignas(64) Chunk {
        Pair pairs[kChunkCapacity];
        uint32_t size = 0;
        uint8_t slot[kChunkCapacity];
        V values[kChunkCapacity];

        Chunk() {
            for (uint32_t i = 0; i < kChunkCapacity; ++i) slot[i] = static_cast<uint8_t>(i);
        }
        [[nodiscard]] const V& value(uint32_t i) const { return values[slot[i]]; }

        // The first index whose key is >= `key` (size if none). Every pair line and the slot
        // lines are fetched together first, without waiting for size: the probes then wait for
        // one miss, not one each.
        [[nodiscard]] uint32_t lower_bound(uint64_t key) const {
            for (uint32_t i = 0; i < kChunkCapacity; i += 64 / sizeof(Pair)) __builtin_prefetch(&pairs[i]);
            __builtin_prefetch(&size);
            __builtin_prefetch(&slot[kChunkCapacity - 1]);
            // Branch-free: the probes of a random key are coin flips a predictor always loses.
            const Pair* base = pairs;
            for (uint32_t n = size; n > 1;) {
                const uint32_t half = n / 2;
                base = base[half].key < key ? base + half : base;
                n -= half;
            }
            return static_cast<uint32_t>(base - pairs) + (base->key < key ? 1 : 0);
        }
        // Inserts at index i (size < capacity), the value in the first free slot.
        void insert(uint32_t i, Pair pair, const V& value) {
            const uint8_t free_slot = slot[size];
            std::memmove(&pairs[i + 1], &pairs[i], (size - i) * sizeof(Pair));
            std::memmove(&slot[i + 1], &slot[i], size - i);
            pairs[i] = pair;
            slot[i] = free_slot;
            values[free_slot] = value;
            ++size;
        }
        // Removes indices [from, to); their slots join the free ones.
        void erase(uint32_t from, uint32_t to) {
            uint8_t freed[kChunkCapacity];
            const uint32_t n = to - from;
            std::memcpy(freed, &slot[from], n);
            std::memmove(&pairs[from], &pairs[to], (size - to) * sizeof(Pair));
            std::memmove(&slot[from], &slot[to], size - to);
            size -= n;
            std::memcpy(&slot[size], freed, n);
        }
        // Appends `src`'s entries [from, from + n) (src unchanged).
        void append(const Chunk& src, uint32_t from, uint32_t n) {
            for (uint32_t j = 0; j < n; ++j) {
                pairs[size + j] = src.pairs[from + j];
                values[slot[size + j]] = src.value(from + j);
            }
            size += n;
        }
        // Prepends `src`'s last n entries (src unchanged).
        void prepend_tail_of(const Chunk& src, uint32_t n) {
            uint8_t taken[kChunkCapacity];
            std::memcpy(taken, &slot[size], n);
            std::memmove(&pairs[n], &pairs[0], size * sizeof(Pair));
            std::memmove(&slot[n], &slot[0], size);
            std::memcpy(&slot[0], taken, n);
            for (uint32_t j = 0; j < n; ++j) {
                pairs[j] = src.pairs[src.size - n + j];
                values[slot[j]] = src.value(src.size - n + j);
            }
            size += n;
        }
    };
    static_assert(std::is_trivially_destructible_v<Chunk>, "the pool frees chunks without destroying them");
    struct Entry {
        uint64_t first = 0;      // == chunk->pairs[0].key
        Chunk* chunk = nullptr;  // a block of pool_
    };

    // The chunk a lookup of `key` searches: the last whose first key is <= key, or the first.
    // Branch-free like Chunk::lower_bound; precondition: chunks_ not empty.
    [[nodiscard]] size_t chunk_for(uint64_t key) const {
        const Entry* base = chunks_.data();
        for (size_t n = chunks_.size(); n > 1;) {
            const size_t half = n / 2;
            // Both places the next probe can be: its load then overlaps this one's.
            __builtin_prefetch(&base[(n - half) / 2]);
            __builtin_prefetch(&base[half + (n - half) / 2]);
            base = base[half].first <= key ? base + half : base;
            n -= half;
        }
        return static_cast<size_t>(base - chunks_.data());
    }
    [[nodiscard]] const_iterator normalised(size_t c, uint32_t i) const {
        if (i == chunks_[c].chunk->size) return {this, c + 1, 0};
        return {this, c, i};
    }
    void sync_first(size_t c) { chunks_[c].first = chunks_[c].chunk->pairs[0].key; }

    // Room for one more chunk entry, and an empty chunk; null when either allocation failed.
    [[nodiscard]] Chunk* reserve_chunk() {
        if (chunks_.size() == chunks_.capacity()) {
            try {
                chunks_.reserve(std::max<size_t>(16, 2 * chunks_.capacity()));  // geometric: reserve() is exact
            } catch (const std::bad_alloc&) {
                return nullptr;
            }
        }
        void* block = pool_.allocate();
        return block == nullptr ? nullptr : new (block) Chunk();
    }
    void drop_chunks(size_t from, size_t to) {
        for (size_t c = from; c < to; ++c) pool_.deallocate(chunks_[c].chunk);
        chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(from),
                      chunks_.begin() + static_cast<std::ptrdiff_t>(to));
    }

    [[nodiscard]] Status insert_first(Pair pair, const V& value) {
        Chunk* chunk = reserve_chunk();
        if (chunk == nullptr) return make_error(ENOMEM, "out of memory");
        chunk->insert(0, pair, value);
        chunks_.push_back(Entry{pair.key, chunk});  // capacity reserved: cannot throw
        size_ = 1;
        return ok();
    }

    // Inserts at index i of chunk c, splitting it first when full.
    [[nodiscard]] Status insert_at(size_t c, uint32_t i, Pair pair, const V& value) {
        if (chunks_[c].chunk->size == kChunkCapacity) {
            Chunk* right = reserve_chunk();
            if (right == nullptr) return make_error(ENOMEM, "out of memory");
            Chunk& left = *chunks_[c].chunk;
            constexpr uint32_t kHalf = kChunkCapacity / 2;
            right->append(left, kHalf, kChunkCapacity - kHalf);
            left.size = kHalf;  // the moved entries' slots are the free ones now
            chunks_.insert(chunks_.begin() + static_cast<std::ptrdiff_t>(c) + 1, Entry{right->pairs[0].key, right});
            if (i > kHalf) {
                ++c;
                i -= kHalf;
            }
        }
        chunks_[c].chunk->insert(i, pair, value);
        sync_first(c);
        ++size_;
        return ok();
    }

    // Restores kMinFill for chunk c (every other chunk already meets it), merging with or
    // borrowing from a neighbour.
    void fix_underflow(size_t c) {
        while (chunks_.size() > 1 && chunks_[c].chunk->size < kMinFill) {
            const size_t l = c + 1 < chunks_.size() ? c : c - 1;
            Chunk& left = *chunks_[l].chunk;
            Chunk& right = *chunks_[l + 1].chunk;
            const uint32_t total = left.size + right.size;
            if (total <= kMergeLimit) {
                left.append(right, 0, right.size);
                drop_chunks(l + 1, l + 2);
                sync_first(l);
                c = l;  // the merged chunk may still be short when both were
                continue;
            }
            const uint32_t want_left = total / 2;
            if (left.size < want_left) {
                const uint32_t n = want_left - left.size;
                left.append(right, 0, n);
                right.erase(0, n);
            } else {
                right.prepend_tail_of(left, left.size - want_left);
                left.size = want_left;
            }
            sync_first(l);
            sync_first(l + 1);
            return;
        }
    }

    detail::SlabPool pool_{sizeof(Chunk), alignof(Chunk)};
    std::vector<Entry> chunks_;
    size_t size_ = 0;
};

}  // namespace coiommu::viommu
