// The run driver. Design notes:
//
//  - Hot path (per vCPU operation): one WorkloadGen pick, the strategy's map, two clock reads, a
//    LogLinearHistogram observe, single-writer counters, a bit per page in a thread-private
//    "touched" bitmap and, with the fake backend, one FakeBackend::is_mapped() per buffer after
//    the map and before the unmap. No lock of ours, no allocation (the outstanding ring and the
//    gfn scratch are preallocated).
//  - Balloon exclusion (balloon/mix): data RAM is cut into chunks of --balloon-pages. A vCPU
//    claims the chunks of a buffer (in-use count + 1, then re-check the chunk's ballooned flag);
//    the balloon thread sets the flag, then waits for the in-use count to drain. With seq_cst on
//    both sides (a Dekker handshake) either the vCPU sees the flag and picks again, or the
//    balloon sees the claim and waits: the guest never DMA-maps a page it has ballooned.
//  - Final state: after the vCPUs stop, the strategy quiesces (PARK_UNPIN) so that engine gauges,
//    engine counters and backend counters form one consistent cut, cross-checked in checks[].
#include "engine/loadgen/run.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <sstream>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/null_backend.h"
#include "engine/dma/iommufd_backend.h"
#include "engine/dma/vfio_backend.h"
#include "engine/loadgen/guest_layout.h"
#include "engine/loadgen/in_process_link.h"
#include "engine/loadgen/progress.h"
#include "engine/loadgen/socket_link.h"
#include "engine/loadgen/rng.h"
#include "engine/loadgen/tsc_clock.h"
#include "engine/loadgen/units.h"
#include "engine/telemetry/clock.h"
#include "engine/telemetry/counters.h"

