#include "engine/daemon/session.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "engine/base/log.h"
#include "engine/core/spec.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/iommufd_backend.h"
#include "engine/dma/null_backend.h"
#include "engine/dma/vfio_backend.h"

namespace coiommu::daemon {
namespace {

constexpr std::string_view kLog = "session";

using proto::MsgType;

Reply error_reply(MsgType req, int code, std::string_view text, bool close_after) {
    Reply r;
    r.type = static_cast<uint16_t>(MsgType::Error);
    r.payload = encode_error(code, static_cast<uint16_t>(req), text);
    r.close_after = close_after;
    return r;
}

Reply error_reply(MsgType req, const Error& e, bool close_after) {
    return error_reply(req, e.code, e.message(), close_after);
}

template <class T>
Reply ok_reply(MsgType req, const T& body) {
    Reply r;
    r.type = proto::reply_type(req);
    append_wire(r.payload, body);
    return r;
}

Reply empty_reply(MsgType req) {
    Reply r;
    r.type = proto::reply_type(req);
    return r;
}

// The fd is an eventfd (what KVM's ioeventfd needs, and what the engine's wait assumes).
bool is_eventfd(int fd) {
    char link[64] = {};
    const std::string path = fmt::format("/proc/self/fd/{}", fd);
    const ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
    if (n <= 0) return false;
    return std::string_view(link, static_cast<std::size_t>(n)) == "anon_inode:[eventfd]";
}

// The memfd cannot shrink below what the daemon maps (F_SEAL_SHRINK).
bool sealed_against_shrink(int fd) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) != 0;
}

void copy_name(char (&dst)[16], std::string_view name) {
    std::memcpy(dst, name.data(), std::min(name.size(), sizeof dst - 1));
}

// Parses the payload SetTopology and Resume share: vCPUs and endpoints.
Result<device::DeviceConfig> parse_topology(std::string_view what, std::span<const std::byte> payload) {
    auto req = read_wire<proto::SetTopologyReq>(payload);
    if (!req || req->pad != 0) return make_error(EBADMSG, fmt::format("{}: malformed payload", what));
    if (payload.size() != sizeof(proto::SetTopologyReq) + req->endpoint_count * sizeof(uint16_t)) {
        return make_error(EBADMSG, fmt::format("{}: payload length does not match the endpoint count", what));
    }
    if (req->endpoint_count == 0) return make_error(EINVAL, fmt::format("{}: no endpoint", what));
    device::DeviceConfig cfg;
    cfg.vcpus = req->vcpus;
    cfg.endpoints.resize(req->endpoint_count);
    std::memcpy(cfg.endpoints.data(), payload.data() + sizeof(proto::SetTopologyReq),
                req->endpoint_count * sizeof(uint16_t));
    return cfg;
}

}  // namespace

std::string_view to_string(SessionState s) {
    switch (s) {
        case SessionState::AwaitHello: return "await_hello";
        case SessionState::AwaitMemory: return "await_memory";
        case SessionState::AwaitTopology: return "await_topology";
        case SessionState::AwaitBackend: return "await_backend";
        case SessionState::AwaitTriggers: return "await_triggers";
        case SessionState::Running: return "running";
        case SessionState::Closed: return "closed";
    }
    return "unknown";
}

std::string_view to_string(SessionEnd e) {
    switch (e) {
        case SessionEnd::Closed: return "closed by the VMM";
        case SessionEnd::PeerGone: return "the VMM disconnected";
        case SessionEnd::ProtocolError: return "protocol error";
        case SessionEnd::SetupTimeout: return "setup timeout";
        case SessionEnd::IoError: return "I/O error";
        case SessionEnd::Stopped: return "daemon shutdown";
    }
    return "unknown";
}

Session::Session(uint32_t id, SessionPolicy policy, std::atomic<uint64_t>* resumes)
    : id_(id), policy_(std::move(policy)), resumes_(resumes) {}

Session::~Session() { teardown(); }

