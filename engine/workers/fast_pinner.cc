// The fast pin path (see fast_pinner.h for the steps).
//
// Why the pages are walked first and mapped second: the walk (DTT cursor, RAM bounds, "already
// ours and PINNED") needs no lock and touches no kernel, so it runs over the whole request before
// any DMA call; the map phase then sees the request's unpinned pages as sorted runs and can make
// one call per run. The guest cannot tell the difference: it reads PINNED only after the slot
// completes.
//
// Why "already ours and PINNED" may be skipped without the page lock: the guest marks a page
// (map count + 1) before it asks for a pin, and an unpin only succeeds on an entry of exactly
// PINNED with count 0. A page the guest has marked and that shows PINNED therefore cannot be
// unpinned under us. Every other case (not ours, or ours with PINNED cleared by the guest) is
// decided again under the page lock, where no unpin can be in its CAS-then-unmap window.
#include "engine/workers/fast_pinner.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/probes.h"
#include "engine/telemetry/request_trace.h"

namespace coiommu::workers {
namespace {

constexpr const char* kLog = "pin";

using telemetry::DmaOp;
using telemetry::PinFailureReason;
using telemetry::RequestKind;

struct Tally {
    uint64_t newly = 0;
    uint64_t already = 0;
    uint64_t map_failed = 0;
    uint64_t no_space = 0;
    uint64_t invalid = 0;
    uint64_t dma_calls = 0;
    int first_error = 0;  // errno of the first failure
    // The thread's latest clock reading: the request's t0, then the end of each DMA call. A DMA
    // call is timed from it, so the clock is read once per call, not twice.
    uint64_t last_ns = 0;
    bool clock_read = false;  // last_ns was read after t0 (it is the request's end so far)

    void fail(int err) {
        if (first_error == 0) first_error = err;
    }
};

// Host address of a 4 KiB guest page, remembering the region of the previous lookup (requests are
// nearly always within one region).
class RegionCursor {
public:
    explicit RegionCursor(const GuestMemory& mem) : mem_(mem) {}

    [[nodiscard]] std::byte* page(uint64_t gpa) {
        // One subtraction and compare for the remembered region: gpa - base wraps to huge when
        // gpa < base, and span_ counts the offsets where a whole page still fits.
        if (gpa - base_ >= span_) {
            span_ = 0;
            for (const auto& reg : mem_.regions()) {
                if (reg.size >= kPageSize && gpa - raw(reg.base) <= reg.size - kPageSize) {
                    base_ = raw(reg.base);
                    span_ = reg.size - kPageSize + 1;
                    host_ = reg.host;
                    break;
                }
            }
            if (span_ == 0) return nullptr;
        }
        return host_ + (gpa - base_);
    }

private:
    const GuestMemory& mem_;
    uint64_t base_ = 0;
    uint64_t span_ = 0;  // 0: no region remembered
    std::byte* host_ = nullptr;
};

GuestAtomicU32 leaf_of(const WorkPage& p) { return GuestAtomicU32(p.leaf); }

void clear_pinned(const WorkPage& p) {
    // Safety: p.leaf came from DttWalker::leaf (an aligned word inside a guest RAM leaf page);
    // seq_cst like every PINNED RMW (pinner.cc explains the Dekker pairing with the guest).
    leaf_of(p).fetch_and(~core::kDttePinned, std::memory_order_seq_cst);
}

// A run is consecutive gfns at consecutive host addresses: one DMA call maps it. Its length bound is
// applied by map_runs.
bool continues_run(uint64_t prev_gfn, const std::byte* prev_host, uint64_t gfn, const std::byte* host) {
    return gfn == prev_gfn + 1 && host == prev_host + kPageSize;
}

void set_pinned(const WorkPage& p) {
    // Safety: as clear_pinned. Runs after the mapping exists and is recorded.
    leaf_of(p).fetch_or(core::kDttePinned, std::memory_order_seq_cst);
}

class RequestPinner {
public:
    RequestPinner(const PinEnv& env, VcpuArena& a, telemetry::DmaTraceBatch& dma_trace)
        : env_(env), a_(a), dma_trace_(dma_trace) {}

