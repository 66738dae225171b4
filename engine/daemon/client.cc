#include "engine/daemon/client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace coiommu::daemon {

using proto::MsgType;

Result<UniqueFd> connect_seqpacket(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
        return make_error(ENAMETOOLONG,
                          fmt::format("socket path '{}' is longer than {} bytes", path, sizeof addr.sun_path - 1));
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        return make_error(errno, fmt::format("connect {}", path));
    }
    return fd;
}

Result<std::unique_ptr<Client>> Client::connect(const std::string& socket_path, std::string_view name,
                                                uint64_t features) {
    auto fd = connect_seqpacket(socket_path);
    if (!fd) return coiommu::unexpected(fd.error());
    std::unique_ptr<Client> c(new Client(std::move(*fd)));
    auto h = c->hello(name, features);
    if (!h) return coiommu::unexpected(h.error());
    return c;
}

std::unique_ptr<Client> Client::adopt(UniqueFd sock) { return std::unique_ptr<Client>(new Client(std::move(sock))); }

Result<Message> Client::call(MsgType type, std::span<const std::byte> payload, std::span<const int> fds) {
    std::lock_guard lock(mu_);
    return call_locked(type, next_seq_++, payload, fds);
}

uint64_t Client::next_seq() {
    std::lock_guard lock(mu_);
    return next_seq_;
}

void Client::set_next_seq(uint64_t seq) {
    std::lock_guard lock(mu_);
    next_seq_ = seq;
}

RequestSeq Client::reserve_seq() {
    std::lock_guard lock(mu_);
    return RequestSeq{next_seq_++};
}

Result<Message> Client::call_locked(MsgType type, uint64_t seq, std::span<const std::byte> payload,
                                    std::span<const int> fds) {
    const auto what = proto::to_string(type);
    if (auto st = send_message(sock_.get(), static_cast<uint16_t>(type), seq, payload, fds, timeout_); !st) {
        // The daemon may have refused the connection (EACCES, EBUSY) and closed it before this
        // request went out: its Error is still queued here, and says more than EPIPE.
        const int code = st.error().code;
        if (code == EPIPE || code == ECONNRESET) {
            bool stopped = false;
            auto readable = wait_readable(sock_.get(), -1, std::chrono::milliseconds(0), &stopped);
            if (readable && *readable) {
                auto in = recv_message(sock_.get(), buf_);
                if (!in && in.error().code == ECONNRESET) in = recv_message(sock_.get(), buf_);
                if (in && *in && (*in)->header.type == static_cast<uint16_t>(MsgType::Error)) {
                    if (auto e = decode_error((*in)->payload)) {
                        return make_error(e->code, fmt::format("{}: coiommud: {}", what, e->text));
                    }
                }
            }
        }
        return coiommu::unexpected(with_context(st.error(), what));
    }
    bool stopped = false;
    auto readable = wait_readable(sock_.get(), -1, timeout_, &stopped);
    if (!readable) return coiommu::unexpected(with_context(readable.error(), what));
    if (!*readable) return make_error(ETIMEDOUT, fmt::format("{}: no reply from coiommud", what));
    auto in = recv_message(sock_.get(), buf_);
    if (!in && in.error().code == ECONNRESET) {
        // The daemon closed with our request unread (a refused connection): Linux reports
        // ECONNRESET once before the datagrams still queued, such as its Error.
        in = recv_message(sock_.get(), buf_);
        if (!in && in.error().code == EAGAIN) in = make_error(ECONNRESET, "recvmsg");
    }
    if (!in) return coiommu::unexpected(with_context(in.error(), what));
    if (!*in) return make_error(ECONNRESET, fmt::format("{}: coiommud closed the session", what));
    Message m = std::move(**in);
    COIOMMU_TRY(check_header(m.header, m.payload.size()), what);
    if (m.header.type == static_cast<uint16_t>(MsgType::Error)) {
        auto e = decode_error(m.payload);
        if (!e) return coiommu::unexpected(with_context(e.error(), what));
        return make_error(e->code, fmt::format("{}: coiommud: {}", what, e->text));
    }
    if (m.header.type != proto::reply_type(type) || m.header.seq != seq) {
        return make_error(EPROTO,
                          fmt::format("{}: unexpected reply type {:#x} seq {}", what, m.header.type, m.header.seq));
    }
    return m;
}