Reply Session::handle(Message& msg) {
    const uint16_t raw = msg.header.type;
    const auto type = proto::request_type(raw);
    if (!type) {
        return error_reply(MsgType::Error, EPROTO, fmt::format("unknown message type {:#x}", raw), true);
    }
    if (auto st = check_header(msg.header, msg.payload.size()); !st) {
        return error_reply(*type, st.error(), true);
    }
    const SessionState s = state();
    auto expect = [&](SessionState want) { return s == want; };
    bool in_order = false;
    switch (*type) {
        case MsgType::Hello: in_order = expect(SessionState::AwaitHello); break;
        case MsgType::SetMemory: in_order = expect(SessionState::AwaitMemory); break;
        case MsgType::SetTopology: in_order = expect(SessionState::AwaitTopology); break;
        case MsgType::Resume:
            in_order = expect(SessionState::AwaitTopology) && (features_ & proto::kFeatureResume) != 0;
            break;
        case MsgType::SetBackend: in_order = expect(SessionState::AwaitBackend); break;
        case MsgType::SetTriggers: in_order = expect(SessionState::AwaitTriggers); break;
        case MsgType::MmioRead:
        case MsgType::MmioWrite:
        case MsgType::BalloonUnpin:
        case MsgType::GetStats:
        case MsgType::QueryMapped: in_order = expect(SessionState::Running); break;
        // Close is accepted in every state after Hello (a VMM giving up during setup).
        case MsgType::Close: in_order = s != SessionState::AwaitHello && s != SessionState::Closed; break;
        case MsgType::Error: in_order = false; break;
    }
    if (!in_order) {
        return error_reply(*type, EPROTO,
                           fmt::format("{} is not valid in state {}", proto::to_string(*type), to_string(s)), true);
    }
    // Messages that carry no fds by definition refuse any (SetMemory/SetBackend/SetTriggers check
    // their own count).
    const bool fds_expected = *type == MsgType::SetMemory || *type == MsgType::SetBackend ||
                              *type == MsgType::SetTriggers || *type == MsgType::Resume;
    if (!fds_expected && !msg.fds.empty()) {
        return error_reply(*type, EBADMSG,
                           fmt::format("{} carries no fds, got {}", proto::to_string(*type), msg.fds.size()), true);
    }
    switch (*type) {
        case MsgType::Hello: return on_hello(msg);
        case MsgType::SetMemory: return on_set_memory(msg);
        case MsgType::SetTopology: return on_set_topology(msg);
        case MsgType::Resume: return on_resume(msg);
        case MsgType::SetBackend: return on_set_backend(msg);
        case MsgType::SetTriggers: return on_set_triggers(msg);
        case MsgType::MmioRead: return on_mmio_read(msg);
        case MsgType::MmioWrite: return on_mmio_write(msg);
        case MsgType::BalloonUnpin: return on_balloon(msg);
        case MsgType::GetStats: return on_stats(msg);
        case MsgType::QueryMapped: return on_query_mapped(msg);
        case MsgType::Close: return on_close(msg);
        case MsgType::Error: break;
    }
    return error_reply(*type, EPROTO, "unhandled message", true);
}

Reply Session::on_hello(const Message& m) {
    auto req = read_wire<proto::HelloReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::HelloReq) || req->pad != 0) {
        return error_reply(MsgType::Hello, EBADMSG, "Hello: malformed payload", true);
    }
    if (req->min_version > proto::kVersion || req->max_version < proto::kVersion ||
        req->min_version > req->max_version) {
        return error_reply(MsgType::Hello, EPROTONOSUPPORT,
                           fmt::format("Hello: versions {}..{} requested, this daemon speaks {}", req->min_version,
                                       req->max_version, proto::kVersion),
                           true);
    }
    const std::size_t name_len = strnlen(req->client_name, sizeof req->client_name);
    client_name_.assign(req->client_name, name_len);
    // Keep the name printable for logs.
    std::replace_if(
        client_name_.begin(), client_name_.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    features_ = req->features & policy_.features;
    proto::HelloRep rep;
    rep.features = features_;
    rep.session_id = id_;
    set_state(SessionState::AwaitMemory);
    CLOG_INFO(kLog, "session {}: hello from '{}' (features {:#x})", id_, client_name_, features_);
    return ok_reply(MsgType::Hello, rep);
}

