#include "engine/loadgen/options.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "engine/loadgen/guest_layout.h"

namespace coiommu::loadgen {
namespace {

using std::chrono::nanoseconds;

template <class... Args>
coiommu::unexpected<Error> bad(fmt::format_string<Args...> f, Args&&... args) {
    return make_error(EINVAL, fmt::format(f, std::forward<Args>(args)...));
}

std::optional<uint64_t> parse_u64(std::string_view v) {
    uint64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (v.empty() || ec != std::errc{} || end != v.data() + v.size()) return std::nullopt;
    return out;
}

// A finite, non-negative decimal ("0.5", "2", "1e3").
std::optional<double> parse_double(std::string_view v) {
    if (v.empty() || v.size() > 64) return std::nullopt;
    const std::string s(v);
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(s.c_str(), &end);
    if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(d) || d < 0) return std::nullopt;
    return d;
}

std::vector<std::string_view> split(std::string_view s) {
    std::vector<std::string_view> out;
    while (true) {
        const auto comma = s.find(',');
        out.push_back(s.substr(0, comma));
        if (comma == std::string_view::npos) break;
        s.remove_prefix(comma + 1);
    }
    return out;
}

template <class T, class ParseOne>
Result<std::vector<T>> parse_list(std::string_view flag, std::string_view v, std::string_view allowed, ParseOne one) {
    std::vector<T> out;
    for (std::string_view item : split(v)) {
        auto x = one(item);
        if (!x) return bad("{}: '{}' is not one of {}", flag, item, allowed);
        for (const T& seen : out) {
            if (seen == *x) return bad("{}: '{}' is listed twice", flag, item);
        }
        out.push_back(*x);
    }
    return out;
}

std::optional<workers::Variant> parse_variant(std::string_view v) {
    if (v == "fast") return workers::Variant::Fast;
    if (v == "seed") return workers::Variant::Seed;
    return std::nullopt;
}

template <class T>
Result<T> ranged(std::string_view flag, std::string_view v, uint64_t lo, uint64_t hi) {
    auto n = parse_u64(v);
    if (!n) return bad("{}: '{}' is not an unsigned integer", flag, v);
    if (*n < lo || *n > hi) return bad("{}: {} is outside {}..{}", flag, *n, lo, hi);
    return static_cast<T>(*n);
}

}  // namespace

std::string_view to_string(BackendKind k) {
    switch (k) {
        case BackendKind::Fake: return "fake";
        case BackendKind::Null: return "null";
        case BackendKind::Vfio: return "vfio";
    }
    return "?";
}

std::string_view to_string(FakeLatency l) { return l == FakeLatency::Typical ? "typical" : "none"; }

workers::EngineConfig default_engine_config() {
    workers::EngineConfig c;
    c.unpin_policy = workers::UnpinPolicy::Lru;
    c.unpin_interval = std::chrono::seconds(1);
    return c;
}

uint32_t LoadOptions::max_outstanding() const {
    if (lifetime.timed()) return kMaxTimedOutstanding;
    return static_cast<uint32_t>(lifetime.ops + 1);
}

std::string RunSpec::label() const {
    if (strategy == StrategyKind::Coiommu) {
        return fmt::format("{}/{}/{}", to_string(strategy), workers::to_string(engine), to_string(workload));
    }
    return fmt::format("{}/{}", to_string(strategy), to_string(workload));
}

std::vector<RunSpec> expand_matrix(const LoadOptions& o) {
    std::vector<RunSpec> out;
    for (WorkloadKind w : o.workloads) {
        for (StrategyKind s : o.strategies) {
            if (s == StrategyKind::Coiommu) {
                for (workers::Variant e : o.engines) out.push_back(RunSpec{w, s, e});
            } else {
                out.push_back(RunSpec{w, s, workers::Variant::Fast});
            }
        }
    }
    return out;
}