Status Client::send_raw(std::span<const std::byte> datagram, std::span<const int> fds) {
    std::lock_guard lock(mu_);
    // send_message adds a header; raw datagrams go through sendmsg directly.
    iovec iov{const_cast<std::byte*>(datagram.data()), datagram.size()};
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 256)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (fds.size() > 256) return make_error(EINVAL, "send_raw: too many fds");
    if (auto st = attach_fds(mh, control, fds); !st) return st;
    if (::sendmsg(sock_.get(), &mh, MSG_NOSIGNAL) < 0) return make_error(errno, "send_raw");
    return ok();
}

Result<std::optional<Message>> Client::receive() {
    std::lock_guard lock(mu_);
    bool stopped = false;
    auto readable = wait_readable(sock_.get(), -1, timeout_, &stopped);
    if (!readable) return coiommu::unexpected(readable.error());
    if (!*readable) return make_error(ETIMEDOUT, "receive: nothing from coiommud");
    return recv_message(sock_.get(), buf_);
}

Result<HelloInfo> Client::hello(std::string_view name, uint64_t features) {
    proto::HelloReq req;
    req.features = features;
    std::memcpy(req.client_name, name.data(), std::min(name.size(), sizeof req.client_name));
    auto m = call(MsgType::Hello, as_bytes_of(req));
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::HelloRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "Hello: short reply");
    hello_ = HelloInfo{rep->version, rep->minor, rep->features, rep->session_id, rep->max_message_size};
    return hello_;
}

Status Client::set_memory(const GuestMemory& mem) { return set_memory(mem.layout()); }

Status Client::set_memory(std::span<const RegionLayout> regions) {
    if (regions.empty() || regions.size() > proto::kMaxRegions) {
        return make_error(EINVAL, fmt::format("SetMemory: {} regions (1..{})", regions.size(), proto::kMaxRegions));
    }
    std::vector<std::byte> payload;
    proto::SetMemoryReq req;
    req.count = static_cast<uint32_t>(regions.size());
    append_wire(payload, req);
    std::vector<int> fds;
    for (const RegionLayout& r : regions) {
        append_wire(payload, proto::MemRegionWire{raw(r.base), r.size, r.fd_offset});
        fds.push_back(r.fd);
    }
    auto m = call(MsgType::SetMemory, payload, fds);
    if (!m) return coiommu::unexpected(m.error());
    return ok();
}

Result<DeviceMemfds> Client::set_topology(uint32_t vcpus, std::span<const uint16_t> endpoints) {
    if (endpoints.size() > UINT16_MAX) return make_error(EINVAL, "SetTopology: too many endpoints");
    std::vector<std::byte> payload;
    proto::SetTopologyReq req;
    req.vcpus = vcpus;
    req.endpoint_count = static_cast<uint16_t>(endpoints.size());
    append_wire(payload, req);
    for (uint16_t bdf : endpoints) append_wire(payload, bdf);
    auto m = call(MsgType::SetTopology, payload);
    if (!m) return coiommu::unexpected(m.error());
    const std::size_t want = (hello_.features & proto::kFeatureResume) != 0 ? 3 : 2;
    if (m->fds.size() != want) {
        return make_error(EBADMSG, fmt::format("SetTopology: {} fds in the reply, {} expected", m->fds.size(), want));
    }
    DeviceMemfds out{std::move(m->fds[0]), std::move(m->fds[1]), {}};
    if (want == 3) out.record = std::move(m->fds[2]);
    return out;
}