Reply Session::on_set_memory(Message& m) {
    constexpr auto kType = MsgType::SetMemory;
    auto req = read_wire<proto::SetMemoryReq>(m.payload);
    if (!req || req->pad != 0) return error_reply(kType, EBADMSG, "SetMemory: malformed payload", true);
    if (req->count == 0 || req->count > proto::kMaxRegions) {
        return error_reply(kType, EINVAL,
                           fmt::format("SetMemory: {} regions (1..{} allowed)", req->count, proto::kMaxRegions), true);
    }
    if (m.payload.size() != sizeof(proto::SetMemoryReq) + req->count * sizeof(proto::MemRegionWire)) {
        return error_reply(kType, EBADMSG, "SetMemory: payload length does not match the region count", true);
    }
    if (m.fds.size() != req->count) {
        return error_reply(
            kType, EBADMSG,
            fmt::format("SetMemory: {} regions need {} fds, got {}", req->count, req->count, m.fds.size()), true);
    }
    std::vector<AdoptedRegion> regions;
    regions.reserve(req->count);
    for (uint32_t i = 0; i < req->count; ++i) {
        const auto r =
            *read_wire<proto::MemRegionWire>(m.payload, sizeof(proto::SetMemoryReq) + i * sizeof(proto::MemRegionWire));
        uint64_t end = 0;
        if (__builtin_add_overflow(r.gpa, r.size, &end) || end > policy_.max_guest_end) {
            return error_reply(kType, EINVAL,
                               fmt::format("SetMemory: region {} [{:#x}, +{:#x}) ends beyond the allowed {:#x}", i,
                                           r.gpa, r.size, policy_.max_guest_end),
                               true);
        }
        if (!sealed_against_shrink(m.fds[i].get())) {
            return error_reply(kType, EINVAL,
                               fmt::format("SetMemory: region {}: the fd must be a memfd sealed with F_SEAL_SHRINK", i),
                               true);
        }
        regions.push_back(AdoptedRegion{Gpa{r.gpa}, r.size, std::move(m.fds[i]), r.fd_offset});
    }
    auto mem = GuestMemory::adopt(std::move(regions));
    if (!mem) return error_reply(kType, with_context(mem.error(), "SetMemory"), true);
    mem_ = std::make_unique<GuestMemory>(std::move(*mem));
    set_state(SessionState::AwaitTopology);
    CLOG_INFO(kLog, "session {}: guest memory {} MiB in {} regions", id_, mem_->total_bytes() >> 20,
              mem_->regions().size());
    return empty_reply(kType);
}

Reply Session::on_set_topology(const Message& m) {
    constexpr auto kType = MsgType::SetTopology;
    auto cfg = parse_topology("SetTopology", m.payload);
    if (!cfg) return error_reply(kType, cfg.error(), true);
    auto dev = device::CoiommuDevice::create(*cfg);
    if (!dev) return error_reply(kType, with_context(dev.error(), "SetTopology"), true);
    if ((features_ & proto::kFeatureResume) != 0) {
        auto rec = dma::HostRecord::create(mem_->gfn_span());
        if (!rec) return error_reply(kType, with_context(rec.error(), "SetTopology"), true);
        record_ = std::make_unique<dma::HostRecord>(std::move(*rec));
    }
    device_ = std::move(*dev);
    set_state(SessionState::AwaitBackend);
    CLOG_INFO(kLog, "session {}: {} vCPUs, {} endpoints{}", id_, cfg->vcpus, cfg->endpoints.size(),
              record_ ? ", resumable" : "");
    proto::SetTopologyRep rep;
    rep.notifymap_size = core::kNotifymapSize;
    rep.topologymap_size = core::kTopologymapSize;
    Reply r = ok_reply(kType, rep);
    r.fds = {device_->notifymap_fd(), device_->topologymap_fd()};
    if (record_) r.fds.push_back(record_->fd());
    return r;
}

Reply Session::on_resume(Message& m) {
    constexpr auto kType = MsgType::Resume;
    if (m.fds.size() != 3) {
        return error_reply(kType, EBADMSG,
                           fmt::format("Resume: needs 3 fds (notifymap, topologymap, record), got {}", m.fds.size()),
                           true);
    }
    auto cfg = parse_topology("Resume", m.payload);
    if (!cfg) return error_reply(kType, cfg.error(), true);
    auto dev = device::CoiommuDevice::adopt(*cfg, std::move(m.fds[0]), std::move(m.fds[1]));
    if (!dev) return error_reply(kType, with_context(dev.error(), "Resume"), true);
    auto rec = dma::HostRecord::adopt(std::move(m.fds[2]), mem_->gfn_span());
    if (!rec) return error_reply(kType, with_context(rec.error(), "Resume"), true);
    // Validate now, against this guest's RAM, so a forged record is refused before any backend
    // call; the settling itself waits for the backend (resume_engine).
    auto extents = rec->extents(mem_->ram_ranges());
    if (!extents) return error_reply(kType, with_context(extents.error(), "Resume"), true);
    const dma::RecordedDevice d = rec->device();
    if (d.active == 0 && d.dtt_level == 0 && d.dtt_root == 0 && !extents->empty()) {
        return error_reply(kType, EINVAL, "Resume: the record has mappings but no device registers", true);
    }
    proto::ResumeRep rep;
    for (const auto& e : *extents) {
        if (e.state == dma::RecordState::Mapped) {
            ++rep.extents;
            rep.pages += e.pages;
        } else {
            ++rep.in_progress;
        }
    }
    rep.active = d.active != 0 ? 1 : 0;
    device_ = std::move(*dev);
    device_->restore({Gpa{d.dtt_root}, d.dtt_level, d.active != 0, d.park_count});
    record_ = std::make_unique<dma::HostRecord>(std::move(*rec));
    resumed_ = true;
    set_state(SessionState::AwaitBackend);
    CLOG_INFO(kLog, "session {}: resuming {} vCPUs, {} endpoints: {} extents ({} pages) mapped, {} in progress{}", id_,
              cfg->vcpus, cfg->endpoints.size(), rep.extents, rep.pages, rep.in_progress,
              rep.active != 0 ? ", active" : "");
    return ok_reply(kType, rep);
}

