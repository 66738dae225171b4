// fuzz_dtt_pin: request decoding, the DTT walk, pin and unpin over guest RAM the fuzzer writes,
// with the FakeBackend as the oracle of what is mapped.
//
// The input picks a guest RAM layout (memfd-backed GuestMemory, one or two regions, gaps and a
// high base among them), a DTT root and level count, and one of the two pin paths:
//   core  crosvm's serial path (the seed pinner): decode_request + process_request, unpin_page;
//   fast  the throughput engine's path: serve_request (coalesced extents) and the ExtentUnpinner
//         (unpin_extent, LRU ticks, balloon, teardown).
// Then a sequence of operations: guest writes (raw words, DTT upper entries, leaf entries, batch
// headers and gfn lists), pin requests as slot values, unpins, LRU ticks, balloon ranges, fault
// injection in the backend, mappings made by "someone else" in the same container, park.
//
// Aborts (__builtin_trap via FUZZ_CHECK) when, after any operation that asks and after the input:
//  - a mapping the engine made lies outside guest RAM, or maps an hva other than its GPA's;
//  - the PinTable (the host's record) and the FakeBackend's mapping set disagree: a recorded page
//    with no mapping of ours, a mapping of ours whose pages are not recorded, a count mismatch,
//    (fast) a mapping that is not exactly one recorded extent, (core) a mapping that is not 4 KiB;
//  - a mapping made by someone else was removed or changed;
//  - a slot was not completed (left non-zero) by the fast path;
//  - teardown (fast) leaves a mapping of ours, a record or an extent behind.
// Everything runs on this thread; no thread is started.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/base/addr.h"
#include "engine/base/domain.h"
#include "engine/core/dtt.h"
#include "engine/core/pin_table.h"
#include "engine/core/pinner.h"
#include "engine/core/request.h"
#include "engine/core/spec.h"
#include "engine/dma/fake_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"
#include "engine/telemetry/request_trace.h"
#include "engine/workers/arena.h"
#include "engine/workers/extent_map.h"
#include "engine/workers/fast_pinner.h"
#include "engine/workers/park_gate.h"
#include "engine/workers/unpinner.h"
#include "tests/fuzz/fuzz_support.h"

namespace coiommu::fuzz {
namespace {

constexpr uint16_t kBdf = 0x0018;       // the one endpoint
constexpr uint16_t kOtherBdf = 0x0020;  // not an endpoint
constexpr uint64_t kMaxBatch = 64;      // RequestLimits::max_batch_pages
constexpr std::size_t kMaxOps = 256;

// Guest RAM layouts, in gfns: {first gfn, pages} per region.
struct Layout {
    std::vector<RegionSpec> regions;
};
std::vector<Layout> make_layouts() {
    auto r = [](uint64_t gfn, uint64_t pages) { return RegionSpec{Gpa{gfn << kPageShift}, pages << kPageShift}; };
    return {
        Layout{{r(0, 64)}},              // one region from 0
        Layout{{r(0, 32), r(48, 32)}},   // a gap of 16 pages
        Layout{{r(1024, 48)}},           // a high base: gfns below it are not RAM
        Layout{{r(16, 16), r(33, 40)}},  // a one-page gap, nothing at gfn 0
    };
}

enum Op : uint8_t {
    kWrite64 = 0,  // page, offset, value: a raw guest word
    kLink,         // table page, index, target, low bits: an upper DTT entry
    kLeaf,         // leaf page, index, value: a leaf DTT entry
    kPinRaw,       // u64 slot value
    kPinSingle,    // gfn code: (gfn << 16) | bdf
    kPinBatch,     // header page, offset, bdf selector, n, n gfn codes
    kUnpin,        // gfn code, force
    kTick,         // one LRU tick (fast) / a Force::No sweep over the record (core)
    kBalloon,      // gfn code, count
    kFault,        // op, n, errno selector: FakeBackend::fail_nth
    kForeign,      // gfn code, pages: someone else maps into the container
    kPark,         // toggles the park gate (fast)
    kCheck,        // check every invariant now
    kOpCount,
};

// The fuzzer's view of guest RAM: a page index addresses the RAM pages in order; a gfn code
// with bit 15 set is a raw gfn (anything, RAM or not).
class Guest {
public:
    explicit Guest(const GuestMemory& mem) : mem_(mem) {
        for (const auto& r : mem.regions()) {
            for (uint64_t p = 0; p < r.size >> kPageShift; ++p) pages_.push_back(Gfn{(raw(r.base) >> kPageShift) + p});
        }
    }
    [[nodiscard]] Gfn page(uint16_t index) const { return pages_[index % pages_.size()]; }
    [[nodiscard]] Gfn gfn(uint16_t code) const {
        if ((code & 0x8000) != 0) return Gfn{code & 0x7fffu};
        return page(code);
    }
    [[nodiscard]] static Gpa gpa_of(Gfn g, uint64_t offset_bytes = 0) {
        return Gpa{(raw(g) << kPageShift) + offset_bytes};
    }
    template <class T>
    void write(Gpa at, const T& v) const {
        (void)mem_.write_obj(at, v);  // outside RAM: dropped, as a guest cannot write there
    }
    [[nodiscard]] uint64_t pages() const { return pages_.size(); }

private:
    const GuestMemory& mem_;
    std::vector<Gfn> pages_;
};

int errno_of(uint8_t sel) {
    static constexpr int kErrnos[] = {EEXIST, ENOSPC, EINVAL, ENOMEM, EFAULT, EIO};
    return kErrnos[sel % std::size(kErrnos)];
}

struct ForeignMapping {
    Iova iova{};
    uint64_t size = 0;
};

// Everything of one input.
class Harness {
public:
    enum class Path : uint8_t { Core, Fast };