Result<ResumeInfo> Client::resume(uint32_t vcpus, std::span<const uint16_t> endpoints, int notifymap, int topologymap,
                                  int record) {
    if ((hello_.features & proto::kFeatureResume) == 0) {
        return make_error(ENOTSUP, "Resume: the daemon does not offer resumable sessions");
    }
    if (endpoints.size() > UINT16_MAX) return make_error(EINVAL, "Resume: too many endpoints");
    std::vector<std::byte> payload;
    proto::SetTopologyReq req;
    req.vcpus = vcpus;
    req.endpoint_count = static_cast<uint16_t>(endpoints.size());
    append_wire(payload, req);
    for (uint16_t bdf : endpoints) append_wire(payload, bdf);
    const int fds[] = {notifymap, topologymap, record};
    auto m = call(MsgType::Resume, payload, fds);
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::ResumeRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "Resume: short reply");
    return ResumeInfo{rep->extents, rep->pages, rep->in_progress, rep->active != 0};
}

Result<BackendInfo> Client::set_backend(const proto::SetBackendReq& req, std::span<const int> fds) {
    auto m = call(MsgType::SetBackend, as_bytes_of(req), fds);
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::SetBackendRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "SetBackend: short reply");
    BackendInfo info;
    info.entry_limit = rep->entry_limit;
    info.name.assign(rep->name, strnlen(rep->name, sizeof rep->name));
    return info;
}

Result<BackendInfo> Client::set_backend_fake(const FakeBackendSpec& spec) {
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Fake);
    req.param = static_cast<uint32_t>(spec.latency);
    req.entry_limit = spec.entry_limit;
    if (spec.shared_state >= 0) {
        const int fds[] = {spec.shared_state};
        return set_backend(req, fds);
    }
    return set_backend(req, {});
}

Result<BackendInfo> Client::set_backend_null(uint64_t entry_limit) {
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Null);
    req.entry_limit = entry_limit;
    return set_backend(req, {});
}

Result<BackendInfo> Client::set_backend_vfio(UniqueFd container, uint64_t entry_limit) {
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Vfio);
    req.entry_limit = entry_limit;
    const int fd = container.get();
    return set_backend(req, std::span<const int>(&fd, 1));  // `container` closes here; the daemon has a dup
}

Result<BackendInfo> Client::set_backend_iommufd(UniqueFd iommufd, uint32_t ioas_id) {
    if ((hello_.features & proto::kFeatureIommufdBackend) == 0) {
        return make_error(ENOTSUP,
                          fmt::format("coiommud (protocol 1.{}) does not offer the iommufd backend", hello_.minor));
    }
    proto::SetBackendReq req;
    req.kind = static_cast<uint32_t>(proto::BackendKind::Iommufd);
    req.param = ioas_id;
    const int fd = iommufd.get();
    return set_backend(req, std::span<const int>(&fd, 1));  // `iommufd` closes here; the daemon has a dup
}

Result<bool> Client::set_triggers(std::span<const int> eventfds) {
    bool running = false;
    for (std::size_t first = 0; first < eventfds.size(); first += proto::kMaxFdsPerMessage) {
        const std::size_t n = std::min(eventfds.size() - first, proto::kMaxFdsPerMessage);
        proto::SetTriggersReq req;
        req.first_vcpu = static_cast<uint32_t>(first);
        req.count = static_cast<uint32_t>(n);
        auto m = call(MsgType::SetTriggers, as_bytes_of(req), eventfds.subspan(first, n));
        if (!m) return coiommu::unexpected(m.error());
        auto rep = read_wire<proto::SetTriggersRep>(m->payload);
        if (!rep) return make_error(EBADMSG, "SetTriggers: short reply");
        running = rep->running != 0;
    }
    return running;
}