Reply Session::on_set_backend(Message& m) {
    constexpr auto kType = MsgType::SetBackend;
    auto req = read_wire<proto::SetBackendReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::SetBackendReq)) {
        return error_reply(kType, EBADMSG, "SetBackend: malformed payload", true);
    }
    const auto kind = static_cast<proto::BackendKind>(req->kind);
    std::size_t want_fds = kind == proto::BackendKind::Vfio || kind == proto::BackendKind::Iommufd ? 1 : 0;
    // A resumable fake keeps its mapping set in the VMM's memfd, as a container outlives us.
    if (kind == proto::BackendKind::Fake && (features_ & proto::kFeatureResume) != 0 && m.fds.size() == 1) want_fds = 1;
    if (m.fds.size() != want_fds) {
        return error_reply(kType, EBADMSG,
                           fmt::format("SetBackend: kind {} needs {} fds, got {}", req->kind, want_fds, m.fds.size()),
                           true);
    }
    auto refuse = [&](std::string_view name) {
        return error_reply(kType, EPERM, fmt::format("SetBackend: the {} backend is not allowed by this daemon", name),
                           true);
    };
    switch (kind) {
        case proto::BackendKind::Vfio: {
            if ((features_ & proto::kFeatureVfioBackend) == 0) return refuse("vfio");
            std::optional<uint64_t> limit;
            if (req->entry_limit != 0) limit = req->entry_limit;
            auto b = dma::VfioBackend::adopt(std::move(m.fds[0]), limit);
            if (!b) return error_reply(kType, with_context(b.error(), "SetBackend vfio"), true);
            backend_ = std::move(*b);
            break;
        }
        case proto::BackendKind::Iommufd: {
            if ((features_ & proto::kFeatureIommufdBackend) == 0) return refuse("iommufd");
            if (req->param == 0 || req->entry_limit != 0) {
                return error_reply(kType, EINVAL, "SetBackend: iommufd needs an IOAS id and takes no entry limit",
                                   true);
            }
            auto b = dma::IommufdBackend::adopt(std::move(m.fds[0]), req->param);
            if (!b) return error_reply(kType, with_context(b.error(), "SetBackend iommufd"), true);
            backend_ = std::move(*b);
            break;
        }
        case proto::BackendKind::Fake: {
            if ((features_ & proto::kFeatureFakeBackend) == 0) return refuse("fake");
            if (req->param > static_cast<uint32_t>(proto::FakeLatency::Typical)) {
                return error_reply(kType, EINVAL, fmt::format("SetBackend: unknown latency model {}", req->param),
                                   true);
            }
            dma::FakeConfig fc;
            if (req->entry_limit != 0) fc.entry_limit = req->entry_limit;
            if (req->param == static_cast<uint32_t>(proto::FakeLatency::Typical)) {
                fc.latency = dma::LatencyModel::typical();
            }
            std::unique_ptr<dma::FakeBackend> fake;
            if (m.fds.size() == 1) {
                if (req->entry_limit != 0) {
                    return error_reply(kType, EINVAL, "SetBackend: a shared fake takes its entry limit from its state",
                                       true);
                }
                auto attached = dma::FakeBackend::attach(fc, std::move(m.fds[0]));
                if (!attached) return error_reply(kType, with_context(attached.error(), "SetBackend fake"), true);
                fake = std::move(*attached);
            } else {
                fake = std::make_unique<dma::FakeBackend>(fc);
            }
            fake_ = fake.get();
            backend_ = std::move(fake);
            break;
        }
        case proto::BackendKind::Null: {
            if ((features_ & proto::kFeatureNullBackend) == 0) return refuse("null");
            if (req->param != 0) return error_reply(kType, EINVAL, "SetBackend: null takes no latency model", true);
            backend_ = std::make_unique<dma::NullBackend>(req->entry_limit != 0 ? req->entry_limit : 65535);
            break;
        }
        default: return error_reply(kType, EINVAL, fmt::format("SetBackend: unknown backend kind {}", req->kind), true);
    }
    if (record_) recording_ = std::make_unique<dma::RecordingBackend>(*backend_, *record_);
    set_state(SessionState::AwaitTriggers);
    CLOG_INFO(kLog, "session {}: backend {} (entry limit {})", id_, backend_->name(), backend_->entry_limit());
    proto::SetBackendRep rep;
    rep.entry_limit = backend_->entry_limit();
    copy_name(rep.name, backend_->name());
    return ok_reply(kType, rep);
}