    void pin(const core::DecodedRequest& req, Tally& t) {
        uint64_t n = 0;
        if (req.kind == core::DecodedRequest::Kind::Single) {
            a_.gfns[0] = raw(req.gfn);
            n = 1;
        } else {
            n = req.nr_pages;
            if (n == 0) return;
            // decode_request proved [list_gpa, list_gpa + 8n) lies in one region and n <= the
            // arena's capacity (max_batch_pages).
            auto src = env_.mem.host_ptr(req.list_gpa, n * core::kPinPageGfnSize);
            if (!src) {
                t.invalid += n;
                t.fail(src.error().code);
                return;
            }
            // Safety: a snapshot copy of guest RAM inside one region (bounds checked above). The
            // guest must not change the list while the request is pending; if it does, we pin the
            // gfns we read, each validated below, which harms only the guest's own DMA.
            std::memcpy(a_.gfns.data(), *src, n * core::kPinPageGfnSize);
        }
        const uint64_t w = collect(n, t);
        map_runs(w, t);
    }

private:
    // Step 2: walk every gfn; keep the ones that need work. Returns how many.
    uint64_t collect(uint64_t n, Tally& t) {
        RegionCursor regions(env_.mem);
        core::DttWalker& walker = *a_.walker;
        walker.reset_cursor();  // a cursor lives for one request (dtt.h: staleness)
        const bool coalesce = env_.coalesce == Coalesce::On;
        const uint64_t* const gfns = a_.gfns.data();
        WorkPage* const work = a_.work.data();
        uint32_t* const run_starts = a_.run_starts.data();
        uint64_t w = 0;
        uint64_t runs = 0;
        uint64_t prev_gfn = 0;           // work[w - 1].gfn, when w != 0
        std::byte* prev_host = nullptr;  // work[w - 1].host, when w != 0
        bool ascending = true;
        for (uint64_t k = 0; k < n; ++k) {
            const Gfn gfn{gfns[k]};
            auto leaf = walker.leaf(gfn);
            if (!leaf) {
                stop_at(k, n, leaf.error(), t);
                break;
            }
            std::byte* host = env_.table.in_range(gfn) ? regions.page(raw(gfn) << kPageShift) : nullptr;
            if (host == nullptr) {
                stop_at(k, n, Error{EFAULT, fmt::format("gfn {:#x} outside guest RAM", raw(gfn))}, t);
                break;
            }
            // Safety: leaf word from DttWalker::leaf. Relaxed: a stale "clear" only sends the page
            // to the locked path, where it is decided again.
            if (env_.table.mapped(gfn) && (leaf->load(std::memory_order_relaxed) & core::kDttePinned) != 0) {
                ++t.already;
                continue;
            }
            const bool joins = coalesce && w != 0 && continues_run(prev_gfn, prev_host, raw(gfn), host);
            if (!joins) {
                if (w != 0 && raw(gfn) <= prev_gfn) ascending = false;
                run_starts[runs++] = static_cast<uint32_t>(w);
            }
            work[w++] = WorkPage{raw(gfn), leaf->address(), host};
            prev_gfn = raw(gfn);
            prev_host = host;
        }
        runs_ = runs;
        if (!ascending) {
            WorkPage* first = work;
            std::sort(first, first + w, [](const WorkPage& x, const WorkPage& y) { return x.gfn < y.gfn; });
            WorkPage* last =
                std::unique(first, first + w, [](const WorkPage& x, const WorkPage& y) { return x.gfn == y.gfn; });
            const auto kept = static_cast<uint64_t>(last - first);
            t.already += w - kept;  // a repeated gfn is pinned by its first occurrence
            w = kept;
            find_runs(w, coalesce);
        }
        return w;
    }

    // The run starts of work[0, w) when collect could not record them in order (after a sort).
    void find_runs(uint64_t w, bool coalesce) {
        runs_ = 0;
        for (uint64_t j = 0; j < w; ++j) {
            if (!coalesce || j == 0 ||
                !continues_run(a_.work[j - 1].gfn, a_.work[j - 1].host, a_.work[j].gfn, a_.work[j].host)) {
                a_.run_starts[runs_++] = static_cast<uint32_t>(j);
            }
        }
    }

    void stop_at(uint64_t k, uint64_t n, const Error& e, Tally& t) {
        t.invalid += n - k;
        t.fail(e.code);
        CLOG_WARN_RL(kLog, "vcpu {}: request stops at page {} of {}: {}", a_.vcpu, k, n, e.message());
    }

