// The C ABI (include/coiommu/client.h) over the one protocol implementation, daemon::Client.
//
// Every exported function goes through call(): a NULL handle is -EINVAL; otherwise the handle's
// mutex is held for the whole call (so last_error belongs to that call), the body returns a
// Status, its Error becomes -errno and last_error's text, and every C++ exception stops here
// (-ENOMEM for bad_alloc, -EIO for anything else). Nothing else is exported (version script
// libcoiommu-client.map, -fvisibility=hidden).
#include "coiommu/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/core/spec.h"
#include "engine/daemon/client.h"
#include "engine/daemon/protocol.h"
#include "engine/daemon/resuming_client.h"
#include "engine/dma/fake_backend.h"
#include "engine/guest/guest_memory.h"
#include "engine/telemetry/engine_stats.h"

// The header restates the protocol's and the device's constants so that C needs neither; they
// must agree.
static_assert(COIOMMU_CLIENT_VERSION == COIOMMU_PROJECT_VERSION_NUM,
              "coiommu/client.h's COIOMMU_CLIENT_VERSION_* differ from project(VERSION): update the header");
static_assert(COIOMMU_CLIENT_PROTOCOL_VERSION == coiommu::daemon::proto::kVersion);
static_assert(COIOMMU_CLIENT_FEATURE_VFIO_BACKEND == coiommu::daemon::proto::kFeatureVfioBackend);
static_assert(COIOMMU_CLIENT_FEATURE_FAKE_BACKEND == coiommu::daemon::proto::kFeatureFakeBackend);
static_assert(COIOMMU_CLIENT_FEATURE_NULL_BACKEND == coiommu::daemon::proto::kFeatureNullBackend);
static_assert(COIOMMU_CLIENT_FEATURE_QUERY_MAPPED == coiommu::daemon::proto::kFeatureQueryMapped);
static_assert(COIOMMU_CLIENT_FEATURE_IOMMUFD_BACKEND == coiommu::daemon::proto::kFeatureIommufdBackend);
static_assert(COIOMMU_CLIENT_FEATURE_RESUME == coiommu::daemon::proto::kFeatureResume);
static_assert(COIOMMU_CLIENT_PROTOCOL_MINOR == coiommu::daemon::proto::kMinorVersion);
static_assert(COIOMMU_CLIENT_FEATURES_ALL == coiommu::daemon::proto::kAllFeatures);
static_assert(COIOMMU_CLIENT_MAX_REGIONS == coiommu::daemon::proto::kMaxRegions);
static_assert(COIOMMU_CLIENT_MAX_BALLOON_RANGES == coiommu::daemon::proto::kMaxBalloonRanges);
static_assert(COIOMMU_CLIENT_MAX_MMIO_LEN == coiommu::daemon::proto::kMaxMmioLen);
static_assert(COIOMMU_CLIENT_NAME_MAX + 1 == coiommu::daemon::proto::kClientNameSize);
static_assert(COIOMMU_CLIENT_MAX_VCPUS == coiommu::core::kMaxVcpus);
static_assert(COIOMMU_CLIENT_MAX_ENDPOINTS == coiommu::core::kMaxEndpoints);
static_assert(COIOMMU_CLIENT_PCI_VENDOR_ID == coiommu::core::kPciVendorId);
static_assert(COIOMMU_CLIENT_PCI_DEVICE_ID == coiommu::core::kPciDeviceId);
static_assert(COIOMMU_CLIENT_PCI_REVISION_ID == coiommu::core::kPciRevisionId);
static_assert(COIOMMU_CLIENT_PCI_CLASS_CODE == coiommu::core::kPciClassCode);
static_assert(COIOMMU_CLIENT_BAR_SIZE == coiommu::core::kMmioBarSize &&
              COIOMMU_CLIENT_BAR_SIZE == coiommu::core::kNotifymapSize &&
              COIOMMU_CLIENT_BAR_SIZE == coiommu::core::kTopologymapSize);