Reply Session::on_set_triggers(Message& m) {
    constexpr auto kType = MsgType::SetTriggers;
    auto req = read_wire<proto::SetTriggersReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::SetTriggersReq)) {
        return error_reply(kType, EBADMSG, "SetTriggers: malformed payload", true);
    }
    const uint32_t vcpus = device_->vcpus();
    if (req->first_vcpu != triggers_.size() || req->count == 0 || req->count > proto::kMaxFdsPerMessage ||
        req->count > vcpus - req->first_vcpu) {
        return error_reply(kType, EINVAL,
                           fmt::format("SetTriggers: vCPUs {}+{} (next expected {}, {} vCPUs)", req->first_vcpu,
                                       req->count, triggers_.size(), vcpus),
                           true);
    }
    if (m.fds.size() != req->count) {
        return error_reply(
            kType, EBADMSG,
            fmt::format("SetTriggers: {} triggers need {} fds, got {}", req->count, req->count, m.fds.size()), true);
    }
    for (std::size_t i = 0; i < m.fds.size(); ++i) {
        if (!is_eventfd(m.fds[i].get())) {
            return error_reply(kType, EINVAL, fmt::format("SetTriggers: fd {} is not an eventfd", i), true);
        }
    }
    for (auto& fd : m.fds) {
        // The engine polls and reads it; make sure a read never blocks its thread.
        const int fl = ::fcntl(fd.get(), F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK) == 0) (void)::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK);
        triggers_.push_back(EventFd::adopt(std::move(fd)));
    }
    proto::SetTriggersRep rep;
    rep.triggers_set = static_cast<uint32_t>(triggers_.size());
    if (triggers_.size() == vcpus) {
        if (auto st = start_engine(); !st) return error_reply(kType, st.error(), true);
        rep.running = 1;
    }
    return ok_reply(kType, rep);
}

Status Session::start_engine() {
    workers::EngineDeps deps = workers::device_deps(*device_, *mem_, engine_backend());
    // The engine waits on the VMM's eventfds (the KVM ioeventfds), not on the device's own.
    deps.trigger_fds.clear();
    for (const EventFd& t : triggers_) deps.trigger_fds.push_back(t.fd());
    workers::EngineConfig cfg = policy_.engine;
    cfg.session = id_;
    auto engine = workers::Engine::create(cfg, deps);
    if (!engine) return coiommu::unexpected(with_context(engine.error(), "engine"));
    {
        std::lock_guard lock(engine_mu_);
        engine_ = std::move(*engine);
        engine_->registry().gauges().guest_ram_bytes.set(mem_->total_bytes());
        engine_->registry().gauges().vcpus.set(device_->vcpus());
    }
    if (resumed_) {
        if (auto st = resume_engine(); !st) {
            std::lock_guard lock(engine_mu_);
            engine_.reset();
            return st;
        }
    }
    device_->set_engine(engine_.get());
    set_state(SessionState::Running);
    CLOG_INFO(kLog, "session {}: running ({})", id_, workers::to_string(cfg));
    if (resumed_) {
        // A request a vCPU wrote before the crash is still in its slot, and its trigger was
        // consumed by the dead daemon (or is still pending): signal each vCPU whose slot holds
        // one. Acquire, once per slot: a slot the guest fills after this load comes with the
        // guest's own trigger, which the running engine sees.
        // A trigger still pending in the eventfd reaches the engine anyway: signalling it again
        // would only add a spurious trigger.
        for (uint32_t v = 0; v < triggers_.size(); ++v) {
            if (device_->slot(v).load(std::memory_order_acquire) == 0) continue;
            auto pending = triggers_[v].is_signaled();
            if (!pending || !*pending) (void)triggers_[v].signal();
        }
    }
    return ok();
}