    // Step 3: cut into runs.
    void map_runs(uint64_t w, Tally& t) {
        for (uint64_t r = 0; r < runs_; ++r) {
            const uint64_t end = r + 1 < runs_ ? a_.run_starts[r + 1] : w;
            for (uint64_t i = a_.run_starts[r]; i < end; i += kMaxExtentPages) {
                pin_run(&a_.work[i], static_cast<uint32_t>(std::min<uint64_t>(end - i, kMaxExtentPages)), t);
            }
        }
    }

    // Step 4: one run under its page locks.
    void pin_run(const WorkPage* run, uint32_t n, Tally& t) {
        // A run is consecutive gfns (map_runs), so one RunLock holds it.
        core::PinTable::RunLock& locks = a_.run_lock;
        env_.table.lock_run(Gfn{run[0].gfn}, n, locks);
        using core::PinTable;
        uint32_t k = 0;
        while (k < n) {
            if (locks.mapped(k)) {
                // Ours already (another vCPU won the race, or the guest cleared PINNED): never map
                // twice, just tell the guest again.
                const uint32_t e = locks.find(k + 1, PinTable::MappedState::Unmapped);
                for (uint32_t p = k; p < e; ++p) set_pinned(run[p]);
                t.already += e - k;
                k = e;
                continue;
            }
            const uint32_t e = locks.find(k + 1, PinTable::MappedState::Mapped);
            map_span(run, k, e, t);
            k = e;
        }
        locks.unlock();
    }

    // Maps run[k, e) (unmapped, locked, consecutive) with one DMA call.
    void map_span(const WorkPage* run, uint32_t k, uint32_t e, Tally& t) {
        const uint32_t len = e - k;
        if (container_full_) {
            for (uint32_t p = k; p < e; ++p) clear_pinned(run[p]);
            t.no_space += len;
            return;
        }
        auto outcome = dma_map(run[k], len, t);
        if (!outcome) {
            for (uint32_t p = k; p < e; ++p) clear_pinned(run[p]);
            t.map_failed += len;
            t.fail(outcome.error().code);
            CLOG_ERROR_RL(kLog, "vcpu {}: {}", a_.vcpu, outcome.error().message());
            return;
        }
        switch (*outcome) {
            case dma::MapOutcome::Mapped: {
                // Record first: whatever the guest sees as PINNED is backed by our record, and the
                // extent is handed to the unpinner while its pages are still locked.
                // The kMapped bits go out with the unlocks at the end of pin_run; one shared add.
                a_.run_lock.mark_mapped(k, e);
                env_.table.add_mapped_pages(len);
                const Gfn head{run[k].gfn};
                env_.extents.record(head, len);
                if (env_.track_extents) env_.handoff.push(head);
                for (uint32_t p = k; p < e; ++p) set_pinned(run[p]);
                t.newly += len;
                return;
            }
            case dma::MapOutcome::AlreadyMapped:
                if (len > 1) {
                    // Part of the run is mapped by someone else: crosvm's page-by-page semantics.
                    for (uint32_t p = k; p < e; ++p) map_span(run, p, p + 1, t);
                    return;
                }
                // Someone else's mapping covers the page (EEXIST): pinned as far as the guest is
                // concerned, but not ours to record or ever unmap (pinner.h, AlreadyPinned).
                CLOG_ERROR_RL(kLog, "iova {:#x} already mapped in the container by someone else",
                              run[k].gfn << kPageShift);
                set_pinned(run[k]);
                ++t.already;
                return;
            case dma::MapOutcome::NoSpace:
                container_full_ = true;
                for (uint32_t p = k; p < e; ++p) clear_pinned(run[p]);
                t.no_space += len;
                t.fail(ENOSPC);
                CLOG_ERROR_RL(kLog,
                              "vcpu {}: DMA entry limit reached ({} of {} entries): no more maps for this "
                              "request",
                              a_.vcpu, env_.backend.live_entries(), env_.backend.entry_limit());
                return;
        }
    }