Status Client::mmio_write(uint64_t offset, std::span<const std::byte> data) {
    return mmio_write(reserve_seq(), offset, data);
}

Status Client::mmio_write(RequestSeq seq, uint64_t offset, std::span<const std::byte> data) {
    if (data.empty() || data.size() > proto::kMaxMmioLen) return make_error(EINVAL, "MmioWrite: 1..8 bytes");
    proto::MmioWriteReq req;
    req.offset = offset;
    req.len = static_cast<uint32_t>(data.size());
    std::memcpy(req.data, data.data(), data.size());
    std::lock_guard lock(mu_);
    auto m = call_locked(MsgType::MmioWrite, seq.value, as_bytes_of(req), {});
    if (!m) return coiommu::unexpected(m.error());
    return ok();
}

Status Client::mmio_read(uint64_t offset, std::span<std::byte> data) {
    if (data.empty() || data.size() > proto::kMaxMmioLen) return make_error(EINVAL, "MmioRead: 1..8 bytes");
    proto::MmioReadReq req;
    req.offset = offset;
    req.len = static_cast<uint32_t>(data.size());
    auto m = call(MsgType::MmioRead, as_bytes_of(req));
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::MmioReadRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "MmioRead: short reply");
    std::memcpy(data.data(), rep->data, data.size());
    return ok();
}

Result<telemetry::BalloonResult> Client::balloon_unpin(std::span<const GfnRange> ranges) {
    if (ranges.size() > proto::kMaxBalloonRanges) return make_error(EINVAL, "BalloonUnpin: too many ranges");
    std::vector<std::byte> payload;
    proto::BalloonReq req;
    req.count = static_cast<uint32_t>(ranges.size());
    append_wire(payload, req);
    for (const auto& r : ranges) append_wire(payload, proto::GfnRangeWire{raw(r.start), r.count});
    auto m = call(MsgType::BalloonUnpin, payload);
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::BalloonRep>(m->payload);
    if (!rep || rep->result > 1) return make_error(EBADMSG, "BalloonUnpin: malformed reply");
    return rep->result == 0 ? telemetry::BalloonResult::Success : telemetry::BalloonResult::Failed;
}

Result<RemoteStats> Client::stats() {
    auto m = call(MsgType::GetStats, {});
    if (!m) return coiommu::unexpected(m.error());
    auto head = read_wire<proto::StatsRepHead>(m->payload);
    if (!head) return make_error(EBADMSG, "GetStats: short reply");
    if (head->totals_bytes != sizeof(telemetry::ShardTotals) || head->gauges_bytes != sizeof(telemetry::GaugeValues) ||
        m->payload.size() != sizeof(proto::StatsRepHead) + head->totals_bytes + head->gauges_bytes) {
        return make_error(EPROTO, "GetStats: the daemon's statistics layout differs from this build's");
    }
    RemoteStats s;
    s.head = *head;
    s.snapshot.totals = *read_wire<telemetry::ShardTotals>(m->payload, sizeof(proto::StatsRepHead));
    s.snapshot.gauges =
        *read_wire<telemetry::GaugeValues>(m->payload, sizeof(proto::StatsRepHead) + head->totals_bytes);
    s.snapshot.shards = head->shards;
    return s;
}

Result<bool> Client::query_mapped(Iova iova, uint64_t size) {
    proto::QueryMappedReq req{raw(iova), size};
    auto m = call(MsgType::QueryMapped, as_bytes_of(req));
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::QueryMappedRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "QueryMapped: short reply");
    return rep->mapped != 0;
}

Result<CloseInfo> Client::close() {
    auto m = call(MsgType::Close, {});
    if (!m) return coiommu::unexpected(m.error());
    auto rep = read_wire<proto::CloseRep>(m->payload);
    if (!rep) return make_error(EBADMSG, "Close: short reply");
    return CloseInfo{rep->dma_entries_after, rep->pages_unpinned};
}

}  // namespace coiommu::daemon