static_assert(COIOMMU_CLIENT_MMIO_BAR == coiommu::core::kMmioBar);
static_assert(COIOMMU_CLIENT_NOTIFYMAP_BAR == coiommu::core::kNotifymapBar);
static_assert(COIOMMU_CLIENT_TOPOLOGYMAP_BAR == coiommu::core::kTopologymapBar);
static_assert(COIOMMU_CLIENT_REG_DTT_ROOT == coiommu::core::kRegDttRoot);
static_assert(COIOMMU_CLIENT_REG_CMD == coiommu::core::kRegCmd);
static_assert(COIOMMU_CLIENT_REG_DTT_LEVEL == coiommu::core::kRegDttLevel);
static_assert(COIOMMU_CLIENT_REG_TRIGGER_BASE == coiommu::core::kRegTriggerBase);
static_assert(COIOMMU_CLIENT_CMD_DEACTIVATE == static_cast<uint64_t>(coiommu::core::Command::Deactivate));
static_assert(COIOMMU_CLIENT_CMD_ACTIVATE == static_cast<uint64_t>(coiommu::core::Command::Activate));
static_assert(COIOMMU_CLIENT_CMD_PARK_UNPIN == static_cast<uint64_t>(coiommu::core::Command::ParkUnpin));
static_assert(COIOMMU_CLIENT_CMD_UNPARK_UNPIN == static_cast<uint64_t>(coiommu::core::Command::UnparkUnpin));
static_assert(COIOMMU_CLIENT_FAKE_LATENCY_NONE == static_cast<int>(coiommu::daemon::proto::FakeLatency::None));
static_assert(COIOMMU_CLIENT_FAKE_LATENCY_TYPICAL == static_cast<int>(coiommu::daemon::proto::FakeLatency::Typical));
static_assert(COIOMMU_CLIENT_BALLOON_SUCCESS == static_cast<int>(coiommu::telemetry::BalloonResult::Success));
static_assert(COIOMMU_CLIENT_BALLOON_FAILED == static_cast<int>(coiommu::telemetry::BalloonResult::Failed));

// The ABI's struct layouts (x86-64 and aarch64 LP64): a change here is a new soname.
static_assert(sizeof(coiommu_client_hello) == 24);
static_assert(sizeof(coiommu_client_region) == 32 && offsetof(coiommu_client_region, gpa) == 8);
static_assert(sizeof(coiommu_client_backend_info) == 24);
static_assert(sizeof(coiommu_client_gfn_range) == 16);
static_assert(sizeof(coiommu_client_close_info) == 16);
static_assert(sizeof(coiommu_client_resume_info) == 32);
static_assert(sizeof(enum coiommu_client_balloon_result) == sizeof(int));
// coiommu_client_stats as of COIOMMU_CLIENT_0.1; it only grows.
constexpr std::size_t kStatsV1Size = 8 + 25 * sizeof(uint64_t);
static_assert(sizeof(coiommu_client_stats) == kStatsV1Size && std::is_trivially_copyable_v<coiommu_client_stats>);

struct coiommu_client {
    // A register write sent without an answer (the connection was lost): re-sent identically as the
    // next write, it keeps its seq, so a daemon that applied it before dying does not apply it twice.
    struct UnansweredWrite {
        coiommu::daemon::RequestSeq seq;
        uint64_t offset = 0;
        std::vector<std::byte> data;
    };