Status Session::resume_engine() {
    // Settle against the backend itself: the in-progress entries are freed by reconcile.
    COIOMMU_ASSIGN_OR_RETURN(auto rep, dma::reconcile(*record_, *backend_, mem_->ram_ranges()));
    std::vector<GfnRange> extents;
    extents.reserve(rep.adopted.size());
    for (const auto& e : rep.adopted) extents.push_back(GfnRange{e.head, e.pages});
    CLOG_INFO(kLog, "session {}: resume settled {} in-progress entries ({} bytes unmapped); adopting {} extents", id_,
              rep.rolled_back, rep.rolled_back_bytes, extents.size());
    COIOMMU_TRY(engine_->inherit(std::move(extents)));
    const auto regs = device_->registers();
    if (regs.park_count != 0) engine_->park_unpin();
    if (regs.active) COIOMMU_TRY(engine_->activate(regs.dtt_root, regs.dtt_level), "resume: activate");
    if (resumes_ != nullptr) resumes_->fetch_add(1, std::memory_order_relaxed);
    return ok();
}

Reply Session::on_mmio_read(const Message& m) {
    constexpr auto kType = MsgType::MmioRead;
    auto req = read_wire<proto::MmioReadReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::MmioReadReq) || req->pad != 0) {
        return error_reply(kType, EBADMSG, "MmioRead: malformed payload", true);
    }
    if (req->len == 0 || req->len > proto::kMaxMmioLen || req->offset >= core::kMmioBarSize) {
        return error_reply(kType, EINVAL,
                           fmt::format("MmioRead: offset {:#x} len {} outside BAR0", req->offset, req->len), false);
    }
    proto::MmioReadRep rep;
    rep.len = req->len;
    device_->mmio_read(req->offset, std::span<std::byte>(reinterpret_cast<std::byte*>(rep.data), req->len));
    return ok_reply(kType, rep);
}

Reply Session::on_mmio_write(const Message& m) {
    constexpr auto kType = MsgType::MmioWrite;
    auto req = read_wire<proto::MmioWriteReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::MmioWriteReq) || req->pad != 0) {
        return error_reply(kType, EBADMSG, "MmioWrite: malformed payload", true);
    }
    if (req->len == 0 || req->len > proto::kMaxMmioLen || req->offset >= core::kMmioBarSize) {
        return error_reply(kType, EINVAL,
                           fmt::format("MmioWrite: offset {:#x} len {} outside BAR0", req->offset, req->len), false);
    }
    // A trigger byte the VMM trapped instead of letting its ioeventfd swallow it: signal that
    // ioeventfd, which is what the engine waits on.
    if (req->offset >= core::kRegTriggerBase && req->len == 1 &&
        req->offset - core::kRegTriggerBase < triggers_.size()) {
        if (auto st = triggers_[req->offset - core::kRegTriggerBase].signal(); !st) {
            return error_reply(kType, with_context(st.error(), "MmioWrite trigger"), false);
        }
        return empty_reply(kType);
    }
    if (record_ && req->offset < core::kRegTriggerBase && m.header.seq <= record_->device().last_mmio_seq) {
        // Applied before the daemon restarted; the VMM re-sent it because it saw no reply.
        return empty_reply(kType);
    }
    device_->mmio_write(req->offset,
                        std::span<const std::byte>(reinterpret_cast<const std::byte*>(req->data), req->len));
    if (record_ && req->offset < core::kRegTriggerBase) save_device(m.header.seq);
    return empty_reply(kType);
}

void Session::save_device(uint64_t seq) {
    const auto regs = device_->registers();
    dma::RecordedDevice d;
    d.dtt_root = raw(regs.dtt_root);
    d.dtt_level = regs.dtt_level;
    d.park_count = regs.park_count;
    d.active = regs.active ? 1 : 0;
    d.last_mmio_seq = seq;
    record_->set_device(d);
}