std::optional<uint64_t> parse_size(std::string_view text) {
    if (text.empty()) return std::nullopt;
    uint64_t mult = 1;
    switch (text.back()) {
        case 'K':
        case 'k': mult = uint64_t{1} << 10; break;
        case 'M':
        case 'm': mult = uint64_t{1} << 20; break;
        case 'G':
        case 'g': mult = uint64_t{1} << 30; break;
        case 'T':
        case 't': mult = uint64_t{1} << 40; break;
        default: break;
    }
    if (mult != 1) text.remove_suffix(1);
    auto n = parse_u64(text);
    uint64_t out = 0;
    if (!n || __builtin_mul_overflow(*n, mult, &out)) return std::nullopt;
    return out;
}

std::optional<nanoseconds> parse_seconds(std::string_view text) {
    struct Suffix {
        std::string_view text;
        double ns;
    };
    static constexpr Suffix kSuffixes[] = {{"ns", 1.0}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}};
    double unit = 1e9;
    for (const Suffix& s : kSuffixes) {
        if (text.size() > s.text.size() && text.ends_with(s.text)) {
            text.remove_suffix(s.text.size());
            unit = s.ns;
            break;
        }
    }
    auto d = parse_double(text);
    if (!d) return std::nullopt;
    const double ns = *d * unit;
    if (ns > 1e18) return std::nullopt;
    return nanoseconds{static_cast<int64_t>(std::llround(ns))};
}

std::string usage() {
    return R"(usage: coiommu-load [options]

Emulates a guest's CoIOMMU driver on N vCPU threads doing DMA maps over a workload, against the
pin engine in this process, and reports pin throughput, latency and pinned memory. With several
engines/strategies/workloads it runs each cell of the matrix with the same seed and compares them.

workload
  --workload W[,W..]     stream|ring|zipf|random|balloon|mix               (default mix)
  --vcpus N              emulated vCPU threads, 1..256                    (default 2)
  --ram SIZE             guest RAM, e.g. 256M, 4G                          (default 1G)
  --buffer-pages B       pages per DMA buffer, 1..4096                     (default 16)
  --lifetime N|T         hold each buffer for N later operations, or a time
                         such as 50us / 2ms (0 = unmap right after the DMA) (default 4)
  --think-us T           pause T us after each operation, per vCPU         (default 0)
  --rate R               target operations/s over all vCPUs (instead of --think-us)
  --duration S           seconds per run, e.g. 5, 0.5, 500ms               (default 5)
  --seed N               seed of every random choice                       (default 1)
  --zipf-s S             Zipf exponent of the zipf workload (> 0)          (default 1.1)
  --ring-buffers N       buffers per vCPU ring (ring workload)             (default 64)
  --balloon-pages N      pages per balloon inflation (balloon, mix)        (default 1024)
  --balloon-interval T   time between balloon inflations                   (default 100ms)

what to compare
  --engine E[,E..]       fast|seed: the pin engine of the coiommu strategy (default fast)
  --strategy S[,S..]     coiommu|strict|static                             (default coiommu)
                           coiommu: CoIOMMU DTT + precise pin requests, lazy unpinning
                           strict:  virtio-iommu, one MAP/UNMAP request per DMA map/unmap
                           static:  all guest RAM mapped up front
  --compare              shorthand for --engine fast,seed --strategy coiommu,strict,static
  --engine-opts K=V,..   engine options (workers=, coalesce=, spin_budget=, unpin_policy=,
                         unpin_interval=, unpin_limit=, unpin_gen_threshold=, extent_store=,
                         max_batch_pages=); default unpin_policy=lru,unpin_interval=1s

DMA backend
  --backend B            fake|null|vfio                                    (default fake)
  --latency L            fake backend latency model: typical|none          (default typical)
  --entry-limit N        dma_entry_limit of the fake/null container        (default 65535)
  --vfio-group PATH      the VFIO group for --backend vfio, e.g. /dev/vfio/12
  --connect SOCKET       drive a running coiommud at SOCKET as a VMM would (guest RAM memfds,
                         trigger eventfds, BAR0 writes, balloon requests over its protocol)
                         instead of an in-process engine; the daemon's engine serves, on its
                         fake (--latency, --entry-limit) or null backend. Only the coiommu
                         strategy; not with --backend vfio, --engine, --compare, --engine-opts.
                         The safety invariant is checked through the daemon's QueryMapped
                         (fake backend; skipped with null)

output
  --json FILE            every figure of every run as JSON
  --plot FILE.png        pinned memory and latency over time, comparison bars (gnuplot)
  --progress             progress line once a second even when stdout is not a TTY
  --quiet                no progress line and no summary
  --table                only the comparison table (no per-run summaries)
  --log-level L          debug|info|warn|error|off for the engine's log on stderr (default warn)
  --help                 this text
  --version              print the version and git revision

Exit status: 0 all runs passed; 1 a run failed (safety invariant or a final check) or could not
be set up; 2 bad command line.
)";
}