    std::mutex mu;  // held for a whole call: serialises the calls and owns last_error to the next one
    std::unique_ptr<coiommu::daemon::Client> client;
    std::chrono::milliseconds timeout{30'000};
    std::string last_error;
    // What coiommu_client_reconnect asks for again: the last connect's Hello and where its request
    // numbering had got to (set when the connection is dropped).
    std::optional<std::pair<std::string, uint64_t>> hello_asked;  // name, features
    uint64_t next_seq = 1;
    std::optional<UnansweredWrite> unanswered;
};

namespace {

using coiommu::make_error;
using coiommu::Result;
using coiommu::Status;
using coiommu::UniqueFd;
using coiommu::daemon::Client;

constexpr const char* kNullHandle = "coiommu-client: NULL handle";

// Stores the text without letting an allocation failure escape (the text is then dropped).
void set_text(coiommu_client& c, std::string_view text) noexcept {
    try {
        c.last_error.assign(text);
    } catch (...) {
        c.last_error.clear();
    }
}

// Runs `body` (Status(coiommu_client&)) with the handle locked: 0 or -errno, the text in last_error.
template <class F>
int call(coiommu_client* c, const char* fn, F&& body) noexcept {
    if (c == nullptr) return -EINVAL;
    std::unique_lock<std::mutex> lock;
    try {
        lock = std::unique_lock<std::mutex>(c->mu);
    } catch (...) {
        return -EIO;  // std::system_error from a broken mutex: nothing sensible is left to say
    }
    try {
        Status st = body(*c);
        if (st) {
            c->last_error.clear();
            return 0;
        }
        const int code = st.error().code > 0 ? st.error().code : EIO;
        set_text(*c, fmt::format("{}: {}", fn, st.error().message()));
        return -code;
    } catch (const std::bad_alloc&) {
        set_text(*c, "out of memory");  // short enough not to allocate
        return -ENOMEM;
    } catch (const std::exception& e) {
        try {
            set_text(*c, fmt::format("{}: internal error: {}", fn, e.what()));
        } catch (...) {
            set_text(*c, fn);
        }
        return -EIO;
    } catch (...) {
        set_text(*c, fn);
        return -EIO;
    }
}

Result<Client*> connected(coiommu_client& c) {
    if (!c.client) return make_error(ENOTCONN, "not connected (coiommu_client_connect first)");
    return c.client.get();
}

Status require(bool ok, const char* what) {
    if (!ok) return make_error(EINVAL, what);
    return coiommu::ok();
}

Result<UniqueFd> dup_fd(int fd, const char* what) {
    if (fd < 0) return make_error(EBADF, fmt::format("{}: fd {}", what, fd));
    UniqueFd d(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!d) return make_error(errno, fmt::format("dup {} {}", what, fd));
    return d;
}

std::string_view name_or_default(const char* vmm_name) {
    return vmm_name != nullptr ? std::string_view(vmm_name) : std::string_view("coiommu-client");
}

void fill_hello(const coiommu::daemon::HelloInfo& h, coiommu_client_hello* out) {
    if (out == nullptr) return;
    *out = coiommu_client_hello{};
    out->version = h.version;
    out->minor = h.minor;
    out->session_id = h.session_id;
    out->features = h.features;
    out->max_message_size = h.max_message_size;
}

// Connects `sock` (already connected) with Hello and installs the client.
Status adopt_and_hello(coiommu_client& c, UniqueFd sock, const char* vmm_name, uint64_t features,
                       coiommu_client_hello* hello) {
    std::unique_ptr<Client> client = Client::adopt(std::move(sock));
    client->set_timeout(c.timeout);
    const std::string name(name_or_default(vmm_name));
    COIOMMU_ASSIGN_OR_RETURN(const auto info, client->hello(name, features));
    fill_hello(info, hello);
    c.client = std::move(client);
    c.hello_asked.emplace(name, features);
    c.unanswered.reset();
    return coiommu::ok();
}

// One attempt of coiommu_client_reconnect: a new connection whose numbering carries on at
// `first_seq`, with the Hello of the handle's last connect.
Result<std::unique_ptr<Client>> connect_again(const coiommu_client& c, const char* socket_path, uint64_t first_seq) {
    COIOMMU_ASSIGN_OR_RETURN(auto sock, coiommu::daemon::connect_seqpacket(socket_path));
    std::unique_ptr<Client> client = Client::adopt(std::move(sock));
    client->set_timeout(c.timeout);
    client->set_next_seq(first_seq);
    COIOMMU_TRY(client->hello(c.hello_asked->first, c.hello_asked->second));
    return client;
}

Status fill_backend(Result<coiommu::daemon::BackendInfo> r, coiommu_client_backend_info* out) {
    if (!r) return coiommu::unexpected(r.error());
    if (out != nullptr) {
        *out = coiommu_client_backend_info{};
        out->entry_limit = r->entry_limit;
        const std::size_t n = std::min(r->name.size(), sizeof out->name - 1);
        std::memcpy(out->name, r->name.data(), n);
    }
    return coiommu::ok();
}

Result<coiommu::daemon::FakeBackendSpec> fake_spec(coiommu_client_fake_latency latency) {
    coiommu::daemon::FakeBackendSpec spec;
    switch (latency) {
        case COIOMMU_CLIENT_FAKE_LATENCY_NONE: spec.latency = coiommu::daemon::proto::FakeLatency::None; break;
        case COIOMMU_CLIENT_FAKE_LATENCY_TYPICAL: spec.latency = coiommu::daemon::proto::FakeLatency::Typical; break;
        default: return make_error(EINVAL, fmt::format("fake latency {}", static_cast<int>(latency)));
    }
    return spec;
}

coiommu_client_stats to_c_stats(const coiommu::daemon::RemoteStats& r) {
    using coiommu::telemetry::BalloonResult;
    using coiommu::telemetry::DmaOp;
    using coiommu::telemetry::RequestKind;
    const auto& t = r.snapshot.totals;
    const auto& g = r.snapshot.gauges;
    coiommu_client_stats s{};
    s.active = r.head.active;
    s.park_count = r.head.park_count;
    s.bad_mmio_accesses = r.head.bad_mmio_accesses;
    s.activate_refused = r.head.activate_refused;
    s.trigger_signalled = r.head.trigger_signalled;
    s.requests_single = t.requests[RequestKind::Single];
    s.requests_batch = t.requests[RequestKind::Batch];
    s.requests = s.requests_single + s.requests_batch;
    s.requests_failed = t.requests_failed;
    s.pages_requested = t.pages_requested;
    s.pages_pinned = t.pages_pinned;
    s.pages_already_pinned = t.pages_already_pinned;
    for (std::size_t i = 0; i < t.pin_failures.size(); ++i) s.pin_failures += t.pin_failures.at_index(i);
    s.pages_unpinned = t.pages_unpinned;
    s.balloon_success = t.balloon_requests[BalloonResult::Success];
    s.balloon_failed = t.balloon_requests[BalloonResult::Failed];
    s.dma_map_calls = t.dma_calls[DmaOp::Map];
    s.dma_unmap_calls = t.dma_calls[DmaOp::Unmap];
    s.dma_call_failures = t.dma_call_failures[DmaOp::Map] + t.dma_call_failures[DmaOp::Unmap];
    s.dma_bytes_mapped = t.dma_bytes[DmaOp::Map];
    s.dma_bytes_unmapped = t.dma_bytes[DmaOp::Unmap];
    s.pinned_pages = g.pinned_pages;
    s.dma_entries = g.dma_entries;
    s.dma_entry_limit = g.dma_entry_limit;
    s.queue_depth = g.queue_depth;
    s.guest_ram_bytes = g.guest_ram_bytes;
    s.vcpus = g.vcpus;
    return s;
}

}  // namespace

extern "C" {

COIOMMU_CLIENT_API uint32_t coiommu_client_version(void) { return COIOMMU_CLIENT_VERSION; }

COIOMMU_CLIENT_API int coiommu_client_new(coiommu_client** out) {
    if (out == nullptr) return -EINVAL;
    *out = new (std::nothrow) coiommu_client();
    return *out != nullptr ? 0 : -ENOMEM;
}

COIOMMU_CLIENT_API void coiommu_client_free(coiommu_client* c) {
    delete c;  // ~Client closes the socket: the daemon sees end of stream
}

COIOMMU_CLIENT_API const char* coiommu_client_last_error(const coiommu_client* c) {
    return c != nullptr ? c->last_error.c_str() : kNullHandle;
}

COIOMMU_CLIENT_API int coiommu_client_set_timeout(coiommu_client* c, uint32_t timeout_ms) {
    return call(c, "coiommu_client_set_timeout", [&](coiommu_client& h) -> Status {
        COIOMMU_TRY(require(timeout_ms > 0, "timeout 0 ms"));
        h.timeout = std::chrono::milliseconds(timeout_ms);
        if (h.client) h.client->set_timeout(h.timeout);
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_connect(coiommu_client* c, const char* socket_path, const char* vmm_name,
                                              uint64_t features, coiommu_client_hello* hello) {
    return call(c, "coiommu_client_connect", [&](coiommu_client& h) -> Status {
        COIOMMU_TRY(require(socket_path != nullptr, "socket_path NULL"));
        if (h.client) return make_error(EISCONN, "already connected");
        COIOMMU_ASSIGN_OR_RETURN(auto sock, coiommu::daemon::connect_seqpacket(socket_path));
        return adopt_and_hello(h, std::move(sock), vmm_name, features, hello);
    });
}

COIOMMU_CLIENT_API int coiommu_client_connect_fd(coiommu_client* c, int sock_fd, const char* vmm_name,
                                                 uint64_t features, coiommu_client_hello* hello) {
    return call(c, "coiommu_client_connect_fd", [&](coiommu_client& h) -> Status {
        if (h.client) return make_error(EISCONN, "already connected");
        COIOMMU_ASSIGN_OR_RETURN(auto sock, dup_fd(sock_fd, "socket"));
        return adopt_and_hello(h, std::move(sock), vmm_name, features, hello);
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_memory(coiommu_client* c, const coiommu_client_region* regions,
                                                 size_t count) {
    return call(c, "coiommu_client_set_memory", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(regions != nullptr || count == 0, "regions NULL"));
        std::vector<coiommu::RegionLayout> layout;
        layout.reserve(std::min<size_t>(count, COIOMMU_CLIENT_MAX_REGIONS + 1));
        for (size_t i = 0; i < count && i <= COIOMMU_CLIENT_MAX_REGIONS; ++i) {
            const coiommu_client_region& r = regions[i];
            if (r.flags != 0) return make_error(EINVAL, fmt::format("region {}: flags {:#x} (must be 0)", i, r.flags));
            layout.push_back(coiommu::RegionLayout{coiommu::Gpa{r.gpa}, r.size, r.fd, r.fd_offset});
        }
        if (count > layout.size()) {
            return make_error(EINVAL, fmt::format("{} regions (1..{})", count, COIOMMU_CLIENT_MAX_REGIONS));
        }
        return client->set_memory(std::span<const coiommu::RegionLayout>(layout));
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_topology(coiommu_client* c, uint32_t vcpus, const uint16_t* bdfs,
                                                   size_t count, int* notifymap_fd, int* topologymap_fd) {
    if (notifymap_fd != nullptr) *notifymap_fd = -1;
    if (topologymap_fd != nullptr) *topologymap_fd = -1;
    return call(c, "coiommu_client_set_topology", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(notifymap_fd != nullptr && topologymap_fd != nullptr, "notifymap_fd/topologymap_fd NULL"));
        COIOMMU_TRY(require(bdfs != nullptr || count == 0, "bdfs NULL"));
        COIOMMU_ASSIGN_OR_RETURN(auto fds, client->set_topology(vcpus, std::span<const uint16_t>(bdfs, count)));
        *notifymap_fd = fds.notifymap.release();
        *topologymap_fd = fds.topologymap.release();
        return coiommu::ok();  // a host record (kFeatureResume) closes with `fds`
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_topology_resumable(coiommu_client* c, uint32_t vcpus, const uint16_t* bdfs,
                                                             size_t count, int* notifymap_fd, int* topologymap_fd,
                                                             int* record_fd) {
    for (int* out : {notifymap_fd, topologymap_fd, record_fd}) {
        if (out != nullptr) *out = -1;
    }
    return call(c, "coiommu_client_set_topology_resumable", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(notifymap_fd != nullptr && topologymap_fd != nullptr && record_fd != nullptr,
                            "notifymap_fd/topologymap_fd/record_fd NULL"));
        COIOMMU_TRY(require(bdfs != nullptr || count == 0, "bdfs NULL"));
        COIOMMU_ASSIGN_OR_RETURN(auto fds, client->set_topology(vcpus, std::span<const uint16_t>(bdfs, count)));
        *notifymap_fd = fds.notifymap.release();
        *topologymap_fd = fds.topologymap.release();
        *record_fd = fds.record.release();  // -1 without kFeatureResume
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_backend_vfio(coiommu_client* c, int container_fd, uint64_t entry_limit,
                                                       coiommu_client_backend_info* info) {
    return call(c, "coiommu_client_set_backend_vfio", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_ASSIGN_OR_RETURN(auto container, dup_fd(container_fd, "VFIO container"));
        return fill_backend(client->set_backend_vfio(std::move(container), entry_limit), info);
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_backend_iommufd(coiommu_client* c, int iommufd, uint32_t ioas_id,
                                                          coiommu_client_backend_info* info) {
    return call(c, "coiommu_client_set_backend_iommufd", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_ASSIGN_OR_RETURN(auto fd, dup_fd(iommufd, "iommufd"));
        return fill_backend(client->set_backend_iommufd(std::move(fd), ioas_id), info);
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_backend_fake(coiommu_client* c, enum coiommu_client_fake_latency latency,
                                                       uint64_t entry_limit, coiommu_client_backend_info* info) {
    return call(c, "coiommu_client_set_backend_fake", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_ASSIGN_OR_RETURN(auto spec, fake_spec(latency));
        spec.entry_limit = entry_limit;
        return fill_backend(client->set_backend_fake(spec), info);
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_backend_null(coiommu_client* c, uint64_t entry_limit,
                                                       coiommu_client_backend_info* info) {
    return call(c, "coiommu_client_set_backend_null", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        return fill_backend(client->set_backend_null(entry_limit), info);
    });
}

COIOMMU_CLIENT_API int coiommu_client_set_backend_fake_shared(coiommu_client* c,
                                                              enum coiommu_client_fake_latency latency, int state_fd,
                                                              coiommu_client_backend_info* info) {
    return call(c, "coiommu_client_set_backend_fake_shared", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_ASSIGN_OR_RETURN(auto spec, fake_spec(latency));
        if (state_fd < 0) return make_error(EBADF, fmt::format("fake state: fd {}", state_fd));
        if ((client->hello_info().features & coiommu::daemon::proto::kFeatureResume) == 0) {
            return make_error(ENOTSUP, "a shared fake state needs COIOMMU_CLIENT_FEATURE_RESUME");
        }
        spec.shared_state = state_fd;
        return fill_backend(client->set_backend_fake(spec), info);
    });
}

COIOMMU_CLIENT_API int coiommu_client_fake_state_create(uint64_t entry_limit, int* state_fd) {
    if (state_fd == nullptr) return -EINVAL;
    *state_fd = -1;
    try {
        auto fd = coiommu::dma::FakeBackend::create_shared_state(entry_limit);
        if (!fd) return -(fd.error().code > 0 ? fd.error().code : EIO);
        *state_fd = fd->release();
        return 0;
    } catch (const std::bad_alloc&) {
        return -ENOMEM;
    } catch (...) {
        return -EIO;
    }
}

COIOMMU_CLIENT_API int coiommu_client_set_triggers(coiommu_client* c, const int* eventfds, size_t count,
                                                   bool* running) {
    return call(c, "coiommu_client_set_triggers", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(eventfds != nullptr && count > 0, "no trigger eventfds"));
        COIOMMU_ASSIGN_OR_RETURN(const bool r, client->set_triggers(std::span<const int>(eventfds, count)));
        if (running != nullptr) *running = r;
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_mmio_write(coiommu_client* c, uint64_t offset, const void* data, size_t len) {
    return call(c, "coiommu_client_mmio_write", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(data != nullptr, "data NULL"));
        const std::span<const std::byte> bytes(static_cast<const std::byte*>(data), len);
        std::optional<coiommu_client::UnansweredWrite> last = std::exchange(h.unanswered, std::nullopt);
        const bool resent = last && last->offset == offset && std::ranges::equal(last->data, bytes);
        const coiommu::daemon::RequestSeq seq = resent ? last->seq : client->reserve_seq();
        Status st = client->mmio_write(seq, offset, bytes);
        if (!st && coiommu::daemon::ResumingClient::connection_lost(st.error().code)) {
            h.unanswered =
                coiommu_client::UnansweredWrite{seq, offset, std::vector<std::byte>(bytes.begin(), bytes.end())};
        }
        return st;
    });
}

COIOMMU_CLIENT_API int coiommu_client_mmio_read(coiommu_client* c, uint64_t offset, void* data, size_t len) {
    return call(c, "coiommu_client_mmio_read", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(data != nullptr, "data NULL"));
        return client->mmio_read(offset, std::span<std::byte>(static_cast<std::byte*>(data), len));
    });
}

COIOMMU_CLIENT_API int coiommu_client_balloon_unpin(coiommu_client* c, const coiommu_client_gfn_range* ranges,
                                                    size_t count, enum coiommu_client_balloon_result* result) {
    return call(c, "coiommu_client_balloon_unpin", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(result != nullptr, "result NULL"));
        COIOMMU_TRY(require(ranges != nullptr || count == 0, "ranges NULL"));
        if (count > COIOMMU_CLIENT_MAX_BALLOON_RANGES) {
            return make_error(EINVAL, fmt::format("{} ranges (0..{})", count, COIOMMU_CLIENT_MAX_BALLOON_RANGES));
        }
        std::vector<coiommu::GfnRange> rs;
        rs.reserve(count);
        for (size_t i = 0; i < count; ++i) rs.push_back({coiommu::Gfn{ranges[i].start_gfn}, ranges[i].count});
        COIOMMU_ASSIGN_OR_RETURN(const auto r, client->balloon_unpin(rs));
        *result = r == coiommu::telemetry::BalloonResult::Success ? COIOMMU_CLIENT_BALLOON_SUCCESS
                                                                  : COIOMMU_CLIENT_BALLOON_FAILED;
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_get_stats(coiommu_client* c, coiommu_client_stats* stats, size_t size) {
    return call(c, "coiommu_client_get_stats", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(stats != nullptr, "stats NULL"));
        if (size < kStatsV1Size) {
            return make_error(EINVAL, fmt::format("stats size {} (at least {})", size, kStatsV1Size));
        }
        COIOMMU_ASSIGN_OR_RETURN(const auto remote, client->stats());
        const coiommu_client_stats s = to_c_stats(remote);
        auto* out = static_cast<unsigned char*>(static_cast<void*>(stats));
        std::memcpy(out, &s, std::min(size, sizeof s));
        if (size > sizeof s) std::memset(out + sizeof s, 0, size - sizeof s);
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_query_mapped(coiommu_client* c, uint64_t iova, uint64_t size, bool* mapped) {
    return call(c, "coiommu_client_query_mapped", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(mapped != nullptr, "mapped NULL"));
        COIOMMU_ASSIGN_OR_RETURN(*mapped, client->query_mapped(coiommu::Iova{iova}, size));
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_close(coiommu_client* c, coiommu_client_close_info* info) {
    return call(c, "coiommu_client_close", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        auto r = client->close();
        h.next_seq = client->next_seq();
        h.client.reset();  // the daemon closes the session after Close, whatever the answer
        if (!r) return coiommu::unexpected(r.error());
        if (info != nullptr) *info = coiommu_client_close_info{r->dma_entries_after, r->pages_unpinned};
        return coiommu::ok();
    });
}

COIOMMU_CLIENT_API int coiommu_client_reconnect(coiommu_client* c, const char* socket_path, uint32_t timeout_ms,
                                                coiommu_client_hello* hello) {
    return call(c, "coiommu_client_reconnect", [&](coiommu_client& h) -> Status {
        COIOMMU_TRY(require(socket_path != nullptr, "socket_path NULL"));
        COIOMMU_TRY(require(timeout_ms > 0, "timeout 0 ms"));
        if (!h.hello_asked) return make_error(EINVAL, "never connected (coiommu_client_connect first)");
        if (h.client) {
            h.next_seq = h.client->next_seq();
            h.client.reset();  // the dead connection; a live daemon sees end of stream
        }
        using Clock = std::chrono::steady_clock;
        const auto give_up_at = Clock::now() + std::chrono::milliseconds(timeout_ms);
        std::chrono::milliseconds delay{10};
        for (int attempt = 1;; ++attempt) {
            auto next = connect_again(h, socket_path, h.next_seq);
            if (next) {
                fill_hello((*next)->hello_info(), hello);
                h.client = std::move(*next);
                return coiommu::ok();
            }
            const auto now = Clock::now();
            if (!coiommu::daemon::ResumingClient::worth_retrying(next.error().code) || now >= give_up_at) {
                return coiommu::unexpected(
                    coiommu::with_context(next.error(), fmt::format("{} ({} attempts)", socket_path, attempt)));
            }
            std::this_thread::sleep_for(std::min<Clock::duration>(delay, give_up_at - now));
            delay = std::min(delay * 2, std::chrono::milliseconds(500));
        }
    });
}

COIOMMU_CLIENT_API int coiommu_client_resume(coiommu_client* c, uint32_t vcpus, const uint16_t* bdfs, size_t count,
                                             int notifymap_fd, int topologymap_fd, int record_fd,
                                             coiommu_client_resume_info* info) {
    return call(c, "coiommu_client_resume", [&](coiommu_client& h) -> Status {
        COIOMMU_ASSIGN_OR_RETURN(Client * client, connected(h));
        COIOMMU_TRY(require(bdfs != nullptr || count == 0, "bdfs NULL"));
        COIOMMU_ASSIGN_OR_RETURN(const auto r, client->resume(vcpus, std::span<const uint16_t>(bdfs, count),
                                                              notifymap_fd, topologymap_fd, record_fd));
        if (info != nullptr) {
            *info = coiommu_client_resume_info{};
            info->extents = r.extents;
            info->pages = r.pages;
            info->in_progress = r.in_progress;
            info->active = r.active ? 1 : 0;
        }
        return coiommu::ok();
    });
}

}  // extern "C"