Reply Session::on_balloon(const Message& m) {
    constexpr auto kType = MsgType::BalloonUnpin;
    auto req = read_wire<proto::BalloonReq>(m.payload);
    if (!req || req->pad != 0) return error_reply(kType, EBADMSG, "BalloonUnpin: malformed payload", true);
    if (req->count > proto::kMaxBalloonRanges) {
        return error_reply(kType, EINVAL,
                           fmt::format("BalloonUnpin: {} ranges (at most {})", req->count, proto::kMaxBalloonRanges),
                           true);
    }
    if (m.payload.size() != sizeof(proto::BalloonReq) + req->count * sizeof(proto::GfnRangeWire)) {
        return error_reply(kType, EBADMSG, "BalloonUnpin: payload length does not match the range count", true);
    }
    std::vector<GfnRange> ranges(req->count);
    for (uint32_t i = 0; i < req->count; ++i) {
        const auto r =
            *read_wire<proto::GfnRangeWire>(m.payload, sizeof(proto::BalloonReq) + i * sizeof(proto::GfnRangeWire));
        ranges[i] = GfnRange{Gfn{r.start_gfn}, r.count};
    }
    auto res = engine_->balloon_unpin(ranges);
    // EAGAIN (not active yet) and ECANCELED (stopping) are answers for this request only.
    if (!res) return error_reply(kType, with_context(res.error(), "BalloonUnpin"), false);
    proto::BalloonRep rep;
    rep.result = *res == telemetry::BalloonResult::Success ? 0 : 1;
    return ok_reply(kType, rep);
}

std::optional<SessionStats> Session::stats_locked() const {
    if (!engine_) return std::nullopt;
    SessionStats s;
    s.snapshot = engine_->stats();
    s.snapshot.gauges.active_sessions = 1;
    auto& h = s.head;
    h.totals_bytes = sizeof(telemetry::ShardTotals);
    h.gauges_bytes = sizeof(telemetry::GaugeValues);
    h.shards = s.snapshot.shards;
    h.active = device_->active() ? 1 : 0;
    h.park_count = static_cast<uint32_t>(std::min<uint64_t>(device_->park_count(), UINT32_MAX));
    h.backend_live_entries = backend_->live_entries();
    h.backend_entry_limit = backend_->entry_limit();
    h.backend_map_calls = backend_->counters().map_calls.load(std::memory_order_relaxed);
    h.backend_unmap_calls = backend_->counters().unmap_calls.load(std::memory_order_relaxed);
    const auto& dc = device_->counters();
    h.bad_mmio_accesses = dc.bad_mmio_accesses.load(std::memory_order_relaxed);
    h.activate_refused = dc.activate_refused.load(std::memory_order_relaxed);
    h.trigger_signalled = dc.trigger_signalled.load(std::memory_order_relaxed);
    return s;
}

std::optional<SessionStats> Session::stats() const {
    std::lock_guard lock(engine_mu_);
    return stats_locked();
}

telemetry::ShardTotals Session::final_totals() const {
    std::lock_guard lock(engine_mu_);
    return final_totals_;
}

Reply Session::on_stats(const Message& m) {
    constexpr auto kType = MsgType::GetStats;
    if (!m.payload.empty()) return error_reply(kType, EBADMSG, "GetStats: takes no payload", true);
    auto s = stats();
    if (!s) return error_reply(kType, EAGAIN, "GetStats: no engine", false);
    Reply r = ok_reply(kType, s->head);
    append_wire(r.payload, s->snapshot.totals);
    append_wire(r.payload, s->snapshot.gauges);
    return r;
}

Reply Session::on_query_mapped(const Message& m) {
    constexpr auto kType = MsgType::QueryMapped;
    auto req = read_wire<proto::QueryMappedReq>(m.payload);
    if (!req || m.payload.size() != sizeof(proto::QueryMappedReq)) {
        return error_reply(kType, EBADMSG, "QueryMapped: malformed payload", true);
    }
    if ((features_ & proto::kFeatureQueryMapped) == 0) {
        return error_reply(kType, EPERM, "QueryMapped: feature not negotiated", false);
    }
    if (fake_ == nullptr) return error_reply(kType, ENOTSUP, "QueryMapped: only the fake backend can answer", false);
    proto::QueryMappedRep rep;
    rep.mapped = static_cast<dma::FakeBackend*>(fake_)->is_mapped(Iova{req->iova}, req->size) ? 1 : 0;
    return ok_reply(kType, rep);
}

Reply Session::on_close(const Message& m) {
    constexpr auto kType = MsgType::Close;
    if (!m.payload.empty()) return error_reply(kType, EBADMSG, "Close: takes no payload", true);
    proto::CloseRep rep;
    rep.pages_unpinned = release(Mappings::Unmap, &rep.dma_entries_after);
    Reply r = ok_reply(kType, rep);
    r.close_after = true;
    return r;
}

uint64_t Session::teardown() { return release(Mappings::Unmap, nullptr); }