Result<ParsedCli> parse_cli(const std::vector<std::string_view>& args) {
    ParsedCli out;
    LoadOptions& o = out.options;
    bool think_set = false, rate_set = false, compare = false, engines_set = false, strategies_set = false;
    bool latency_set = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view flag = args[i];
        std::string_view value;
        bool inline_value = false;
        if (const auto eq = flag.find('='); flag.starts_with("--") && eq != std::string_view::npos) {
            value = flag.substr(eq + 1);
            flag = flag.substr(0, eq);
            inline_value = true;
        }
        auto need = [&]() -> Result<std::string_view> {
            if (inline_value) return value;
            if (i + 1 >= args.size()) return bad("{} needs a value", flag);
            return args[++i];
        };
        auto take = [&](auto&& apply) -> Status {
            auto v = need();
            if (!v) return coiommu::unexpected(v.error());
            return apply(*v);
        };
        auto no_value = [&]() -> Status {
            if (inline_value) return bad("{} takes no value", flag);
            return ok();
        };
        Status st = ok();
        if (flag == "--help" || flag == "-h") {
            out.action = CliAction::Help;
            return out;
        } else if (flag == "--version") {
            out.action = CliAction::Version;
            return out;
        } else if (flag == "--vcpus") {
            st = take([&](std::string_view v) -> Status {
                auto n = ranged<uint32_t>(flag, v, 1, kMaxVcpusFlag);
                if (!n) return coiommu::unexpected(n.error());
                o.vcpus = *n;
                return ok();
            });
        } else if (flag == "--ram") {
            st = take([&](std::string_view v) -> Status {
                auto n = parse_size(v);
                if (!n) return bad("--ram: '{}' is not a size (e.g. 512M, 4G)", v);
                o.ram_bytes = *n;
                return ok();
            });
        } else if (flag == "--workload") {
            st = take([&](std::string_view v) -> Status {
                auto l = parse_list<WorkloadKind>(flag, v, "stream|ring|zipf|random|balloon|mix", parse_workload);
                if (!l) return coiommu::unexpected(l.error());
                o.workloads = std::move(*l);
                return ok();
            });
        } else if (flag == "--buffer-pages") {
            st = take([&](std::string_view v) -> Status {
                auto n = ranged<uint32_t>(flag, v, 1, kMaxBufferPages);
                if (!n) return coiommu::unexpected(n.error());
                o.buffer_pages = *n;
                return ok();
            });
        } else if (flag == "--lifetime") {
            st = take([&](std::string_view v) -> Status {
                if (auto n = parse_u64(v)) {
                    if (*n > 65535) return bad("--lifetime: {} operations is more than 65535", *n);
                    o.lifetime = Lifetime{*n, nanoseconds{0}};
                    return ok();
                }
                auto t = parse_seconds(v);
                if (!t || t->count() == 0 || (v.back() >= '0' && v.back() <= '9')) {
                    return bad("--lifetime: '{}' is neither an operation count nor a time such as 50us", v);
                }
                o.lifetime = Lifetime{0, *t};
                return ok();
            });
        } else if (flag == "--think-us") {
            st = take([&](std::string_view v) -> Status {
                auto d = parse_double(v);
                if (!d || *d > 1e9) return bad("--think-us: '{}' is not a number of microseconds", v);
                o.think = nanoseconds{static_cast<int64_t>(std::llround(*d * 1e3))};
                think_set = true;
                return ok();
            });
        } else if (flag == "--rate") {
            st = take([&](std::string_view v) -> Status {
                auto d = parse_double(v);
                if (!d || *d <= 0 || *d > 1e9) return bad("--rate: '{}' is not a positive operations/s", v);
                o.rate = *d;
                rate_set = true;
                return ok();
            });
        } else if (flag == "--duration") {
            st = take([&](std::string_view v) -> Status {
                auto t = parse_seconds(v);
                if (!t || t->count() < 100'000'000 || *t > std::chrono::hours(24)) {
                    return bad("--duration: '{}' must be a time between 0.1 s and 24 h (e.g. 5, 0.5, 500ms)", v);
                }
                o.duration = *t;
                return ok();
            });
        } else if (flag == "--seed") {
            st = take([&](std::string_view v) -> Status {
                auto n = parse_u64(v);
                if (!n) return bad("--seed: '{}' is not an unsigned integer", v);
                o.seed = *n;
                return ok();
            });
        } else if (flag == "--engine") {
            st = take([&](std::string_view v) -> Status {
                auto l = parse_list<workers::Variant>(flag, v, "fast|seed", parse_variant);
                if (!l) return coiommu::unexpected(l.error());
                o.engines = std::move(*l);
                engines_set = true;
                return ok();
            });
        } else if (flag == "--strategy") {
            st = take([&](std::string_view v) -> Status {
                auto l = parse_list<StrategyKind>(flag, v, "coiommu|strict|static", parse_strategy);
                if (!l) return coiommu::unexpected(l.error());
                o.strategies = std::move(*l);
                strategies_set = true;
                return ok();
            });
        } else if (flag == "--compare") {
            st = no_value();
            compare = true;
        } else if (flag == "--backend") {
            st = take([&](std::string_view v) -> Status {
                if (v == "fake")
                    o.backend = BackendKind::Fake;
                else if (v == "null")
                    o.backend = BackendKind::Null;
                else if (v == "vfio")
                    o.backend = BackendKind::Vfio;
                else
                    return bad("--backend: '{}' is not one of fake|null|vfio", v);
                return ok();
            });
        } else if (flag == "--vfio-group") {
            st = take([&](std::string_view v) -> Status {
                if (v.empty()) return bad("--vfio-group needs a path such as /dev/vfio/12");
                o.vfio_group = std::string(v);
                return ok();
            });
        } else if (flag == "--connect") {
            st = take([&](std::string_view v) -> Status {
                if (v.empty()) return bad("--connect needs the daemon's socket path");
                o.connect_path = std::string(v);
                return ok();
            });
        } else if (flag == "--engine-opts") {
            st = take([&](std::string_view v) -> Status {
                if (v.find("variant") != std::string_view::npos) {
                    return bad("--engine-opts: choose the engine with --engine fast|seed, not variant=");
                }
                auto cfg = workers::parse_engine_options(v, default_engine_config());
                if (!cfg) return bad("--engine-opts: {}", cfg.error().context);
                o.engine = *cfg;
                o.engine_opts = std::string(v);
                return ok();
            });
        } else if (flag == "--latency") {
            st = take([&](std::string_view v) -> Status {
                if (v == "typical")
                    o.latency = FakeLatency::Typical;
                else if (v == "none")
                    o.latency = FakeLatency::None;
                else
                    return bad("--latency: '{}' is not one of typical|none", v);
                latency_set = true;
                return ok();
            });
        } else if (flag == "--entry-limit") {
            st = take([&](std::string_view v) -> Status {
                auto n = ranged<uint64_t>(flag, v, 1, uint64_t{1} << 32);
                if (!n) return coiommu::unexpected(n.error());
                o.entry_limit = *n;
                return ok();
            });
        } else if (flag == "--zipf-s") {
            st = take([&](std::string_view v) -> Status {
                auto d = parse_double(v);
                if (!d || *d <= 0 || *d > 100) return bad("--zipf-s: '{}' must be a number in (0, 100]", v);
                o.zipf_s = *d;
                return ok();
            });
        } else if (flag == "--ring-buffers") {
            st = take([&](std::string_view v) -> Status {
                auto n = ranged<uint32_t>(flag, v, 1, 1u << 20);
                if (!n) return coiommu::unexpected(n.error());
                o.ring_buffers = *n;
                return ok();
            });
        } else if (flag == "--balloon-pages") {
            st = take([&](std::string_view v) -> Status {
                auto n = ranged<uint32_t>(flag, v, 1, 1u << 24);
                if (!n) return coiommu::unexpected(n.error());
                o.balloon_pages = *n;
                return ok();
            });
        } else if (flag == "--balloon-interval") {
            st = take([&](std::string_view v) -> Status {
                auto t = parse_seconds(v);
                if (!t || t->count() < 1'000'000)
                    return bad("--balloon-interval: '{}' must be a time of 1ms or more", v);
                o.balloon_interval = *t;
                return ok();
            });
        } else if (flag == "--json") {
            st = take([&](std::string_view v) -> Status {
                if (v.empty()) return bad("--json needs a file name");
                o.json_path = std::string(v);
                return ok();
            });
        } else if (flag == "--plot") {
            st = take([&](std::string_view v) -> Status {
                if (v.empty()) return bad("--plot needs a file name");
                o.plot_path = std::string(v);
                return ok();
            });
        } else if (flag == "--log-level") {
            st = take([&](std::string_view v) -> Status {
                if (!log::parse_level(v, &o.log_level)) {
                    return bad("--log-level: '{}' is not one of debug|info|warn|error|off", v);
                }
                return ok();
            });
        } else if (flag == "--table") {
            st = no_value();
            o.table_only = true;
        } else if (flag == "--progress") {
            st = no_value();
            o.progress = true;
        } else if (flag == "--quiet") {
            st = no_value();
            o.quiet = true;
        } else {
            return bad("unknown option '{}'", args[i]);
        }
        if (!st) return coiommu::unexpected(st.error());
    }
    if (think_set && rate_set) return bad("--think-us and --rate exclude each other");
    if (compare) {
        if (engines_set || strategies_set) return bad("--compare sets --engine and --strategy; give one or the other");
        o.engines = {workers::Variant::Fast, workers::Variant::Seed};
        o.strategies = {StrategyKind::Coiommu, StrategyKind::Strict, StrategyKind::Static};
    }
    if (o.backend == BackendKind::Vfio && o.vfio_group.empty()) {
        return bad("--backend vfio needs --vfio-group /dev/vfio/N");
    }
    if (o.backend != BackendKind::Vfio && !o.vfio_group.empty()) return bad("--vfio-group is only for --backend vfio");
    if (o.backend != BackendKind::Fake && latency_set) return bad("--latency is only for --backend fake");
    if (!o.connect_path.empty()) {
        if (o.backend == BackendKind::Vfio) return bad("--connect and --backend vfio exclude each other");
        if (compare || engines_set)
            return bad("--connect: the daemon's engine serves; --engine and --compare do not apply");
        if (!o.engine_opts.empty()) return bad("--connect: the daemon's engine serves; --engine-opts does not apply");
        for (StrategyKind s : o.strategies) {
            if (s != StrategyKind::Coiommu) return bad("--connect runs the coiommu strategy only");
        }
    }
    if (o.progress && o.quiet) return bad("--progress and --quiet exclude each other");
    if (o.table_only && o.quiet) return bad("--table and --quiet exclude each other");
    if (o.ram_bytes < kMinRamBytes || o.ram_bytes > kMaxRamBytes || (o.ram_bytes & (kPageSize - 1)) != 0) {
        return bad("--ram: {} bytes must be a multiple of 4K between {} MiB and {} GiB", o.ram_bytes,
                   kMinRamBytes >> 20, kMaxRamBytes >> 30);
    }
    return out;
}

}  // namespace coiommu::loadgen