    Harness(const GuestMemory& mem, Path path, workers::Coalesce coalesce, workers::ExtentStoreKind store,
            uint64_t entry_limit, Gpa root, uint64_t levels)
        : mem_(mem),
          guest_(mem),
          path_(path),
          backend_(fake_config(entry_limit)),
          table_(core::PinTable::create(mem.gfn_span()).value()),
          extents_(workers::ExtentMap::create(mem.gfn_span(), store).value()),
          handoff_(workers::ExtentHandoff::create(mem.gfn_span()).value()),
          endpoints_(std::vector<uint16_t>{kBdf}),
          stats_(1),
          env_{mem,
               backend_,
               table_,
               extents_,
               handoff_,
               endpoints_,
               stats_.gauges(),
               core::RequestLimits{kMaxBatch},
               coalesce,
               0,
               true,
               {}},
          ctx_{mem, backend_, table_},
          root_(root),
          levels_(levels) {
        arena_ = workers::VcpuArena::create(0, GuestAtomicU64(&slot_), -1, kMaxBatch, stats_.shard(0)).value();
    }

    // The guest wrote its DTT: what ACTIVATE does (FastEngine::prepare, SeedPinner's walker).
    void activate() {
        auto walker = core::DttWalker::create(mem_, root_, levels_);
        if (walker) {
            walker_ = *walker;
            arena_->walker = *walker;
        } else {
            env_.dtt_error = walker.error().message();
            FUZZ_TRACE("DTT refused: %s\n", env_.dtt_error.c_str());
        }
        workers::UnpinEnv uenv{mem_, backend_, table_, extents_, handoff_, stats_.gauges(), stats_.add_shard(), 0};
        unpinner_ = workers::ExtentUnpinner::create(
                        uenv, walker_, workers::LruParams{workers::UnpinPolicy::Lru, std::nullopt, 2}, gate_)
                        .value();
    }

    void run(Reader& in) {
        for (std::size_t n = 0; n < kMaxOps && !in.exhausted(); ++n) step(in);
        check();
        teardown();
    }

private:
    static dma::FakeConfig fake_config(uint64_t entry_limit) {
        dma::FakeConfig c;
        c.entry_limit = entry_limit;
        return c;
    }