uint64_t Session::detach() { return release(record_ ? Mappings::Keep : Mappings::Unmap, nullptr); }

uint64_t Session::release(Mappings how, uint64_t* live_after) {
    uint64_t pinned = 0;
    // Only this (the session's) thread changes engine_, so it may be read here without the lock.
    workers::Engine* engine = engine_.get();
    if (engine != nullptr) {
        // stop(): joins its threads, unmaps everything it mapped; detach(): joins them only.
        pinned = how == Mappings::Keep ? engine->detach() : engine->stop();
        if (device_) device_->set_engine(nullptr);
        std::unique_ptr<workers::Engine> gone;
        {
            // One step for stats(): either the live engine or its final totals, never neither.
            std::lock_guard lock(engine_mu_);
            final_totals_ = engine->stats().totals;
            gone = std::move(engine_);
        }
    }
    if (live_after != nullptr) *live_after = backend_ ? backend_->live_entries() : 0;
    if (state() != SessionState::Closed) {
        if (how == Mappings::Keep) {
            CLOG_INFO(kLog, "session {}: detached ({} pinned pages left mapped for the VMM to resume)", id_, pinned);
        } else {
            CLOG_INFO(kLog, "session {}: closed ({} pinned pages unmapped, {} DMA entries left)", id_, pinned,
                      backend_ ? backend_->live_entries() : 0);
        }
    }
    set_state(SessionState::Closed);
    triggers_.clear();
    fake_ = nullptr;
    recording_.reset();
    backend_.reset();  // an adopted VFIO container is closed here (the VMM keeps its groups)
    record_.reset();   // the memfd stays with the VMM
    device_.reset();
    mem_.reset();
    return pinned;
}

SessionEnd serve(Session& session, int sock, int stop_fd, const SessionLimits& limits) {
    using Clock = std::chrono::steady_clock;
    const auto setup_deadline = Clock::now() + limits.setup_timeout;
    std::vector<std::byte> buf;
    SessionEnd end = SessionEnd::PeerGone;
    for (;;) {
        std::chrono::milliseconds wait{-1};
        if (session.state() != SessionState::Running) {
            wait = std::chrono::duration_cast<std::chrono::milliseconds>(setup_deadline - Clock::now());
            if (wait.count() <= 0) {
                end = SessionEnd::SetupTimeout;
                break;
            }
        }
        bool stopped = false;
        auto readable = wait_readable(sock, stop_fd, wait, &stopped);
        if (!readable) {
            end = SessionEnd::IoError;
            break;
        }
        if (stopped) {
            end = SessionEnd::Stopped;
            break;
        }
        if (!*readable) continue;  // the setup deadline is re-checked above
        auto in = recv_message(sock, buf);
        if (!in) {
            const int code = in.error().code;
            if (code == ECONNRESET) {
                end = SessionEnd::PeerGone;
                break;
            }
            // Oversized / too many fds / shorter than a header: tell the peer, then close.
            const auto payload = encode_error(code, 0, in.error().message());
            (void)send_message(sock, static_cast<uint16_t>(proto::MsgType::Error), 0, payload, {}, limits.io_timeout);
            CLOG_WARN_RL(kLog, "session {}: {}", session.id(), in.error().message());
            end = code == EMSGSIZE || code == ETOOMANYREFS || code == EBADMSG ? SessionEnd::ProtocolError
                                                                              : SessionEnd::IoError;
            break;
        }
        if (!*in) {
            end = SessionEnd::PeerGone;
            break;
        }
        Message& msg = **in;
        Reply reply = session.handle(msg);
        const bool is_error = reply.type == static_cast<uint16_t>(proto::MsgType::Error);
        if (is_error && reply.close_after) {
            auto d = decode_error(reply.payload);
            CLOG_WARN_RL(kLog, "session {}: closing: {}", session.id(), d ? d->text : std::string("error"));
        }
        auto sent = send_message(sock, reply.type, msg.header.seq, reply.payload, reply.fds, limits.io_timeout);
        if (!sent) {
            CLOG_WARN_RL(kLog, "session {}: reply not sent: {}", session.id(), sent.error().message());
            end = SessionEnd::IoError;
            break;
        }
        if (reply.close_after) {
            end = is_error ? SessionEnd::ProtocolError : SessionEnd::Closed;
            break;
        }
    }
    // Daemon shutdown leaves a resumable session's mappings to the daemon the VMM resumes with.
    if (end == SessionEnd::Stopped) {
        session.detach();
    } else {
        session.teardown();
    }
    return end;
}

}  // namespace coiommu::daemon