    [[nodiscard]] Result<dma::MapOutcome> dma_map(const WorkPage& first, uint32_t len, Tally& t) {
        const uint64_t gpa = first.gfn << kPageShift;  // in_range(gfn): no overflow
        const uint64_t size = uint64_t{len} << kPageShift;
        // One clock read per call: the call is timed from the thread's previous reading (the
        // request's t0 or the previous call's end), so its latency also holds this request's
        // decode and walk before it (tens to hundreds of ns, below 5% of one real VFIO map).
        auto r = env_.backend.map(Iova{gpa}, Hva{reinterpret_cast<uint64_t>(first.host)}, size, dma::Prot::ReadWrite);
        const uint64_t end = telemetry::monotonic_ns();
        const uint64_t lat = end - t.last_ns;
        t.last_ns = end;
        t.clock_read = true;
        ++t.dma_calls;
        int code = 0;
        if (!r) {
            code = -r.error().code;
        } else if (*r == dma::MapOutcome::AlreadyMapped) {
            code = -EEXIST;
        } else if (*r == dma::MapOutcome::NoSpace) {
            code = -ENOSPC;
        }
        COIOMMU_PROBE_DMA_MAP(gpa, size, code, lat);
        dma_trace_.add(telemetry::DmaRecordOp::Map, gpa, size, code, lat, end);
        telemetry::StatsShard& s = *a_.stats;
        s.dma_calls[DmaOp::Map].add();
        s.dma_call_latency_ns[DmaOp::Map].observe(lat);
        if (code == 0) {
            s.dma_bytes[DmaOp::Map].add(size);
        } else if (code != -EEXIST) {
            s.dma_call_failures[DmaOp::Map].add();
        }
        return r;
    }

    const PinEnv& env_;
    VcpuArena& a_;
    telemetry::DmaTraceBatch& dma_trace_;  // the serving thread's, flushed with its request batch
    bool container_full_ = false;
    uint64_t runs_ = 0;  // run starts recorded in a_.run_starts by collect
};

}  // namespace

ServeReport serve_request(const PinEnv& env, VcpuArena& a, uint64_t slot_value, uint64_t t0_ns,
                          telemetry::RequestTraceBatch& trace) {
    const RequestKind kind = (slot_value & core::kPinPagesInBatch) != 0 ? RequestKind::Batch : RequestKind::Single;
    COIOMMU_PROBE_REQUEST_START(env.session, a.vcpu, kind);
    Tally t;
    t.last_ns = t0_ns;
    uint64_t pages = 0;
    auto req = core::decode_request(slot_value, env.mem, env.endpoints, env.limits);
    if (!req) {
        t.invalid = 1;
        t.fail(req.error().code);
        CLOG_WARN_RL(kLog, "vcpu {}: bad request {:#x}: {}", a.vcpu, slot_value, req.error().message());
    } else if (!a.walker) {
        pages = req->nr_pages;
        t.invalid = pages != 0 ? pages : 1;
        t.fail(EINVAL);
        CLOG_WARN_RL(kLog, "vcpu {}: request {:#x} not served: {}", a.vcpu, slot_value, env.dtt_error);
    } else {
        pages = req->nr_pages;
        RequestPinner(env, a, trace.dma()).pin(*req, t);
    }

    // Safety: the arena's slot is an aligned u64 inside the notifymap mapping. Release: every
    // PINNED RMW above happens-before the guest's load that sees the slot empty.
    a.slot.store(0, std::memory_order_release);

    const int result = -t.first_error;
    telemetry::StatsShard& s = *a.stats;
    s.requests[kind].add();
    s.pages_requested.add(pages);
    s.pages_pinned.add(t.newly);
    s.pages_already_pinned.add(t.already);
    if (t.map_failed != 0) s.pin_failures[PinFailureReason::VfioMap].add(t.map_failed);
    if (t.no_space != 0) s.pin_failures[PinFailureReason::NoSpace].add(t.no_space);
    if (t.invalid != 0) s.pin_failures[PinFailureReason::InvalidRequest].add(t.invalid);
    if (result != 0) s.requests_failed.add();
    s.pages_per_request.observe(pages);
    // The last DMA call's end is the request's end (what follows it is a few stores); a request
    // that made no DMA call reads the clock here, once.
    const uint64_t now = t.clock_read ? t.last_ns : telemetry::monotonic_ns();
    const uint64_t latency_ns = now - t0_ns;
    s.request_latency_ns[kind].observe(latency_ns);
    if (t.newly != 0) env.gauges.pinned_pages.add(t.newly);
    // No dma_entries refresh here: on a VFIO container live_entries() is a GET_INFO ioctl, which
    // doubled the kernel work of a single-page request (P7 in the QEMU guest: 1.9x raw). The gauge
    // is refreshed where it is read (Engine::stats()) and after each unpin scan.
    COIOMMU_PROBE_REQUEST_DONE(env.session, a.vcpu, kind, pages, result, latency_ns);
    trace.add(kind, pages, result, latency_ns, now);
    return ServeReport{result, pages, t.newly, t.dma_calls, now};
}

}  // namespace coiommu::workers
