#include "engine/workers/extent_map.h"

#include <tbb/concurrent_hash_map.h>

#include <algorithm>
#include <memory>
#include <utility>

namespace coiommu::workers {

// Presized (presizing halves TBB's insert cost: engine/README.md, "VFIO cost model"); the default
// dma_entry_limit bounds live extents at 65535 anyway, and a guest of n gfns holds at most n extents,
// so a small guest (a test, a fuzz input) does not pay for 65,536 buckets it can never fill.
// std::allocator rather than tbb_allocator: tbbmalloc's free -> malloc reuse is invisible to
// ThreadSanitizer (it reports node construction racing the previous owner's unlock), and malloc is
// just as fast for one node per extent.
struct ExtentMap::TbbStore {
    using Map = tbb::concurrent_hash_map<uint64_t, uint32_t, tbb::tbb_hash_compare<uint64_t>,
                                         std::allocator<std::pair<const uint64_t, uint32_t>>>;
    explicit TbbStore(uint64_t gfn_count) : map{std::min<Map::size_type>(Map::size_type{1} << 16, gfn_count)} {}
    Map map;
};

ExtentMap::ExtentMap() : count_(std::make_unique<std::atomic<uint64_t>>(0)) {}
ExtentMap::~ExtentMap() = default;
ExtentMap::ExtentMap(ExtentMap&&) noexcept = default;
ExtentMap& ExtentMap::operator=(ExtentMap&&) noexcept = default;

Result<ExtentMap> ExtentMap::create(uint64_t gfn_count, ExtentStoreKind kind) {
    auto words = FlatArray<uint32_t>::create(gfn_count);
    if (!words) return coiommu::unexpected(with_context(words.error(), "extent map"));
    ExtentMap m;
    m.kind_ = kind;
    m.words_ = std::move(*words);
    if (kind == ExtentStoreKind::Tbb) m.tbb_ = std::make_unique<TbbStore>(gfn_count);
    return m;
}

void ExtentMap::record(Gfn head, uint32_t len) {
    const uint64_t h = raw(head);
    if (kind_ == ExtentStoreKind::Tbb) {
        TbbStore::Map::accessor a;
        tbb_->map.insert(a, h);
        a->second = len;
        word(h).store(kHead, std::memory_order_relaxed);
    } else {
        word(h).store(kHead | len, std::memory_order_relaxed);
    }
    for (uint32_t i = 1; i < len; ++i) word(h + i).store(i, std::memory_order_relaxed);
    count_->fetch_add(1, std::memory_order_relaxed);
}

void ExtentMap::erase(Gfn head, uint32_t len) {
    const uint64_t h = raw(head);
    if (kind_ == ExtentStoreKind::Tbb) tbb_->map.erase(h);
    for (uint32_t i = 0; i < len; ++i) word(h + i).store(0, std::memory_order_relaxed);
    count_->fetch_sub(1, std::memory_order_relaxed);
}

std::optional<Gfn> ExtentMap::head_of(Gfn gfn) const {
    if (raw(gfn) >= words_.size()) return std::nullopt;
    const uint32_t w = word(raw(gfn)).load(std::memory_order_relaxed);
    if (w == 0) return std::nullopt;
    if ((w & kHead) != 0) return gfn;
    if (w > raw(gfn)) return std::nullopt;  // a torn or foreign value; never index below gfn 0
    return Gfn{raw(gfn) - w};
}

uint32_t ExtentMap::length(Gfn head) const {
    if (raw(head) >= words_.size()) return 0;
    const uint32_t w = word(raw(head)).load(std::memory_order_relaxed);
    if ((w & kHead) == 0) return 0;
    if (kind_ == ExtentStoreKind::Flat) return w & kLenMask;
    TbbStore::Map::const_accessor a;
    return tbb_->map.find(a, raw(head)) ? a->second : 0;
}

Result<ExtentHandoff> ExtentHandoff::create(uint64_t gfn_count) {
    auto links = FlatArray<uint64_t>::create(gfn_count);
    if (!links) return coiommu::unexpected(with_context(links.error(), "extent handoff"));
    ExtentHandoff h;
    h.links_ = std::move(*links);
    return h;
}

void ExtentHandoff::push(Gfn head) {
    const uint64_t node = raw(head) + 1;
    uint64_t top = top_->load(std::memory_order_relaxed);
    do {
        link(raw(head)).store(top, std::memory_order_relaxed);
        // Release: the link store above is visible to the drainer that acquires this top. A failed
        // CAS reloads `top` and the link is rewritten before the next attempt.
    } while (!top_->compare_exchange_weak(top, node, std::memory_order_release, std::memory_order_relaxed));
}

}  // namespace coiommu::workers