    void step(Reader& in) {
        switch (in.u8() % kOpCount) {
            case kWrite64: {
                const Gfn p = guest_.page(in.u16());
                const uint64_t off = (in.u16() % kPageSize) & ~uint64_t{7};
                guest_.write(Guest::gpa_of(p, off), in.u64());
                break;
            }
            case kLink: {
                const Gfn table = guest_.page(in.u16());
                const uint64_t index = in.u16() % core::kDttUpperEntries;
                const Gfn target = guest_.gfn(in.u16());
                const uint64_t low = in.u16() & 0xfff;  // PRESENT and whatever else the guest sets
                guest_.write(Guest::gpa_of(table, index * sizeof(core::DttUpperEntry)),
                             (raw(target) << kPageShift) | low);
                break;
            }
            case kLeaf: {
                const Gfn leaf = guest_.page(in.u16());
                const uint64_t index = in.u16() % core::kDttLeafEntries;
                guest_.write(Guest::gpa_of(leaf, index * sizeof(core::DttLeafEntry)), in.u32());
                break;
            }
            case kPinRaw: pin(in.u64()); break;
            case kPinSingle: {
                const Gfn g = guest_.gfn(in.u16());
                const uint16_t bdf = (in.u8() & 1) != 0 ? kOtherBdf : kBdf;
                pin((raw(g) << core::kSingleGfnShift) | bdf);
                break;
            }
            case kPinBatch: pin_batch(in); break;
            case kUnpin: {
                const Gfn g = guest_.gfn(in.u16());
                unpin(g, (in.u8() & 1) != 0 ? core::Force::Yes : core::Force::No);
                break;
            }
            case kTick: tick(); break;
            case kBalloon: {
                const Gfn first = guest_.gfn(in.u16());
                const uint16_t count = in.u16();
                balloon(GfnRange{first, (count & 0x8000) != 0 ? ~uint64_t{0} : count});
                break;
            }
            case kFault: {
                const dma::Op op = (in.u8() & 1) != 0 ? dma::Op::Unmap : dma::Op::Map;
                const uint64_t nth = 1 + in.u8() % 4;
                backend_.fail_nth(op, nth, errno_of(in.u8()));
                break;
            }
            case kForeign: {
                const Gfn g = guest_.gfn(in.u16());
                const uint64_t size = (1 + in.u8() % 4) * kPageSize;
                const Iova iova{raw(g) << kPageShift};
                // Someone else's mapping: an hva of its own, not necessarily guest RAM.
                auto r = backend_.map(iova, Hva{(uint64_t{1} << 46) | raw(iova)}, size, dma::Prot::ReadWrite);
                if (r && *r == dma::MapOutcome::Mapped) foreign_.push_back(ForeignMapping{iova, size});
                break;
            }
            case kPark:
                if (gate_.parked()) {
                    gate_.unpark();
                } else {
                    gate_.park();
                }
                break;
            case kCheck: check(); break;
            default: break;
        }
    }

    void pin(uint64_t value) {
        if (path_ == Path::Fast) {
            slot_ = value;
            const workers::ServeReport rep = workers::serve_request(env_, *arena_, value, 0, trace_);
            FUZZ_TRACE("fast pin %#llx: result %d pages %llu newly %llu calls %llu\n",
                       static_cast<unsigned long long>(value), rep.result, static_cast<unsigned long long>(rep.pages),
                       static_cast<unsigned long long>(rep.newly_pinned),
                       static_cast<unsigned long long>(rep.dma_calls));
            // The guest spins on its slot: every request, failed or not, must complete it.
            FUZZ_CHECK(slot_ == 0);
            return;
        }
        auto req = core::decode_request(value, mem_, endpoints_, core::RequestLimits{kMaxBatch});
        if (!req) {
            FUZZ_TRACE("core pin %#llx: %s\n", static_cast<unsigned long long>(value), req.error().message().c_str());
            return;
        }
        FUZZ_CHECK(req->nr_pages <= kMaxBatch);
        if (!walker_) return;
        const core::RequestReport rep = core::process_request(ctx_, *walker_, *req);
        FUZZ_TRACE("core pin %#llx: done %llu pinned %llu already %llu failed %llu%s%s\n",
                   static_cast<unsigned long long>(value), static_cast<unsigned long long>(rep.pages_done),
                   static_cast<unsigned long long>(rep.pinned), static_cast<unsigned long long>(rep.already_pinned),
                   static_cast<unsigned long long>(rep.map_failed + rep.no_space), rep.first_error ? ": " : "",
                   rep.first_error ? rep.first_error->message().c_str() : "");
        FUZZ_CHECK(rep.pages_done <= req->nr_pages);
    }