namespace coiommu::loadgen {
namespace {

using telemetry::LogLinearHistogram;
using telemetry::LogLinearSnapshot;
using telemetry::monotonic_ns;
using telemetry::SingleWriterCounter;

constexpr std::string_view kLog = "loadgen";
constexpr uint16_t kEndpointBdf = 0x0018;  // the passthrough device, 00:03.0
constexpr uint64_t kSampleNs = 100'000'000;
constexpr uint64_t kProgressWindowNs = 1'000'000'000;  // the progress line's rates are per this
constexpr uint64_t kSamplesPerProgress = kProgressWindowNs / kSampleNs;
constexpr uint64_t kBalloonStream = 0xba11'0000'0000'0000ull;
constexpr int kClaimTries = 8;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void sleep_ns(uint64_t ns) {
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

// Waits until monotonic_ns() >= deadline: sleeps while far, spins (yielding) when close.
void wait_until(uint64_t deadline) {
    for (uint32_t i = 1;; ++i) {
        const uint64_t now = monotonic_ns();
        if (now >= deadline) return;
        const uint64_t left = deadline - now;
        if (left > 100'000) {
            sleep_ns(left - 50'000);
        } else {
            cpu_relax();
            if ((i & 63) == 0) ::sched_yield();
        }
    }
}

double thread_cpu_s() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double process_cpu_s() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

// CPU time of every thread of this process except `skip_tid`, from /proc (schedstat: ns on CPU;
// stat's utime+stime in clock ticks as a fallback).
std::vector<ThreadCpu> other_threads_cpu(pid_t skip_tid) {
    std::vector<ThreadCpu> out;
    DIR* d = ::opendir("/proc/self/task");
    if (d == nullptr) return out;
    const double tick = 1.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        const std::string dir = fmt::format("/proc/self/task/{}", e->d_name);
        if (std::to_string(skip_tid) == e->d_name) continue;
        ThreadCpu t;
        std::ifstream comm(dir + "/comm");
        std::getline(comm, t.name);
        std::ifstream sched(dir + "/schedstat");
        uint64_t ns = 0;
        if (sched >> ns) {
            t.cpu_s = static_cast<double>(ns) * 1e-9;
        } else {
            std::ifstream stat(dir + "/stat");
            std::string line;
            std::getline(stat, line);
            const auto close = line.rfind(')');
            if (close != std::string::npos) {
                std::istringstream rest(line.substr(close + 2));
                std::string field;
                uint64_t utime = 0, stime = 0;
                for (int i = 3; i <= 15 && rest >> field; ++i) {
                    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
                    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
                }
                t.cpu_s = static_cast<double>(utime + stime) * tick;
            }
        }
        out.push_back(std::move(t));
    }
    ::closedir(d);
    return out;
}

// The percentiles of what was observed between two snapshots of the same histograms.
LogLinearSnapshot interval(const LogLinearSnapshot& cur, const LogLinearSnapshot& prev) {
    LogLinearSnapshot d;
    for (std::size_t i = 0; i < d.buckets.size(); ++i) {
        d.buckets[i] = cur.buckets[i] >= prev.buckets[i] ? cur.buckets[i] - prev.buckets[i] : 0;
        if (d.buckets[i] != 0) {
            if (d.min == 0) d.min = telemetry::log_linear_bucket_lowest(i);
            d.max = telemetry::log_linear_bucket_highest(i);
        }
    }
    d.sum = cur.sum - prev.sum;
    return d;
}

// ---- balloon exclusion ---------------------------------------------------------------------------

class BalloonBoard {
public:
    BalloonBoard(uint64_t data_pages, uint32_t chunk_pages)
        : chunk_pages_(chunk_pages), chunks_(data_pages / chunk_pages), in_use_(chunks_), ballooned_(chunks_) {}

    [[nodiscard]] uint64_t chunks() const { return chunks_; }
    [[nodiscard]] uint32_t chunk_pages() const { return chunk_pages_; }

    // vCPU side: claims the buffer's chunks; false (nothing claimed) when one is ballooned.
    [[nodiscard]] bool claim(const Buffer& b) {
        const auto [first, last] = span_of(b);
        for (uint64_t c = first; c < last; ++c) {
            in_use_[c].fetch_add(1, std::memory_order_seq_cst);
            if (ballooned_[c].load(std::memory_order_seq_cst) != 0) {
                for (uint64_t u = first; u <= c; ++u) in_use_[u].fetch_sub(1, std::memory_order_release);
                return false;
            }
        }
        return true;
    }
    void release(const Buffer& b) {
        const auto [first, last] = span_of(b);
        // Release: the unmap (DTT count - 1) happens-before the balloon's acquire of 0.
        for (uint64_t c = first; c < last; ++c) in_use_[c].fetch_sub(1, std::memory_order_release);
    }

    // Balloon side: marks chunk c ballooned and waits until no vCPU holds a buffer in it.
    // false (and the chunk deflated again) after `timeout_ns`.
    [[nodiscard]] bool inflate(uint64_t c, uint64_t timeout_ns) {
        ballooned_[c].store(1, std::memory_order_seq_cst);
        const uint64_t deadline = monotonic_ns() + timeout_ns;
        while (in_use_[c].load(std::memory_order_seq_cst) != 0) {
            if (monotonic_ns() >= deadline) {
                deflate(c);
                return false;
            }
            sleep_ns(50'000);
        }
        return true;
    }
    void deflate(uint64_t c) { ballooned_[c].store(0, std::memory_order_seq_cst); }
    [[nodiscard]] bool ballooned(uint64_t c) const { return ballooned_[c].load(std::memory_order_seq_cst) != 0; }

private:
    // Chunks [first, last) the buffer touches (the data tail beyond the last whole chunk is never
    // ballooned).
    [[nodiscard]] std::pair<uint64_t, uint64_t> span_of(const Buffer& b) const {
        const uint64_t first = raw(b.first) / chunk_pages_;
        const uint64_t last = std::min<uint64_t>((raw(b.first) + b.pages - 1) / chunk_pages_ + 1, chunks_);
        return {first, std::max(first, last)};
    }

    const uint32_t chunk_pages_;
    const uint64_t chunks_;
    std::vector<std::atomic<uint32_t>> in_use_;
    std::vector<std::atomic<uint8_t>> ballooned_;
};

// ---- per-vCPU state --------------------------------------------------------------------------------

struct alignas(64) VcpuState {
    uint32_t index = 0;
    std::unique_ptr<VcpuDma> dma;
    std::optional<WorkloadGen> gen;
    // Written by the vCPU thread only, read by the sampler at any time.
    SingleWriterCounter maps, map_failures, unmaps, unmap_failures, pages_mapped, pages_unmapped, skipped;
    SingleWriterCounter invariant_checks, invariant_violations, pages_requested, notified_maps;
    std::array<SingleWriterCounter, kMapFailures> failures{};
    LogLinearHistogram map_lat, request_lat, unmap_lat;
    // Read only after the thread is joined.
    std::vector<uint64_t> touched;  // bitmap over data pages the guest tried to DMA-map
    double cpu_s = 0;
    uint64_t notifications = 0;
};

struct Outstanding {
    Buffer buf;
    Iova iova{};
    uint64_t mapped_at = 0;  // TscClock timestamp
    bool claimed = false;
};

// A fixed-capacity FIFO of mapped buffers; an entry's array index is its IOVA slot.
class OutstandingRing {
public:
    explicit OutstandingRing(uint32_t capacity) : items_(capacity) {}
    [[nodiscard]] bool empty() const { return size_ == 0; }
    [[nodiscard]] bool full() const { return size_ == items_.size(); }
    [[nodiscard]] uint32_t size() const { return size_; }
    [[nodiscard]] uint32_t next_slot() const { return static_cast<uint32_t>((head_ + size_) % items_.size()); }
    void push(const Outstanding& o) {
        items_[next_slot()] = o;
        ++size_;
    }
    [[nodiscard]] const Outstanding& front() const { return items_[head_]; }
    void pop() {
        head_ = static_cast<uint32_t>((head_ + 1) % items_.size());
        --size_;
    }

private:
    std::vector<Outstanding> items_;
    uint32_t head_ = 0;
    uint32_t size_ = 0;
};

struct RunCtx {
    const LoadOptions& o;
    const RunSpec& spec;
    const GuestLayout& layout;
    Strategy& strategy;
    dma::DmaBackend& backend;
    const dma::FakeBackend* oracle;  // the invariant's oracle, or null (check skipped)
    BalloonBoard* board;             // null unless the workload balloons
    TscClock clock;                  // per-operation latencies
    SocketLink* remote = nullptr;    // --connect: the daemon serves (its backend is the oracle)
    std::atomic<bool> go{false};
    std::atomic<bool> stop{false};

    // --connect: the daemon went away; nothing would serve the guest any more.
    [[nodiscard]] bool host_lost() const { return remote != nullptr && remote->lost(); }
};

class VcpuRunner {
public:
    VcpuRunner(RunCtx& ctx, VcpuState& v) : ctx_(ctx), v_(v), ring_(ctx.o.max_outstanding()) {}

    void run() {
        const std::string name = fmt::format("load_vcpu{}", v_.index);
        ::pthread_setname_np(::pthread_self(), name.c_str());
        while (!ctx_.go.load(std::memory_order_acquire)) ::sched_yield();
        const bool timed = ctx_.o.lifetime.timed();
        const uint64_t lifetime_ns = static_cast<uint64_t>(ctx_.o.lifetime.time.count());
        const uint64_t think_ns = static_cast<uint64_t>(ctx_.o.think.count());
        const uint64_t interval_ns = ctx_.o.rate > 0 ? static_cast<uint64_t>(1e9 * ctx_.o.vcpus / ctx_.o.rate) : 0;
        uint64_t next_at = monotonic_ns();
        while (!ctx_.stop.load(std::memory_order_relaxed) && !ctx_.host_lost()) {
            if (interval_ns != 0) {
                next_at += interval_ns;
                const uint64_t now = monotonic_ns();
                if (next_at + 1'000'000'000 < now) next_at = now;  // far behind: do not burst
                wait_until(next_at);
            }
            if (timed) {
                const uint64_t now = ctx_.clock.now();
                while (!ring_.empty() && ctx_.clock.ns(ring_.front().mapped_at, now) >= lifetime_ns) retire();
            }
            if (ring_.full()) retire();  // a timed lifetime outgrew the IOVA slots: unmap early
            one_operation();
            if (!timed) {
                while (ring_.size() > ctx_.o.lifetime.ops) retire();
            }
            if (think_ns != 0) wait_until(monotonic_ns() + think_ns);
        }
        while (!ring_.empty()) retire();
        v_.notifications = v_.dma->notifications();
        v_.cpu_s = thread_cpu_s();
    }

private:
    void one_operation() {
        Buffer b = v_.gen->next();
        bool claimed = false;
        if (ctx_.board != nullptr) {
            for (int i = 0; i < kClaimTries && !(claimed = ctx_.board->claim(b)); ++i) b = v_.gen->next();
            if (!claimed) {
                v_.skipped.add();
                return;
            }
        }
        // The pages the guest asks the host for, whether or not the map then succeeds (a failed
        // batch may leave some of its pages pinned).
        mark_touched(b);
        Iova iova{};
        const uint64_t t0 = ctx_.clock.now();
        const MapStatus st = v_.dma->map(b, ring_.next_slot(), &iova);
        const uint64_t t1 = ctx_.clock.now();
        const uint64_t took = ctx_.clock.ns(t0, t1);
        if (st.notified) v_.pages_requested.add(st.requested);
        if (!st.ok) {
            v_.map_failures.add();
            v_.failures[static_cast<std::size_t>(st.failure)].add();
            if (claimed) ctx_.board->release(b);
            return;
        }
        v_.maps.add();
        v_.pages_mapped.add(b.pages);
        v_.map_lat.observe(took);
        if (st.notified) {
            v_.notified_maps.add();
            v_.request_lat.observe(took);
        }
        check(b, iova, "after map");
        ring_.push(Outstanding{b, iova, t1, claimed});
    }

    void retire() {
        const Outstanding o = ring_.front();
        ring_.pop();
        check(o.buf, o.iova, "before unmap");
        const uint64_t t0 = ctx_.clock.now();
        const auto failure = v_.dma->unmap(o.buf, o.iova);
        const uint64_t t1 = ctx_.clock.now();
        if (failure) {
            v_.unmap_failures.add();
            v_.failures[static_cast<std::size_t>(*failure)].add();
        } else {
            v_.unmaps.add();
            v_.pages_unmapped.add(o.buf.pages);
            v_.unmap_lat.observe(ctx_.clock.ns(t0, t1));
        }
        if (o.claimed) ctx_.board->release(o.buf);
    }

    // The safety invariant: the device may DMA to every page of the buffer at `iova`.
    void check(const Buffer& b, Iova iova, const char* when) {
        const uint64_t size = uint64_t{b.pages} << kPageShift;
        if (ctx_.oracle != nullptr) {
            v_.invariant_checks.add();
            if (ctx_.oracle->is_mapped(iova, size)) return;
        } else if (ctx_.remote != nullptr && ctx_.remote->can_query_mapped()) {
            // One QueryMapped round trip to the daemon per check (its fake backend answers).
            v_.invariant_checks.add();
            auto mapped = ctx_.remote->query_mapped(iova, size);
            if (mapped && *mapped) return;
            if (!mapped && ctx_.remote->lost()) return;  // unknown, not violated: the run stops
            if (!mapped) {
                CLOG_ERROR_RL(kLog, "invariant check: QueryMapped: {}", mapped.error().message());
            }
        } else {
            return;
        }
        v_.invariant_violations.add();
        CLOG_ERROR_RL(kLog,
                      "SAFETY INVARIANT VIOLATED ({}): vcpu {} buffer gfn {:#x}+{} at iova {:#x} is not mapped in the "
                      "DMA backend",
                      when, v_.index, raw(b.first), b.pages, raw(iova));
    }

    void mark_touched(const Buffer& b) {
        for (uint64_t g = raw(b.first); g < raw(b.first) + b.pages; ++g) v_.touched[g >> 6] |= uint64_t{1} << (g & 63);
    }

    RunCtx& ctx_;
    VcpuState& v_;
    OutstandingRing ring_;
};

// ---- the balloon thread -----------------------------------------------------------------------------

struct BalloonStats {
    uint64_t requests = 0, success = 0, failed = 0, aborted = 0, violations = 0, pages = 0;
    LogLinearHistogram latency;
};

// Whether any page of [first, first + pages) is mapped at its identity IOVA.
bool any_page_mapped(const dma::FakeBackend& fake, Gfn first, uint64_t pages) {
    uint64_t g = raw(first);
    const uint64_t end = g + pages;
    while (g < end) {
        if (auto m = fake.find(Iova{g << kPageShift})) return true;
        ++g;
    }
    return false;
}

// The same through the daemon (--connect): one QueryMapped per page (about 25 us each; the balloon
// thread asks at most once per inflation). A transport error counts as mapped (not proven released).
bool any_page_mapped(SocketLink& remote, Gfn first, uint64_t pages) {
    for (uint64_t g = raw(first); g < raw(first) + pages; ++g) {
        auto m = remote.query_mapped(Iova{g << kPageShift}, kPageSize);
        if (!m || *m) return true;
    }
    return false;
}

void balloon_loop(RunCtx& ctx, BalloonStats& out) {
    ::pthread_setname_np(::pthread_self(), "load_balloon");
    BalloonBoard& board = *ctx.board;
    Rng rng(ctx.o.seed, kBalloonStream);
    std::deque<uint64_t> inflated;
    const uint64_t max_inflated = std::max<uint64_t>(1, board.chunks() / 4);
    const uint64_t interval = static_cast<uint64_t>(ctx.o.balloon_interval.count());
    // The identity-IOVA strategies can be checked page by page after a Success.
    const bool remote_checkable = ctx.remote != nullptr && ctx.remote->can_query_mapped();
    const bool checkable = (ctx.oracle != nullptr || remote_checkable) && ctx.spec.strategy == StrategyKind::Coiommu;
    while (!ctx.go.load(std::memory_order_acquire)) ::sched_yield();
    uint64_t next_at = monotonic_ns() + interval;
    while (!ctx.stop.load(std::memory_order_relaxed) && !ctx.host_lost()) {
        if (monotonic_ns() < next_at) {
            sleep_ns(std::min<uint64_t>(next_at - monotonic_ns(), 10'000'000));
            continue;
        }
        next_at += interval;
        if (inflated.size() >= max_inflated) {
            board.deflate(inflated.front());
            inflated.pop_front();
        }
        uint64_t c = rng.below(board.chunks());
        for (int i = 0; i < 16 && board.ballooned(c); ++i) c = rng.below(board.chunks());
        if (board.ballooned(c)) continue;
        if (!board.inflate(c, 2'000'000'000)) {
            ++out.aborted;
            continue;
        }
        const workers::GfnRange range{Gfn{c * board.chunk_pages()}, board.chunk_pages()};
        const uint64_t t0 = monotonic_ns();
        auto r = ctx.strategy.balloon(std::span<const workers::GfnRange>(&range, 1));
        out.latency.observe(monotonic_ns() - t0);
        ++out.requests;
        if (r && *r == telemetry::BalloonResult::Success) {
            ++out.success;
            out.pages += range.count;
            if (checkable && (ctx.oracle != nullptr ? any_page_mapped(*ctx.oracle, range.start, range.count)
                                                    : any_page_mapped(*ctx.remote, range.start, range.count))) {
                ++out.violations;
                CLOG_ERROR(kLog, "BALLOON VIOLATION: unpin of gfns {:#x}+{} said Success but a page is still mapped",
                           raw(range.start), range.count);
            }
        } else {
            ++out.failed;
            if (!r)
                CLOG_WARN_RL(kLog, "balloon unpin of gfns {:#x}+{}: {}", raw(range.start), range.count,
                             r.error().message());
        }
        inflated.push_back(c);
    }
    for (uint64_t c : inflated) board.deflate(c);
}

// ---- setup helpers ----------------------------------------------------------------------------------

// Pinned pages count against RLIMIT_MEMLOCK (crosvm raises it by the guest RAM size); with
// --connect the daemon pins, but a VMM raises it all the same.
void raise_memlock(uint64_t ram_bytes) {
    rlimit lim{};
    if (::getrlimit(RLIMIT_MEMLOCK, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return;
    const rlimit want{RLIM_INFINITY, RLIM_INFINITY};
    const rlimit enough{lim.rlim_cur + ram_bytes, std::max<rlim_t>(lim.rlim_max, lim.rlim_cur + ram_bytes)};
    if (::setrlimit(RLIMIT_MEMLOCK, &want) != 0 && ::setrlimit(RLIMIT_MEMLOCK, &enough) != 0) {
        CLOG_WARN(kLog, "cannot raise RLIMIT_MEMLOCK by the guest RAM size: {}", std::strerror(errno));
    }
}

struct Backend {
    std::unique_ptr<dma::DmaBackend> own;
    dma::FakeBackend* fake = nullptr;
};

Result<Backend> make_backend(const LoadOptions& o) {
    Backend b;
    const bool real = o.backend == BackendKind::Vfio || o.backend == BackendKind::Iommufd;
    if (!o.connect_path.empty() && !real) {
        // The daemon's backend serves; this one only keeps the run's references valid (unused).
        b.own = std::make_unique<dma::NullBackend>(o.entry_limit);
        return b;
    }
    // --connect --backend vfio|iommufd: we are the VMM. We set the container (or the IOAS) up and
    // keep it (and the group or device) for the whole run; the daemon gets a duplicate of the
    // container fd (or of the iommufd, with the IOAS id) and maps on it.
    if (real) raise_memlock(o.ram_bytes);
    switch (o.backend) {
        case BackendKind::Fake: {
            dma::FakeConfig cfg;
            cfg.entry_limit = o.entry_limit;
            if (o.latency == FakeLatency::Typical) cfg.latency = dma::LatencyModel::typical();
            auto f = std::make_unique<dma::FakeBackend>(cfg);
            b.fake = f.get();
            b.own = std::move(f);
            return b;
        }
        case BackendKind::Null: b.own = std::make_unique<dma::NullBackend>(o.entry_limit); return b;
        case BackendKind::Vfio: {
            auto v = dma::VfioBackend::open_group(o.vfio_group);
            if (!v) return coiommu::unexpected(with_context(v.error(), fmt::format("vfio group {}", o.vfio_group)));
            b.own = std::move(*v);
            return b;
        }
        case BackendKind::Iommufd: {
            auto v = dma::IommufdBackend::open_device(o.vfio_device);
            if (!v) return coiommu::unexpected(with_context(v.error(), fmt::format("vfio device {}", o.vfio_device)));
            b.own = std::move(*v);
            return b;
        }
    }
    return make_error(EINVAL, "unknown backend");
}

RemoteBackend remote_backend(BackendKind k) {
    switch (k) {
        case BackendKind::Null: return RemoteBackend::Null;
        case BackendKind::Vfio: return RemoteBackend::Vfio;
        case BackendKind::Iommufd: return RemoteBackend::Iommufd;
        case BackendKind::Fake: break;
    }
    return RemoteBackend::Fake;
}

// `remote` is set to the SocketLink when --connect serves the coiommu strategy (owned by the strategy).
Result<std::unique_ptr<Strategy>> make_strategy(const LoadOptions& o, const RunSpec& spec, const StrategyEnv& env,
                                                SocketLink** remote) {
    switch (spec.strategy) {
        case StrategyKind::Coiommu: {
            if (!o.connect_path.empty()) {
                SocketLinkConfig sc;
                sc.socket_path = o.connect_path;
                sc.vcpus = o.vcpus;
                sc.endpoints = {kEndpointBdf};
                sc.backend = remote_backend(o.backend);
                if (sc.backend == RemoteBackend::Vfio) {
                    // make_backend opened the VMM's container for --backend vfio.
                    const auto* vfio = dynamic_cast<const dma::VfioBackend*>(env.backend);
                    if (vfio == nullptr) return make_error(EINVAL, "--connect --backend vfio: no container");
                    sc.vfio_container_fd = vfio->container_fd();
                } else if (sc.backend == RemoteBackend::Iommufd) {
                    const auto* iommufd = dynamic_cast<const dma::IommufdBackend*>(env.backend);
                    if (iommufd == nullptr) return make_error(EINVAL, "--connect --backend iommufd: no IOAS");
                    sc.iommufd = iommufd->iommufd();
                    sc.ioas_id = iommufd->ioas_id();
                }
                sc.latency = o.latency == FakeLatency::Typical ? daemon::proto::FakeLatency::Typical
                                                               : daemon::proto::FakeLatency::None;
                // --entry-limit is the fake/null container's; a real one has the kernel's.
                sc.entry_limit =
                    sc.backend == RemoteBackend::Fake || sc.backend == RemoteBackend::Null ? o.entry_limit : 0;
                sc.reconnect = o.reconnect ? daemon::Reconnect::On : daemon::Reconnect::Off;
                sc.reconnect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(o.reconnect_timeout);
                auto link = SocketLink::create(*env.mem, sc);
                if (!link) return coiommu::unexpected(link.error());
                *remote = link->get();
                return make_coiommu_strategy(env, std::move(*link));
            }
            workers::EngineConfig cfg = o.engine;
            cfg.variant = spec.engine;
            device::DeviceConfig dc;
            dc.endpoints = {kEndpointBdf};
            dc.vcpus = o.vcpus;
            auto link = InProcessLink::create(*env.mem, *env.backend, cfg, dc);
            if (!link) return coiommu::unexpected(link.error());
            return make_coiommu_strategy(env, std::move(*link));
        }
        case StrategyKind::Strict: return make_strict_strategy(env);
        case StrategyKind::Static: return make_static_strategy(env);
    }
    return make_error(EINVAL, "unknown strategy");
}

uint64_t backend_pinned_pages(const dma::DmaBackend& b) {
    const auto& c = b.counters();
    const uint64_t mapped = c.bytes_mapped.load(std::memory_order_relaxed);
    const uint64_t unmapped = c.bytes_unmapped.load(std::memory_order_relaxed);
    return mapped >= unmapped ? (mapped - unmapped) >> kPageShift : 0;
}

EngineFigures engine_figures(const telemetry::StatsSnapshot& s, std::string config) {
    using telemetry::RequestKind;
    const telemetry::ShardTotals& t = s.totals;
    EngineFigures e;
    e.config = std::move(config);
    e.requests_single = t.requests[RequestKind::Single];
    e.requests_batch = t.requests[RequestKind::Batch];
    e.requests_failed = t.requests_failed;
    e.pages_requested = t.pages_requested;
    e.pages_pinned = t.pages_pinned;
    e.pages_already_pinned = t.pages_already_pinned;
    e.pages_unpinned = t.pages_unpinned;
    for (std::size_t i = 0; i < telemetry::kPinFailureReasons; ++i) e.pin_failures[i] = t.pin_failures.items[i];
    for (std::size_t i = 0; i < telemetry::kUnpinResults; ++i) e.unpin_attempts[i] = t.unpin_attempts.items[i];
    e.dma_map_calls = t.dma_calls[telemetry::DmaOp::Map];
    e.dma_unmap_calls = t.dma_calls[telemetry::DmaOp::Unmap];
    e.pinned_pages = s.gauges.pinned_pages;
    telemetry::HistogramSnapshot lat = t.request_latency_ns[RequestKind::Single];
    lat.merge(t.request_latency_ns[RequestKind::Batch]);
    e.request_p50_ns = lat.percentile(0.50);
    e.request_p99_ns = lat.percentile(0.99);
    e.balloon_success = t.balloon_requests[telemetry::BalloonResult::Success];
    e.balloon_failed = t.balloon_requests[telemetry::BalloonResult::Failed];
    e.lru_scans = t.unpin_scans[telemetry::ScanKind::Lru];
    return e;
}

// The progress line's figures: over the last second of samples.
struct Progress {
    WindowRates rates;
    uint64_t map_p99_ns = 0;
};

class Sampler {
public:
    Sampler(RunCtx& ctx, std::vector<std::unique_ptr<VcpuState>>& vcpus) : ctx_(ctx), vcpus_(vcpus) {}

    Sample take(uint64_t now_ns, uint64_t start_ns) {
        Sample s;
        s.t_s = static_cast<double>(now_ns - start_ns) * 1e-9;
        uint64_t bytes_mapped = 0;
        if (ctx_.remote != nullptr) {
            // The daemon's figures: the engine's pinned gauge and the backend's live entries.
            if (auto rs = ctx_.remote->remote_stats()) {
                s.pinned_pages = rs->snapshot.gauges.pinned_pages;
                s.dma_entries = rs->head.backend_live_entries;
                s.engine_pinned_pages = s.pinned_pages;
                bytes_mapped = rs->snapshot.totals.pages_pinned << kPageShift;
            }
        } else {
            s.pinned_pages = backend_pinned_pages(ctx_.backend);
            s.dma_entries = ctx_.backend.live_entries();
            bytes_mapped = ctx_.backend.counters().bytes_mapped.load(std::memory_order_relaxed);
        }
        LogLinearSnapshot lat;
        for (const auto& v : vcpus_) {
            s.maps += v->maps.load();
            s.pages_mapped += v->pages_mapped.load();
            s.failures += v->map_failures.load();
            lat.merge(v->map_lat.snapshot());
        }
        const double dt = static_cast<double>(now_ns - last_ns_) * 1e-9;
        if (dt > 0 && last_ns_ != 0) {
            s.maps_per_s = static_cast<double>(s.maps - last_maps_) / dt;
            s.pins_per_s = static_cast<double>((bytes_mapped - last_bytes_mapped_) >> kPageShift) / dt;
        }
        s.map_p99_ns = interval(lat, last_lat_).percentile(0.99);
        if (ctx_.remote == nullptr) {
            if (auto e = ctx_.strategy.engine_stats(); e && *e) s.engine_pinned_pages = (*e)->gauges.pinned_pages;
        }
        last_ns_ = now_ns;
        last_maps_ = s.maps;
        last_bytes_mapped_ = bytes_mapped;
        remember(Tally{now_ns, s.maps, bytes_mapped >> kPageShift}, lat);
        last_lat_ = std::move(lat);
        return s;
    }

    void start(uint64_t now_ns) {
        last_ns_ = now_ns;
        last_bytes_mapped_ = ctx_.backend.counters().bytes_mapped.load(std::memory_order_relaxed);
        remember(Tally{now_ns, 0, last_bytes_mapped_ >> kPageShift}, LogLinearSnapshot{});
    }

    // Rates and p99 over the last second (less at the start of the run).
    [[nodiscard]] Progress progress() const {
        Progress p;
        if (history_.empty()) return p;
        p.rates = window_rates(history_, kProgressWindowNs);
        const std::size_t from = window_start(history_, kProgressWindowNs);
        p.map_p99_ns = interval(lat_history_.back(), lat_history_[from]).percentile(0.99);
        return p;
    }

private:
    // Keeps the tallies (and latency snapshots) of the last second and the one before it.
    void remember(const Tally& t, const LogLinearSnapshot& lat) {
        history_.push_back(t);
        lat_history_.push_back(lat);
        const auto drop = static_cast<std::ptrdiff_t>(window_start(history_, kProgressWindowNs));
        history_.erase(history_.begin(), history_.begin() + drop);
        lat_history_.erase(lat_history_.begin(), lat_history_.begin() + drop);
    }

    RunCtx& ctx_;
    std::vector<std::unique_ptr<VcpuState>>& vcpus_;
    uint64_t last_ns_ = 0;
    uint64_t last_maps_ = 0;
    uint64_t last_bytes_mapped_ = 0;
    LogLinearSnapshot last_lat_;
    std::vector<Tally> history_;  // oldest first
    std::vector<LogLinearSnapshot> lat_history_;
};

void print_progress(const RunControl& p, const std::string& label, const Sample& s, const Progress& last_second) {
    if (p.progress == nullptr) return;
    const std::string line = fmt::format("[{:5.1f}s] {}  maps/s {}  pins/s {}  p99 {}  pinned {:.1f} MiB  failures {}",
                                         s.t_s, label, human_count(last_second.rates.maps_per_s),
                                         human_count(last_second.rates.pins_per_s), human_ns(last_second.map_p99_ns),
                                         static_cast<double>(s.pinned_pages * kPageSize) / (1 << 20), s.failures);
    if (p.tty) {
        std::fprintf(p.progress, "\r%s\x1b[K", line.c_str());
    } else {
        std::fprintf(p.progress, "%s\n", line.c_str());
    }
    std::fflush(p.progress);
}

// One run_once() from setup to teardown. It lives on run_once's stack and is never moved: the
// strategy, the context and the threads point at its members.
class Run {
public:
    Run(const LoadOptions& o, const RunSpec& spec, const RunControl& control) : o_(o), spec_(spec), control_(control) {
        r_.spec = spec;
        r_.label = spec.label();
        r_.backend = o.connect_path.empty() ? std::string(to_string(o.backend))
                                            : fmt::format("coiommud:{}", to_string(o.backend));
    }
    Run(const Run&) = delete;
    Run& operator=(const Run&) = delete;
    ~Run() = default;

    Status setup() {
        COIOMMU_TRY(setup_guest());
        COIOMMU_TRY(setup_strategy());
        COIOMMU_TRY(setup_vcpus());
        return start_threads();
    }
    void drive();
    void totals();
    void cross_checks();
    void teardown();
    // --connect: the daemon went away during the run.
    [[nodiscard]] bool host_lost() const { return ctx_ && ctx_->host_lost(); }
    // Instead of totals/checks/teardown when host_lost(): the guest's own figures and one failed
    // check that says what happened (every other figure would need the daemon).
    void report_host_lost();
    [[nodiscard]] RunResult take() { return std::move(r_); }

private:
    Status setup_guest();
    Status setup_strategy();
    void describe_invariant();
    Status setup_vcpus();
    Status start_threads();
    void join_all();
    [[nodiscard]] bool cancelled() const {
        return control_.cancel != nullptr && control_.cancel->load(std::memory_order_relaxed);
    }
    void guest_totals();
    void memory_totals();
    void balloon_totals();
    void backend_checks();
    void engine_checks();

    const LoadOptions& o_;
    const RunSpec& spec_;
    const RunControl& control_;
    RunResult r_;
    const double cpu_at_start_ = process_cpu_s();
    const double main_cpu_at_start_ = thread_cpu_s();
    const uint64_t setup_t0_ = monotonic_ns();

    std::optional<GuestLayout> layout_;
    WorkloadParams wp_;
    std::optional<GuestMemory> mem_;
    Backend backend_;
    StrategyEnv env_;
    SocketLink* remote_ = nullptr;
    std::unique_ptr<Strategy> strategy_;
    std::unique_ptr<BalloonBoard> board_;
    std::unique_ptr<RunCtx> ctx_;
    std::vector<std::unique_ptr<VcpuState>> vcpus_;
    std::vector<std::thread> threads_;
    BalloonStats balloon_;
    std::thread balloon_thread_;
    std::optional<Sampler> sampler_;
    uint64_t start_ns_ = 0;
    Sample last_;                    // after the quiesce
    std::vector<uint64_t> touched_;  // union of the vCPUs' bitmaps
};

Status Run::setup_guest() {
    auto layout = GuestLayout::compute(o_.ram_bytes, o_.vcpus, o_.buffer_pages);
    if (!layout) return coiommu::unexpected(layout.error());
    layout_.emplace(*layout);
    wp_.kind = spec_.workload;
    wp_.data_pages = layout_->data_pages;
    wp_.buffer_pages = o_.buffer_pages;
    wp_.vcpus = o_.vcpus;
    wp_.zipf_s = o_.zipf_s;
    wp_.ring_buffers = o_.ring_buffers;
    wp_.seed = o_.seed;
    COIOMMU_TRY(wp_.validate());

    const RegionSpec region{Gpa{0}, o_.ram_bytes};
    auto mem = GuestMemory::create(std::span<const RegionSpec>(&region, 1));
    if (!mem) return coiommu::unexpected(with_context(mem.error(), "guest RAM"));
    mem_.emplace(std::move(*mem));
    auto backend = make_backend(o_);
    if (!backend) return coiommu::unexpected(backend.error());
    backend_ = std::move(*backend);
    return ok();
}

Status Run::setup_strategy() {
    env_.mem = &*mem_;
    env_.layout = &*layout_;
    env_.backend = backend_.own.get();
    env_.vcpus = o_.vcpus;
    env_.max_outstanding = o_.max_outstanding();
    env_.max_buffer_pages = o_.buffer_pages;
    // A vCPU whose request was in flight when the daemon died waits for the resumed one, as a
    // guest driver spins until its slot completes.
    if (o_.reconnect) env_.timeout = std::max(env_.timeout, o_.reconnect_timeout + std::chrono::seconds(5));
    auto strategy = make_strategy(o_, spec_, env_, &remote_);
    if (!strategy) return coiommu::unexpected(with_context(strategy.error(), r_.label));
    strategy_ = std::move(*strategy);
    r_.served_by = strategy_->description();

    if (uses_balloon(spec_.workload)) {
        if (layout_->data_pages / o_.balloon_pages >= 2) {
            board_ = std::make_unique<BalloonBoard>(layout_->data_pages, o_.balloon_pages);
        } else {
            CLOG_WARN(kLog, "{}: guest RAM too small for balloon chunks of {} pages: no ballooning", r_.label,
                      o_.balloon_pages);
        }
    }
    ctx_.reset(
        new RunCtx{o_, spec_, *layout_, *strategy_, *backend_.own, backend_.fake, board_.get(), TscClock::calibrate()});
    ctx_->remote = remote_;
    describe_invariant();
    return ok();
}

void Run::describe_invariant() {
    r_.invariant_checked = backend_.fake != nullptr || (remote_ != nullptr && remote_->can_query_mapped());
    if (backend_.fake != nullptr) {
        r_.invariant_note = "checked with FakeBackend::is_mapped after every map and before every unmap";
    } else if (r_.invariant_checked) {
        r_.invariant_note =
            "checked with the daemon's QueryMapped (its fake backend) after every map and before every unmap";
    } else {
        r_.invariant_note = fmt::format("skipped: the {} backend keeps no mapping state to check against", r_.backend);
    }
}

Status Run::setup_vcpus() {
    for (uint32_t i = 0; i < o_.vcpus; ++i) {
        auto v = std::make_unique<VcpuState>();
        v->index = i;
        auto dma = strategy_->vcpu(i);
        if (!dma) return coiommu::unexpected(with_context(dma.error(), fmt::format("vcpu {}", i)));
        v->dma = std::move(*dma);
        auto gen = WorkloadGen::create(wp_, i);
        if (!gen) return coiommu::unexpected(gen.error());
        v->gen.emplace(std::move(*gen));
        v->touched.assign((layout_->data_pages + 63) / 64, 0);
        vcpus_.push_back(std::move(v));
    }
    return ok();
}

// std::thread may throw: this is the boundary where that becomes an Error.
Status Run::start_threads() {
    try {
        for (auto& v : vcpus_) {
            threads_.emplace_back([ctx = ctx_.get(), vs = v.get()] { VcpuRunner(*ctx, *vs).run(); });
        }
        if (board_) balloon_thread_ = std::thread([this] { balloon_loop(*ctx_, balloon_); });
    } catch (const std::system_error& e) {
        join_all();
        return make_error(e.code().value(), "starting the run's threads");
    }
    r_.setup_s = static_cast<double>(monotonic_ns() - setup_t0_) * 1e-9;
    return ok();
}

void Run::join_all() {
    ctx_->stop.store(true);
    ctx_->go.store(true, std::memory_order_release);
    for (auto& t : threads_) {
        if (t.joinable()) t.join();
    }
    if (balloon_thread_.joinable()) balloon_thread_.join();
}

// The run: sample every 100 ms, print progress once a second.
void Run::drive() {
    sampler_.emplace(*ctx_, vcpus_);
    const uint64_t start = monotonic_ns();
    start_ns_ = start;
    sampler_->start(start);
    ctx_->go.store(true, std::memory_order_release);
    const uint64_t end = start + static_cast<uint64_t>(o_.duration.count());
    uint64_t next = start + kSampleNs;
    uint64_t tick = 0;
    while (next <= end && !cancelled() && !ctx_->host_lost()) {
        wait_until(next);
        Sample s = sampler_->take(monotonic_ns(), start);
        if (++tick % kSamplesPerProgress == 0) print_progress(control_, r_.label, s, sampler_->progress());
        r_.timeline.push_back(s);
        next += kSampleNs;
    }
    if (!cancelled() && !ctx_->host_lost()) wait_until(end);
    ctx_->stop.store(true);
    const uint64_t stopped = monotonic_ns();
    r_.duration_s = static_cast<double>(stopped - start) * 1e-9;
    join_all();
    if (control_.progress != nullptr && control_.tty && tick >= kSamplesPerProgress) {
        std::fputs("\n", control_.progress);
    }
}

void Run::totals() {
    // Final cut: the guest holds nothing; park the unpinner so nothing moves any more.
    if (auto st = strategy_->quiesce(); !st) {
        CLOG_WARN(kLog, "{}: quiesce: {}", r_.label, st.error().message());
    }
    last_ = sampler_->take(monotonic_ns(), start_ns_);
    r_.cpu = other_threads_cpu(static_cast<pid_t>(::gettid()));
    for (const auto& v : vcpus_) r_.cpu.push_back(ThreadCpu{fmt::format("load_vcpu{}", v->index), v->cpu_s});
    r_.cpu.push_back(ThreadCpu{"load_main", thread_cpu_s() - main_cpu_at_start_});
    guest_totals();
    memory_totals();
    balloon_totals();
}

void Run::guest_totals() {
    RunResult& r = r_;
    LogLinearSnapshot map_lat, req_lat, unmap_lat;
    touched_.assign((layout_->data_pages + 63) / 64, 0);
    for (const auto& v : vcpus_) {
        r.maps += v->maps.load();
        r.map_failures += v->map_failures.load();
        r.unmaps += v->unmaps.load();
        r.unmap_failures += v->unmap_failures.load();
        r.pages_mapped += v->pages_mapped.load();
        r.pages_unmapped += v->pages_unmapped.load();
        r.skipped_ops += v->skipped.load();
        r.invariant_checks += v->invariant_checks.load();
        r.invariant_violations += v->invariant_violations.load();
        r.pages_requested += v->pages_requested.load();
        r.notifications += v->notifications;
        for (std::size_t i = 0; i < kMapFailures; ++i) r.failures_by_reason[i] += v->failures[i].load();
        map_lat.merge(v->map_lat.snapshot());
        req_lat.merge(v->request_lat.snapshot());
        unmap_lat.merge(v->unmap_lat.snapshot());
        for (std::size_t w = 0; w < touched_.size(); ++w) touched_[w] |= v->touched[w];
    }
    for (uint64_t w : touched_) r.guest_touched_pages += static_cast<uint64_t>(std::popcount(w));
    const uint64_t unanswered = r.failures_by_reason[static_cast<std::size_t>(MapFailure::Timeout)];
    r.requests_completed = r.notifications >= unanswered ? r.notifications - unanswered : 0;
    r.map_latency = LatencySummary::of(map_lat);
    r.request_latency = LatencySummary::of(req_lat);
    r.unmap_latency = LatencySummary::of(unmap_lat);
    r.maps_per_s = r.duration_s > 0 ? static_cast<double>(r.maps) / r.duration_s : 0;
    r.pages_per_s = r.duration_s > 0 ? static_cast<double>(r.pages_mapped) / r.duration_s : 0;
}

void Run::memory_totals() {
    RunResult& r = r_;
    const dma::BackendCounters& bc = backend_.own->counters();
    r.pinned_end_pages = last_.pinned_pages;
    r.pages_pinned_total = bc.bytes_mapped.load() >> kPageShift;
    r.pages_unpinned_total = bc.bytes_unmapped.load() >> kPageShift;
    r.dma_map_calls = bc.map_calls.load();
    r.dma_unmap_calls = bc.unmap_calls.load();
    r.dma_map_failures = bc.map_failures.load();
    r.dma_unmap_failures = bc.unmap_failures.load();
    r.dma_entry_limit = backend_.own->entry_limit();
    if (remote_ != nullptr) {
        // The daemon's backend did the work: its call counts, the engine's page totals.
        auto rs = remote_->remote_stats();
        if (rs) {
            r.pages_pinned_total = rs->snapshot.totals.pages_pinned;
            r.pages_unpinned_total = rs->snapshot.totals.pages_unpinned;
            r.dma_map_calls = rs->head.backend_map_calls;
            r.dma_unmap_calls = rs->head.backend_unmap_calls;
            r.dma_entry_limit = rs->head.backend_entry_limit;
        } else {
            CLOG_WARN(kLog, "{}: daemon statistics: {}", r.label, rs.error().message());
        }
    }
    double sum = 0;
    for (const Sample& s : r.timeline) {
        r.pinned_peak_pages = std::max(r.pinned_peak_pages, s.pinned_pages);
        r.dma_entries_peak = std::max(r.dma_entries_peak, s.dma_entries);
        sum += static_cast<double>(s.pinned_pages);
    }
    r.pinned_peak_pages = std::max(r.pinned_peak_pages, last_.pinned_pages);
    r.dma_entries_peak = std::max(r.dma_entries_peak, last_.dma_entries);
    r.pinned_mean_pages =
        r.timeline.empty() ? static_cast<double>(last_.pinned_pages) : sum / static_cast<double>(r.timeline.size());
    const uint64_t setup_pinned = spec_.strategy == StrategyKind::Static ? o_.ram_bytes >> kPageShift : 0;
    const uint64_t run_pins = r.pages_pinned_total >= setup_pinned ? r.pages_pinned_total - setup_pinned : 0;
    r.pins_per_s = r.duration_s > 0 ? static_cast<double>(run_pins) / r.duration_s : 0;
}

void Run::balloon_totals() {
    r_.balloon_requests = balloon_.requests;
    r_.balloon_success = balloon_.success;
    r_.balloon_failed = balloon_.failed;
    r_.balloon_aborted = balloon_.aborted;
    r_.balloon_violations = balloon_.violations;
    r_.balloon_pages = balloon_.pages;
    r_.balloon_latency = LatencySummary::of(balloon_.latency.snapshot());
}

// Cross-checks of the final state.
void Run::cross_checks() {
    RunResult& r = r_;
    if (r.invariant_checked) {
        r.checks.push_back(
            Check{"invariant", r.invariant_violations == 0,
                  fmt::format("{} violations in {} checks", r.invariant_violations, r.invariant_checks)});
    }
    const uint64_t unanswered = r.failures_by_reason[static_cast<std::size_t>(MapFailure::Timeout)];
    const uint64_t busy = r.failures_by_reason[static_cast<std::size_t>(MapFailure::SlotBusy)];
    r.checks.push_back(Check{
        "every_request_completed", unanswered == 0 && busy == 0,
        fmt::format("{} requests sent, {} timed out, {} found the slot busy", r.notifications, unanswered, busy)});
    r.checks.push_back(Check{"every_map_unmapped", r.maps == r.unmaps + r.unmap_failures && r.unmap_failures == 0,
                             fmt::format("{} maps, {} unmaps, {} failed unmaps", r.maps, r.unmaps, r.unmap_failures)});
    if (backend_.fake != nullptr) backend_checks();
    if (spec_.strategy == StrategyKind::Static) {
        const uint64_t ram_pages = o_.ram_bytes >> kPageShift;
        r.checks.push_back(Check{"static_all_ram_pinned", r.pinned_end_pages == ram_pages,
                                 fmt::format("{} of {} guest pages mapped", r.pinned_end_pages, ram_pages)});
    }
    if (spec_.strategy == StrategyKind::Strict) {
        r.checks.push_back(
            Check{"strict_nothing_left_mapped", r.pinned_end_pages == 0,
                  fmt::format("{} pages mapped after the guest unmapped everything", r.pinned_end_pages)});
    }
    engine_checks();
    if (board_) {
        r.checks.push_back(Check{"balloon_released_pages", r.balloon_violations == 0,
                                 fmt::format("{} balloon requests, {} Success, {} still mapped after Success",
                                             r.balloon_requests, r.balloon_success, r.balloon_violations)});
    }
}

// The fake backend's live mappings against the counters and (coiommu) the pages the guest asked for.
void Run::backend_checks() {
    RunResult& r = r_;
    uint64_t live = 0;
    std::optional<uint64_t> stranger;  // a pinned page the guest never asked for
    for (const dma::FakeMapping& m : backend_.fake->mappings()) {
        live += m.size >> kPageShift;
        if (spec_.strategy != StrategyKind::Coiommu) continue;
        for (uint64_t g = raw(m.iova) >> kPageShift; g < (raw(m.iova) + m.size) >> kPageShift; ++g) {
            if (g >= layout_->data_pages || (touched_[g >> 6] & (uint64_t{1} << (g & 63))) == 0) {
                if (!stranger) stranger = g;
            }
        }
    }
    const bool within = !stranger;
    r.checks.push_back(Check{"backend_mappings_match_counts", live == r.pinned_end_pages,
                             fmt::format("{} pages in live mappings, counters say {}", live, r.pinned_end_pages)});
    if (spec_.strategy == StrategyKind::Coiommu) {
        r.checks.push_back(
            Check{"pinned_within_guest_mapped", within && r.pinned_peak_pages <= r.guest_touched_pages,
                  fmt::format("peak {} pinned pages, {} distinct pages the guest asked to map; "
                              "{}",
                              r.pinned_peak_pages, r.guest_touched_pages,
                              within ? std::string("every pinned page was one of them")
                                     : fmt::format("gfn {:#x} is pinned but was never asked for", *stranger))});
    }
}

void Run::engine_checks() {
    RunResult& r = r_;
    auto es = strategy_->engine_stats();
    if (!es) {
        CLOG_WARN(kLog, "{}: engine statistics: {}", r.label, es.error().message());
        return;
    }
    if (!*es) return;
    r.engine = engine_figures(**es, r.served_by);
    const EngineFigures& e = *r.engine;
    const uint64_t engine_requests = e.requests_single + e.requests_batch;
    // After a resume the engine is the last daemon's: it counts from the resume on and starts with
    // the pages it adopted.
    const auto resumed = remote_ != nullptr ? remote_->last_resume() : std::nullopt;
    if (!resumed) {
        r.checks.push_back(Check{"engine_saw_every_request", engine_requests == r.notifications,
                                 fmt::format("guest sent {}, engine counted {}", r.notifications, engine_requests)});
    } else {
        r.checks.push_back(Check{"engine_saw_requests_since_resume", engine_requests <= r.notifications,
                                 fmt::format("guest sent {} over the run, the resumed engine counted {} since the "
                                             "last resume",
                                             r.notifications, engine_requests)});
    }
    const uint64_t adopted = resumed ? resumed->pages : 0;
    r.checks.push_back(
        Check{"engine_counts_add_up", e.pages_pinned + adopted - e.pages_unpinned == e.pinned_pages,
              fmt::format("engine pinned {} + adopted {} - unpinned {} = {}, gauge {}", e.pages_pinned, adopted,
                          e.pages_unpinned, e.pages_pinned + adopted - e.pages_unpinned, e.pinned_pages)});
    if (remote_ == nullptr) {  // --connect: pinned_end_pages is the engine's gauge itself
        r.checks.push_back(
            Check{"engine_matches_backend", e.pinned_pages == r.pinned_end_pages,
                  fmt::format("engine gauge {} pinned pages, backend {}", e.pinned_pages, r.pinned_end_pages)});
    }
}

// Teardown: the host must not keep a mapping of this guest.
void Run::teardown() {
    strategy_->shutdown();
    if (remote_ != nullptr && remote_->reconnecting()) {
        const RestartAudits a = remote_->restart_audits();
        r_.resumes = remote_->resumes();
        r_.restart_audits = a.audits;
        r_.restart_audits_inconsistent = a.inconsistent;
        if (o_.backend == BackendKind::Fake) {
            r_.checks.push_back(Check{
                "record_matched_container_at_every_loss", a.inconsistent == 0,
                a.inconsistent == 0
                    ? fmt::format("{} sessions resumed; at each of {} losses every recorded extent was mapped and "
                                  "every mapping recorded ({} entries caught mid-call, settled on resume)",
                                  r_.resumes, a.audits, a.in_progress)
                    : fmt::format("{} of {} audits disagreed; first: {}", a.inconsistent, a.audits, a.first_problem)});
        }
    }
    if (remote_ != nullptr) {
        const auto info = remote_->close_info();
        r_.checks.push_back(Check{"teardown_left_no_mapping", info && info->dma_entries_after == 0,
                                  info ? fmt::format("the daemon reports {} backend entries left after Close "
                                                     "({} pages unpinned)",
                                                     info->dma_entries_after, info->pages_unpinned)
                                       : std::string("the daemon did not answer Close")});
        if (o_.backend == BackendKind::Vfio) {
            // The VMM's own view of its container (type1: DMA_AVAIL; iommufd has no such count):
            // every entry the daemon made is gone again.
            const uint64_t left = backend_.own->live_entries();
            r_.checks.push_back(Check{"container_back_to_initial", left == 0,
                                      fmt::format("the VMM's container has {} entries more than at setup "
                                                  "(DMA_AVAIL)",
                                                  left)});
        }
    } else {
        const uint64_t left = backend_.own->live_entries();
        r_.checks.push_back(
            Check{"teardown_left_no_mapping", left == 0, fmt::format("{} backend entries left after teardown", left)});
    }
    r_.process_cpu_s = process_cpu_s() - cpu_at_start_;
}

}  // namespace

LatencySummary LatencySummary::of(const LogLinearSnapshot& s) {
    LatencySummary l;
    l.count = s.count();
    if (l.count == 0) return l;
    l.min = s.min;
    l.p50 = s.percentile(0.50);
    l.p90 = s.percentile(0.90);
    l.p99 = s.percentile(0.99);
    l.p999 = s.percentile(0.999);
    l.max = s.max;
    l.mean = s.mean();
    return l;
}

void Run::report_host_lost() {
    guest_totals();
    r_.checks.clear();
    r_.checks.push_back(Check{"daemon_stayed_up", false,
                              fmt::format("coiommud at {} went away {:.1f} s into the run ({}); the run stopped{}",
                                          o_.connect_path, r_.duration_s, remote_->lost_reason(),
                                          o_.reconnect ? "" : " (--reconnect resumes the session instead)")});
    CLOG_ERROR(kLog, "{}: {}", r_.label, r_.checks.back().detail);
    strategy_->shutdown();  // nothing to close: the link knows it is lost
    r_.process_cpu_s = process_cpu_s() - cpu_at_start_;
}

bool RunResult::passed() const {
    if (invariant_violations != 0 || balloon_violations != 0) return false;
    return std::all_of(checks.begin(), checks.end(), [](const Check& c) { return c.passed; });
}

Result<RunResult> run_once(const LoadOptions& o, const RunSpec& spec, const RunControl& control) {
    Run run(o, spec, control);
    COIOMMU_TRY(run.setup());
    run.drive();
    if (run.host_lost()) {
        run.report_host_lost();
        return run.take();
    }
    run.totals();
    run.cross_checks();
    run.teardown();
    return run.take();
}

}  // namespace coiommu::loadgen
