#include "bpf/loader/engine_tracer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <optional>

#include <fmt/format.h>

#include "bpf/abi/engine.h"
#include "bpf/loader/bpf_util.h"
#include "bpf/loader/skeleton.h"
#include "bpf/loader/vfio_dma_maps.h"
#include "engine.skel.h"
#include "engine/base/log.h"

namespace coiommu::bpf {

namespace {

constexpr const char* kProvider = "coiommu";

}  // namespace

Result<EngineTarget> EngineTarget::parse(std::string_view binary_or_pid) {
    if (binary_or_pid.empty()) return make_error(EINVAL, "engine target is empty");
    int pid = 0;
    const auto* end = binary_or_pid.data() + binary_or_pid.size();
    const auto parsed = std::from_chars(binary_or_pid.data(), end, pid);
    if (parsed.ec == std::errc{} && parsed.ptr == end) {
        if (pid <= 0) return make_error(EINVAL, fmt::format("engine pid {} is not a process id", pid));
        const std::string exe = fmt::format("/proc/{}/exe", pid);
        char buf[PATH_MAX];
        const ssize_t n = ::readlink(exe.c_str(), buf, sizeof(buf) - 1);
        if (n < 0) {
            const int err = errno;
            return make_error(err, fmt::format("engine pid {}: read {}", pid, exe));
        }
        std::string path(buf, static_cast<size_t>(n));
        // A replaced or deleted binary is still reachable through /proc/<pid>/exe.
        if (::access(path.c_str(), R_OK) != 0) path = exe;
        return EngineTarget{std::move(path), pid};
    }
    std::string path(binary_or_pid);
    if (::access(path.c_str(), R_OK) != 0) {
        const int err = errno;
        return make_error(err, "engine binary " + path);
    }
    return EngineTarget{std::move(path), -1};
}

struct EngineTracer::Impl {
    Skeleton<engine_bpf> skel;
    std::optional<PinSet> pins;
    std::vector<std::string> probes;

    [[nodiscard]] detail::EngineMapFds fds() const {
        const auto& m = skel->maps;
        return {bpf_map__fd(m.eng_req_hist),   bpf_map__fd(m.eng_req_pages), bpf_map__fd(m.eng_req_calls),
                bpf_map__fd(m.eng_dma_hist),   bpf_map__fd(m.eng_dma_calls), bpf_map__fd(m.eng_scan_hist),
                bpf_map__fd(m.eng_scan_stats), bpf_map__fd(m.eng_drops)};
    }
};

EngineTracer::EngineTracer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EngineTracer::EngineTracer(EngineTracer&&) noexcept = default;
EngineTracer& EngineTracer::operator=(EngineTracer&&) noexcept = default;
EngineTracer::~EngineTracer() = default;

Result<EngineTracer> EngineTracer::attach(const EngineTarget& target) {
    detail::install_libbpf_logging();
    COIOMMU_TRY(check_bpf_privileges(), "engine");

    auto impl = std::make_unique<Impl>();
    auto skel = Skeleton<engine_bpf>::open("engine");
    if (!skel) return coiommu::unexpected(skel.error());
    impl->skel = std::move(*skel);
    // The batched DMA program is loaded only when it will be attached: a loaded, detached program
    // is what the "program detached" alert looks for.
    bpf_program__set_autoload(impl->skel->progs.eng_dma_batch, target.dma == EngineDmaProbes::Yes);
    COIOMMU_TRY(impl->skel.load());

    struct Probe {
        const char* name;
        bpf_program* prog;
        bpf_link** link;
    };
    auto& s = *impl->skel;
    std::vector<Probe> probes{
        {"requests", s.progs.eng_requests, &s.links.eng_requests},
        {"unpin_scan", s.progs.eng_unpin_scan, &s.links.eng_unpin_scan},
    };
    if (target.dma == EngineDmaProbes::Yes) {
        probes.push_back({"dma_calls", s.progs.eng_dma_batch, &s.links.eng_dma_batch});
    }
    std::vector<Error> failures;
    for (const Probe& p : probes) {
        errno = 0;
        bpf_link* link =
            bpf_program__attach_usdt(p.prog, target.pid, target.binary.c_str(), kProvider, p.name, nullptr);
        const int err = errno;
        if (link == nullptr) {
            failures.push_back(bpf_error(err != 0 ? err : ENOENT, fmt::format("attach USDT {}:{}", kProvider, p.name)));
            continue;
        }
        *p.link = link;  // the skeleton destroys it
        impl->probes.emplace_back(p.name);
    }
    if (impl->probes.empty()) {
        return coiommu::unexpected(
            with_context(failures.front(), fmt::format("engine: no {} USDT probe could be attached in "
                                                       "{} (pid {}); is it the engine binary?",
                                                       kProvider, target.binary, target.pid)));
    }
    for (const Error& e : failures) CLOG_WARN("bpf", "engine: {} (probe left detached)", e.message());
    return EngineTracer(std::move(impl));
}

Result<EngineSnapshot> EngineTracer::snapshot() const { return detail::read_engine(impl_->fds()); }

Status EngineTracer::pin(const PinOptions& options) {
    if (impl_->pins) return make_error(EALREADY, "engine maps already pinned in " + impl_->pins->dir());
    auto set = PinSet::create(options);
    if (!set) return coiommu::unexpected(set.error());
    const auto& m = impl_->skel->maps;
    for (bpf_map* map : {m.eng_req_hist, m.eng_req_pages, m.eng_req_calls, m.eng_dma_hist, m.eng_dma_calls,
                         m.eng_scan_hist, m.eng_scan_stats, m.eng_drops}) {
        if (auto st = set->pin(bpf_map__name(map), bpf_map__fd(map)); !st) return st;
    }
    impl_->pins.emplace(std::move(*set));
    return ok();
}

std::vector<std::string> EngineTracer::pinned_paths() const {
    return impl_->pins ? impl_->pins->paths() : std::vector<std::string>{};
}

Result<std::vector<ProgramInfo>> EngineTracer::programs() const {
    const auto& s = *impl_->skel;
    return detail::object_programs(s.obj, "usdt", [&s](const bpf_program* p) {
        if (p == s.progs.eng_requests) return s.links.eng_requests != nullptr;
        if (p == s.progs.eng_dma_batch) return s.links.eng_dma_batch != nullptr;
        if (p == s.progs.eng_dma_map) return s.links.eng_dma_map != nullptr;
        if (p == s.progs.eng_dma_unmap) return s.links.eng_dma_unmap != nullptr;
        if (p == s.progs.eng_unpin_scan) return s.links.eng_unpin_scan != nullptr;
        return false;
    });
}

const std::vector<std::string>& EngineTracer::attached_probes() const { return impl_->probes; }

}  // namespace coiommu::bpf