    void pin_batch(Reader& in) {
        const Gfn p = guest_.page(in.u16());
        const uint64_t off = (in.u16() % kPageSize) & ~uint64_t{7};
        const uint8_t sel = in.u8();
        const uint8_t n = in.u8() % (kMaxBatch + 1);
        const Gpa at = Guest::gpa_of(p, off);
        core::PinPageInfo info{};
        info.bdf = (sel & 1) != 0 ? kOtherBdf : kBdf;
        // bit 1: a declared count of the fuzzer's own (E2BIG, a list running off RAM).
        info.nr_pages = (sel & 2) != 0 ? in.u64() : n;
        guest_.write(at, info);
        for (uint8_t i = 0; i < n; ++i) {
            guest_.write(Guest::gpa_of(p, off + sizeof info + i * core::kPinPageGfnSize), raw(guest_.gfn(in.u16())));
        }
        pin(raw(at) | core::kPinPagesInBatch);
    }

    void unpin(Gfn g, core::Force force) {
        if (path_ == Path::Core) {
            if (walker_) (void)core::unpin_page(ctx_, *walker_, g, force);
            return;
        }
        if (gate_.parked()) return;  // unpin_extent and balloon wait for unpark: not on one thread
        const auto head = extents_.head_of(g);
        if (head) (void)unpinner_->unpin_extent(*head, force);
    }

    void tick() {
        if (path_ == Path::Fast) {
            unpinner_->tick();
            return;
        }
        // The seed pinner's scan, over what the record says we map.
        if (!walker_) return;
        std::vector<Gfn> mapped;
        (void)table_.for_each_mapped(Gfn{0}, table_.size(), [&](Gfn g) {
            mapped.push_back(g);
            return true;
        });
        for (Gfn g : mapped) (void)core::unpin_page(ctx_, *walker_, g, core::Force::No);
    }

    void balloon(const GfnRange& range) {
        if (path_ == Path::Fast) {
            if (gate_.parked()) return;  // a balloon request waits for unpark
            (void)unpinner_->balloon(std::span<const GfnRange>(&range, 1));
            return;
        }
        if (!walker_) return;
        std::vector<Gfn> mapped;
        (void)workers::for_each_ram_part(mem_, range, [&](Gfn first, uint64_t end) {
            return table_.for_each_mapped(first, end, [&](Gfn g) {
                mapped.push_back(g);
                return true;
            });
        });
        for (Gfn g : mapped) (void)core::unpin_page(ctx_, *walker_, g, core::Force::Yes);
    }

    [[nodiscard]] bool is_foreign(const dma::FakeMapping& m) const {
        for (const auto& f : foreign_) {
            if (f.iova == m.iova && f.size == m.size) return true;
        }
        return false;
    }

    // Every invariant between the record, the extents and the backend.
    void check() {
        FUZZ_TRACE("check: %zu mappings, %llu recorded pages\n", backend_.mappings().size(),
                   static_cast<unsigned long long>(table_.mapped_pages()));
        uint64_t our_pages = 0;
        for (const dma::FakeMapping& m : backend_.mappings()) {
            if (is_foreign(m)) continue;
            // IOVA = GPA, inside one RAM region, mapped at this process's address of that GPA.
            const Gpa gpa{raw(m.iova)};
            FUZZ_CHECK(mem_.contains(gpa, m.size));
            auto hva = mem_.translate(gpa, m.size);
            FUZZ_CHECK(hva && *hva == m.hva);
            FUZZ_CHECK(m.prot == dma::Prot::ReadWrite);
            const uint64_t pages = m.size >> kPageShift;
            const Gfn head = to_gfn(gpa);
            for (uint64_t i = 0; i < pages; ++i) FUZZ_CHECK(table_.mapped(Gfn{raw(head) + i}));
            if (path_ == Path::Core) {
                FUZZ_CHECK(m.size == kPageSize);
            } else {
                // One DMA call per extent: the mapping is exactly the recorded extent.
                FUZZ_CHECK(extents_.length(head) == pages);
                for (uint64_t i = 0; i < pages; ++i) FUZZ_CHECK(extents_.head_of(Gfn{raw(head) + i}) == head);
            }
            our_pages += pages;
        }
        uint64_t recorded = 0;
        (void)table_.for_each_mapped(Gfn{0}, table_.size(), [&](Gfn g) {
            ++recorded;
            const auto m = backend_.find(Iova{raw(g) << kPageShift});
            FUZZ_CHECK(m && !is_foreign(*m));
            return true;
        });
        FUZZ_CHECK(recorded == our_pages);
        FUZZ_CHECK(table_.mapped_pages() == our_pages);
        for (const auto& f : foreign_) {
            const auto m = backend_.find(f.iova);
            FUZZ_CHECK(m && m->iova == f.iova && m->size == f.size);
        }
    }

