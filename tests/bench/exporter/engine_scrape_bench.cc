// Engine throughput scraped every second vs not scraped, in the same run, with the real engine
// (tests/unit/exporter/engine_vm.h, Fresh load: every guest map is a pin request and a DMA map),
// and the cost of one full HTTP scrape with every engine metric populated (plus the BPF families
// when --bpf is given and this process may load BPF).
//
// Phases alternate A B B A A B ... (A: nobody scrapes; B: a scraper GETs /metrics every second) so
// that drift (other load on the host, the page cache, thermal) hits both alike. Throughput is pages
// pinned per second from the engine's own counters over each phase, and pages pinned per CPU-second
// of this process (engine, guest threads and exporter together): on a shared host the wall-clock
// rate mostly measures the neighbours, while the CPU-normalised one still counts what scraping
// costs this process.
//
// usage: engine_scrape_bench [--rounds N] [--phase-seconds S] [--vcpus N] [--pages N]
//                            [--interval-ms MS] [--latency] [--bpf]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <prometheus/text_serializer.h>

#include "exporter/collector_set.h"
#include "exporter/engine_collector.h"
#include "exporter/exposer.h"
#include "exporter/process_collector.h"
#include "tests/bench/support/paired_rounds.h"
#include "tests/unit/exporter/engine_vm.h"
#include "tests/unit/exporter/scrape_support.h"
#ifdef COIOMMU_BENCH_BPF
#include "bpf/loader/privileges.h"
#include "bpf/loader/tracing.h"
#include "bpf/metrics/bpf_collector.h"
#include "bpf/metrics/bpf_tracing_source.h"
#endif

namespace {

using namespace coiommu;
using bench::percentile;
using bench::process_cpu_seconds;
using Clock = std::chrono::steady_clock;

struct Args {
    int rounds = 6;
    double phase_s = 3.0;
    uint32_t vcpus = 2;
    uint64_t pages = 16;
    long interval_ms = 1000;
    bool latency = false;
    bool bpf = false;
};

bool parse(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--latency") {
            a.latency = true;
            continue;
        }
        if (arg == "--bpf") {
            a.bpf = true;
            continue;
        }
        if (i + 1 >= argc) return false;
        const char* v = argv[++i];
        if (arg == "--rounds") {
            a.rounds = std::atoi(v);
        } else if (arg == "--phase-seconds") {
            a.phase_s = std::atof(v);
        } else if (arg == "--vcpus") {
            a.vcpus = static_cast<uint32_t>(std::atoi(v));
        } else if (arg == "--pages") {
            a.pages = std::strtoull(v, nullptr, 10);
        } else if (arg == "--interval-ms") {
            a.interval_ms = std::atol(v);
        } else {
            return false;
        }
    }
    return a.rounds > 0 && a.phase_s > 0 && a.interval_ms > 0;
}