    void teardown() {
        backend_.clear_faults();  // an armed fault would make teardown's unmap fail on purpose
        if (gate_.parked()) gate_.unpark();
        if (path_ == Path::Fast) {
            (void)unpinner_->teardown();
            FUZZ_CHECK(extents_.extents() == 0);
        } else {
            // SeedPinner::teardown: unmap every page the record says we map.
            (void)table_.for_each_mapped(Gfn{0}, table_.size(), [&](Gfn g) {
                auto lock = table_.lock(g);
                if (!lock.mapped()) return true;
                FUZZ_CHECK(backend_.unmap_exact(Iova{raw(g) << kPageShift}, kPageSize).has_value());
                lock.clear_mapped();
                return true;
            });
        }
        FUZZ_CHECK(table_.mapped_pages() == 0);
        FUZZ_CHECK(backend_.live_entries() == foreign_.size());
        check();
    }

    const GuestMemory& mem_;
    Guest guest_;
    Path path_;
    dma::FakeBackend backend_;
    core::PinTable table_;
    workers::ExtentMap extents_;
    workers::ExtentHandoff handoff_;
    core::EndpointSet endpoints_;
    telemetry::StatsRegistry stats_;
    workers::PinEnv env_;
    core::PinContext ctx_;
    Gpa root_;
    uint64_t levels_;
    std::optional<core::DttWalker> walker_;
    uint64_t slot_ = 0;
    std::unique_ptr<workers::VcpuArena> arena_;
    telemetry::RequestTraceBatch trace_{0};
    workers::ParkGate gate_;
    std::unique_ptr<workers::ExtentUnpinner> unpinner_;
    std::vector<ForeignMapping> foreign_;
};

// Guest RAM, made once per layout and zeroed before each input.
std::vector<GuestMemory>& memories() {
    static std::vector<GuestMemory> all = [] {
        std::vector<GuestMemory> out;
        for (const Layout& l : make_layouts()) out.push_back(GuestMemory::create(l.regions).value());
        return out;
    }();
    return all;
}

void zero(const GuestMemory& mem) {
    for (const auto& r : mem.regions()) std::memset(r.host, 0, r.size);
}

// Header: u8 flags (bit 0 fast path, bit 1 coalesce off, bit 2 tbb store, bit 3 entry limit 8,
// bits 4-5 layout), u16 root gfn code, u8 levels. Then operations (see Op).
int run_one(std::span<const uint8_t> data) {
    Reader in(data);
    const uint8_t flags = in.u8();
    const GuestMemory& mem = memories()[(flags >> 4) % memories().size()];
    zero(mem);
    const Guest guest(mem);
    const Gpa root = Guest::gpa_of(guest.gfn(in.u16()));
    const uint64_t levels = in.u8() % (core::kMaxDttLevel + 2);  // 0 and 8 are invalid
    Harness h(mem, (flags & 1) != 0 ? Harness::Path::Fast : Harness::Path::Core,
              (flags & 2) != 0 ? workers::Coalesce::Off : workers::Coalesce::On,
              (flags & 4) != 0 ? workers::ExtentStoreKind::Tbb : workers::ExtentStoreKind::Flat,
              (flags & 8) != 0 ? 8 : 65535, root, levels);
    h.activate();
    h.run(in);
    return 0;
}

// ---- seeds ---------------------------------------------------------------------------------

// A 4-level DTT for layout 0: root page 60, then 61, 62 and the leaf page 63 (gfns < 1024 use
// index 0 at every upper level).
void dtt4(SeedWriter& w) {
    w.u8(kLink).u16(60).u16(0).u16(61).u16(core::kDttEntryPresent);
    w.u8(kLink).u16(61).u16(0).u16(62).u16(core::kDttEntryPresent);
    w.u8(kLink).u16(62).u16(0).u16(63).u16(core::kDttEntryPresent);
}
// The guest maps gfn `g` (map count 1, ACCESSED) in the leaf page 63.
void mark(SeedWriter& w, uint16_t g, uint32_t count = 1) {
    w.u8(kLeaf).u16(63).u16(g).u32(core::kDtteAccessed | count);
}

void make_seeds(const SeedSink& sink) {
    for (uint8_t path = 0; path < 2; ++path) {
        const std::string p = path != 0 ? "fast" : "core";
        {  // single pins, an unpin of an idle page, a tick, a balloon
            SeedWriter w;
            w.u8(path).u16(60).u8(4);
            dtt4(w);
            for (uint16_t g = 1; g <= 4; ++g) mark(w, g);
            for (uint16_t g = 1; g <= 4; ++g) w.u8(kPinSingle).u16(g).u8(0);
            w.u8(kCheck);
            w.u8(kLeaf).u16(63).u16(2).u32(core::kDttePinned);  // the guest unmapped gfn 2
            w.u8(kUnpin).u16(2).u8(0);
            w.u8(kTick).u8(kTick);
            w.u8(kBalloon).u16(0).u16(16);
            sink(p + "_single", w.data());
        }
        {  // one batch of 16 consecutive gfns (one extent when coalescing), then a second batch
            SeedWriter w;
            w.u8(path).u16(60).u8(4);
            dtt4(w);
            for (uint16_t g = 8; g < 24; ++g) mark(w, g);
            w.u8(kPinBatch).u16(40).u16(0).u8(0).u8(16);
            for (uint16_t g = 8; g < 24; ++g) w.u16(g);
            w.u8(kCheck);
            w.u8(kPinBatch).u16(41).u16(64).u8(0).u8(4).u16(30).u16(8).u16(31).u16(0x8000 | 2000);
            w.u8(kUnpin).u16(9).u8(1);
            sink(p + "_batch", w.data());
        }
        {  // faults, someone else's mapping, a small entry limit, park
            SeedWriter w;
            w.u8(static_cast<uint8_t>(path | 8)).u16(60).u8(4);
            dtt4(w);
            for (uint16_t g = 1; g <= 12; ++g) mark(w, g);
            w.u8(kForeign).u16(5).u8(0);
            w.u8(kFault).u8(0).u8(0).u8(3);  // the next map: ENOMEM
            w.u8(kPinBatch).u16(40).u16(0).u8(0).u8(12);
            for (uint16_t g = 1; g <= 12; ++g) w.u16(g);
            w.u8(kFault).u8(1).u8(0).u8(4);  // the next unmap: EFAULT
            w.u8(kPark).u8(kTick).u8(kPark);
            w.u8(kBalloon).u16(0).u16(0x8000);
            w.u8(kPinRaw).u64(0);
            sink(p + "_faults", w.data());
        }
        {  // layout 1 (two regions) with a 1-level DTT at page 10, and a raw batch slot
            SeedWriter w;
            w.u8(static_cast<uint8_t>(path | 0x10)).u16(10).u8(1);
            w.u8(kLeaf).u16(10).u16(33).u32(core::kDtteAccessed | 1);  // gfn 33 is in the gap
            w.u8(kLeaf).u16(10).u16(50).u32(core::kDtteAccessed | 1);
            w.u8(kPinSingle).u16(0x8000 | 33).u8(0);
            w.u8(kPinSingle).u16(0x8000 | 50).u8(0);
            w.u8(kWrite64).u16(3).u16(0).u64(kBdf);
            w.u8(kWrite64).u16(3).u16(8).u64(2);
            w.u8(kWrite64).u16(3).u16(16).u64(50);
            w.u8(kWrite64).u16(3).u16(24).u64(51);
            w.u8(kPinRaw).u64((uint64_t{3} << kPageShift) | core::kPinPagesInBatch);
            sink(p + "_two_regions", w.data());
        }
    }
}

}  // namespace
}  // namespace coiommu::fuzz

COIOMMU_FUZZ_ENTRY_POINTS()