// GETs /metrics every `interval` while enabled; records each scrape's wall time.
class Scraper {
public:
    Scraper(uint16_t port, std::chrono::milliseconds interval)
        : port_(port), interval_(interval), thread_([this] { run(); }) {}
    ~Scraper() {
        quit_.store(true);
        thread_.join();
    }
    void resume() { on_.store(true); }
    void pause() { on_.store(false); }
    std::vector<double> take_ms() {
        std::lock_guard lock(mu_);
        return std::exchange(ms_, {});
    }
    size_t last_bytes() const { return bytes_.load(); }
    int errors() const { return errors_.load(); }

private:
    void run() {
        auto next = Clock::now();
        while (!quit_.load()) {
            if (!on_.load()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                next = Clock::now();
                continue;
            }
            const auto t0 = Clock::now();
            auto r = exporter::testing::http_get("127.0.0.1", port_, "/metrics", 10'000);
            const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
            if (r && r->status == 200) {
                bytes_.store(r->body.size());
                std::lock_guard lock(mu_);
                ms_.push_back(ms);
            } else {
                errors_.fetch_add(1);
            }
            next += interval_;
            while (!quit_.load() && on_.load() && Clock::now() < next)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

    uint16_t port_;
    std::chrono::milliseconds interval_;
    std::atomic<bool> quit_{false};
    std::atomic<bool> on_{false};
    std::atomic<size_t> bytes_{0};
    std::atomic<int> errors_{0};
    std::mutex mu_;
    std::vector<double> ms_;
    std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
    Args args;
    if (!parse(argc, argv, args)) {
        std::fprintf(stderr,
                     "usage: engine_scrape_bench [--rounds N] [--phase-seconds S] [--vcpus N] [--pages N] "
                     "[--interval-ms MS] [--latency] [--bpf]\n");
        return 2;
    }
    exporter::testing::EngineVmOptions opts;
    opts.pattern = exporter::testing::LoadPattern::Fresh;
    opts.load_vcpus = args.vcpus;
    opts.max_pages = args.pages;
    if (!args.latency) opts.latency.reset();
    opts.engine.unpin_interval = std::chrono::seconds(1);
    auto vm = exporter::testing::EngineVm::create(opts);
    if (!vm) {
        std::fprintf(stderr, "engine vm: %s\n", vm.error().message().c_str());
        return 1;
    }
    auto set = std::make_shared<exporter::CollectorSet>();
    (void)set->add("engine",
                   std::make_shared<exporter::EngineCollector>([&vm] { return (*vm)->stats(); }, (*vm)->engine_info()));
    (void)set->add("process", std::make_shared<exporter::ProcessCollector>());
    std::string bpf_status = "off";
#ifdef COIOMMU_BENCH_BPF
    std::optional<bpf::Tracing> tracing;
    exporter::SlowEventCounter slow;
    if (args.bpf) {
        if (auto priv = bpf::check_bpf_privileges(); !priv) {
            bpf_status = "off: " + priv.error().message();
        } else {
            bpf::TracingOptions t;
            t.run_time = bpf::CollectRunTime::Yes;
            if (auto target = bpf::EngineTarget::parse(std::to_string(::getpid()))) t.engine = *target;
            auto started = bpf::Tracing::start(t);
            if (started) {
                tracing.emplace(std::move(*started));
                (void)set->add("bpf", std::make_shared<exporter::BpfCollector>(
                                          exporter::tracing_source(*tracing, &slow, std::nullopt)));
                bpf_status = "attached (vfio_dma + engine USDT probes on this process)";
            } else {
                bpf_status = "off: " + started.error().message();
            }
        }
    }
#endif
    auto exposer = exporter::Exposer::start({.address = "127.0.0.1:0"});
    if (!exposer || !exposer->register_collectable(set)) {
        std::fprintf(stderr, "cannot start the exposer\n");
        return 1;
    }

    std::printf("engine_scrape_bench: %u vCPUs, %lu pages per map, latency model %s, bpf %s\n", args.vcpus,
                static_cast<unsigned long>(args.pages), args.latency ? "typical" : "off", bpf_status.c_str());
    std::printf("%d rounds of A (not scraped) and B (scraped every %ld ms), %.1f s per phase\n\n", args.rounds,
                args.interval_ms, args.phase_s);
    std::fflush(stdout);

    (*vm)->start();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // warm-up
    Scraper scraper(exposer->port(), std::chrono::milliseconds(args.interval_ms));
    std::vector<double> a_rates, b_rates, a_eff, b_eff, scrape_ms;
    std::printf("%-6s %-6s %14s %16s %8s\n", "round", "phase", "pages/s", "pages/CPU-s", "scrapes");
    for (int round = 0; round < args.rounds; ++round) {
        // A B, then B A: each phase kind is first in half of the rounds.
        const bool scraped_first = (round % 2) == 1;
        for (int half = 0; half < 2; ++half) {
            const bool scraped = (half == 0) == scraped_first;
            if (scraped) scraper.resume();
            const uint64_t p0 = (*vm)->stats().totals.pages_pinned;
            const auto t0 = Clock::now();
            const double c0 = process_cpu_seconds();
            std::this_thread::sleep_for(std::chrono::duration<double>(args.phase_s));
            const uint64_t p1 = (*vm)->stats().totals.pages_pinned;
            const double cpu = process_cpu_seconds() - c0;
            const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
            scraper.pause();
            const double rate = static_cast<double>(p1 - p0) / secs;
            const double eff = static_cast<double>(p1 - p0) / cpu;
            const auto ms = scraper.take_ms();
            (scraped ? b_rates : a_rates).push_back(rate);
            (scraped ? b_eff : a_eff).push_back(eff);
            scrape_ms.insert(scrape_ms.end(), ms.begin(), ms.end());
            std::printf("%-6d %-6s %14.0f %16.0f %8zu\n", round, scraped ? "B" : "A", rate, eff, ms.size());
            std::fflush(stdout);
        }
    }
    (*vm)->stop();

    // In-process collect + serialize with every metric populated (the load ran for a while).
    const prometheus::TextSerializer serializer;
    std::vector<double> inproc_ms;
    for (int i = 0; i < 50; ++i) {
        const auto t0 = Clock::now();
        const std::string text = serializer.Serialize(set->Collect());
        inproc_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }

    bench::report_paired("pages pinned per second", "not scraped", "scraped", a_rates, b_rates);
    bench::report_paired("pages pinned per CPU-second of the process", "not scraped", "scraped", a_eff, b_eff);
    std::printf(
        "HTTP scrape (engine under load, %zu bytes): n %zu, median %.2f ms, p90 %.2f ms, max %.2f ms, errors %d\n",
        scraper.last_bytes(), scrape_ms.size(), percentile(scrape_ms, 0.5), percentile(scrape_ms, 0.9),
        scrape_ms.empty() ? 0.0 : *std::max_element(scrape_ms.begin(), scrape_ms.end()), scraper.errors());
    std::printf("in-process collect + serialize: median %.3f ms, max %.3f ms\n", percentile(inproc_ms, 0.5),
                *std::max_element(inproc_ms.begin(), inproc_ms.end()));
    std::printf("guest maps %lu, failures %lu\n", static_cast<unsigned long>((*vm)->guest_maps()),
                static_cast<unsigned long>((*vm)->guest_map_failures()));
    return 0;
}
