// A daemon killed with SIGKILL mid-session, and the VMM resuming the session with a new daemon:
// every page the guest was told is PINNED stays mapped, nothing is mapped twice, the engine
// serves again, and Close leaves 0 mappings. The fake backend's mapping set lives in a memfd the
// test (the VMM) owns, as a VFIO container outlives the daemon that mapped into it.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "engine/base/event_fd.h"
#include "engine/core/spec.h"
#include "engine/daemon/client.h"
#include "engine/daemon/resuming_client.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/host_record.h"
#include "engine/emulator/guest_driver.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"
#ifdef COIOMMUD_HAS_EXPORTER
#include "tests/unit/exporter/scrape_support.h"
#endif

namespace coiommu::daemon {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::TempDir;

constexpr uint16_t kBdf = 0x0008;
constexpr uint64_t kFeatures = proto::kAllFeatures | proto::kFeatureResume;

// `metrics`: the --metrics-address.
Result<DaemonProcess> start_daemon(const std::string& metrics = "none") {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommud-resume"));
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.socket = dir.path("coiommud.sock");
    o.args = {"--socket", o.socket, "--tracing", "off", "--log-level", "warn", "--metrics-address", metrics};
    return DaemonProcess::start(std::move(dir), std::move(o));
}

Status write_reg(Client& c, uint64_t off, uint64_t v) {
    std::byte b[8];
    std::memcpy(b, &v, 8);
    return c.mmio_write(off, b);
}

std::vector<Gfn> gfns(uint64_t first, uint64_t n) {
    std::vector<Gfn> out;
    for (uint64_t g = first; g < first + n; ++g) out.push_back(Gfn{g});
    return out;
}

TEST(Resume, ADaemonKilledMidSessionIsResumedWithEveryPinKeptAndNothingLeaked) {
    ASSERT_OK_AND_ASSIGN(auto guest, testing::DttBuilder::create({}));
    ASSERT_OK_AND_ASSIGN(auto state, dma::FakeBackend::create_shared_state(4096));
    ASSERT_OK_AND_ASSIGN(auto trigger, EventFd::create());
    const int trigger_fd = trigger.fd();

    ASSERT_OK_AND_ASSIGN(auto d1, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto c1, Client::connect(d1.socket(), "resume-vmm", kFeatures));
    ASSERT_NE(c1->hello_info().features & proto::kFeatureResume, 0u);
    ASSERT_OK(c1->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto dev, c1->set_topology(1, std::span<const uint16_t>(&kBdf, 1)));
    ASSERT_TRUE(dev.record) << "a resumable session hands its record to the VMM";
    ASSERT_OK(c1->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK_AND_ASSIGN(bool running, c1->set_triggers(std::span<const int>(&trigger_fd, 1)));
    ASSERT_TRUE(running);
    ASSERT_OK(write_reg(*c1, core::kRegDttRoot, raw(guest.root())));
    ASSERT_OK(write_reg(*c1, core::kRegDttLevel, guest.levels()));
    ASSERT_OK(write_reg(*c1, core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)));

    emulator::GuestDriverConfig gcfg;
    gcfg.mem = &guest.mem();
    gcfg.dtt = &guest.dtt();
    gcfg.notifymap_fd = dev.notifymap.get();
    gcfg.trigger_fds = {trigger_fd};
    ASSERT_OK_AND_ASSIGN(auto driver, emulator::GuestDriver::create(std::move(gcfg)));
    ASSERT_OK_AND_ASSIGN(auto vcpu, driver->vcpu({0, kBdf, Gpa{0x100000}, 64}));
    const auto pinned = gfns(0x200, 20);
    ASSERT_OK_AND_ASSIGN(auto rep, vcpu.map(pinned));
    ASSERT_EQ(rep.pages, 20u);
    for (Gfn g : pinned) ASSERT_TRUE(guest.pinned(g));

    // kill -9: nothing of the daemon's runs any more.
    ASSERT_OK(d1.signal(SIGKILL));
    ASSERT_TRUE(d1.wait_for_exit(std::chrono::seconds(5)));
    ASSERT_OK_AND_ASSIGN(auto before, dma::FakeBackend::read_shared_state(state.get()));
    uint64_t bytes_before = 0;
    for (const auto& m : before) bytes_before += m.size;
    EXPECT_EQ(bytes_before, 20 * kPageSize) << "the container outlived the daemon";

    // A new daemon; the VMM hands everything back.
    ASSERT_OK_AND_ASSIGN(auto d2, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto c2, Client::connect(d2.socket(), "resume-vmm", kFeatures));
    ASSERT_OK(c2->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto info, c2->resume(1, std::span<const uint16_t>(&kBdf, 1), dev.notifymap.get(),
                                               dev.topologymap.get(), dev.record.get()));
    EXPECT_TRUE(info.active);
    EXPECT_EQ(info.pages, 20u);
    EXPECT_EQ(info.in_progress, 0u);
    ASSERT_OK(c2->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK_AND_ASSIGN(running, c2->set_triggers(std::span<const int>(&trigger_fd, 1)));
    ASSERT_TRUE(running);

    // Nothing was unmapped or mapped twice, and the guest still sees every page PINNED.
    ASSERT_OK_AND_ASSIGN(auto after, dma::FakeBackend::read_shared_state(state.get()));
    ASSERT_EQ(after.size(), before.size());
    for (std::size_t i = 0; i < after.size(); ++i) {
        EXPECT_EQ(raw(after[i].iova), raw(before[i].iova));
        EXPECT_EQ(after[i].size, before[i].size);
    }
    for (Gfn g : pinned) EXPECT_TRUE(guest.pinned(g));
    ASSERT_OK_AND_ASSIGN(auto st, c2->stats());
    EXPECT_EQ(st.head.active, 1u);
    EXPECT_EQ(st.snapshot.gauges.pinned_pages, 20u);

    // The resumed engine serves new requests, and re-asking for an adopted page maps nothing.
    ASSERT_OK_AND_ASSIGN(rep, vcpu.map(gfns(0x400, 5)));
    EXPECT_EQ(rep.pages, 5u);
    ASSERT_OK_AND_ASSIGN(auto mapped, c2->query_mapped(Iova{0x400ull << kPageShift}, 5 * kPageSize));
    EXPECT_TRUE(mapped);

    // Close unmaps the adopted extents with the new ones.
    ASSERT_OK_AND_ASSIGN(auto closed, c2->close());
    EXPECT_EQ(closed.dma_entries_after, 0u);
    EXPECT_EQ(closed.pages_unpinned, 25u);
    ASSERT_OK_AND_ASSIGN(auto left, dma::FakeBackend::read_shared_state(state.get()));
    EXPECT_TRUE(left.empty());
}

TEST(Resume, SigtermLeavesAResumableSessionsMappingsForTheNextDaemon) {
    ASSERT_OK_AND_ASSIGN(auto guest, testing::DttBuilder::create({}));
    ASSERT_OK_AND_ASSIGN(auto state, dma::FakeBackend::create_shared_state(4096));
    ASSERT_OK_AND_ASSIGN(auto trigger, EventFd::create());
    const int trigger_fd = trigger.fd();
    ASSERT_OK_AND_ASSIGN(auto d1, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto c1, Client::connect(d1.socket(), "restart-vmm", kFeatures));
    ASSERT_OK(c1->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto dev, c1->set_topology(1, std::span<const uint16_t>(&kBdf, 1)));
    ASSERT_OK(c1->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK(c1->set_triggers(std::span<const int>(&trigger_fd, 1)));
    ASSERT_OK(write_reg(*c1, core::kRegDttRoot, raw(guest.root())));
    ASSERT_OK(write_reg(*c1, core::kRegDttLevel, guest.levels()));
    ASSERT_OK(write_reg(*c1, core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)));
    emulator::GuestDriverConfig gcfg;
    gcfg.mem = &guest.mem();
    gcfg.dtt = &guest.dtt();
    gcfg.notifymap_fd = dev.notifymap.get();
    gcfg.trigger_fds = {trigger_fd};
    ASSERT_OK_AND_ASSIGN(auto driver, emulator::GuestDriver::create(std::move(gcfg)));
    ASSERT_OK_AND_ASSIGN(auto vcpu, driver->vcpu({0, kBdf, Gpa{0x100000}, 64}));
    ASSERT_OK(vcpu.map(gfns(0x300, 8)));

    // A systemd restart: SIGTERM, exit 0, and the container keeps the 8 pages.
    EXPECT_EQ(d1.terminate(), 0);
    ASSERT_OK_AND_ASSIGN(auto left, dma::FakeBackend::read_shared_state(state.get()));
    uint64_t bytes = 0;
    for (const auto& m : left) bytes += m.size;
    EXPECT_EQ(bytes, 8 * kPageSize);

#ifdef COIOMMUD_HAS_EXPORTER
    ASSERT_OK_AND_ASSIGN(const uint16_t port, exporter::testing::free_loopback_port());
    ASSERT_OK_AND_ASSIGN(auto d2, start_daemon("127.0.0.1:" + std::to_string(port)));
#else
    ASSERT_OK_AND_ASSIGN(auto d2, start_daemon());
#endif
    ASSERT_OK_AND_ASSIGN(auto c2, Client::connect(d2.socket(), "restart-vmm", kFeatures));
    ASSERT_OK(c2->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto info, c2->resume(1, std::span<const uint16_t>(&kBdf, 1), dev.notifymap.get(),
                                               dev.topologymap.get(), dev.record.get()));
    EXPECT_EQ(info.pages, 8u);
    ASSERT_OK(c2->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK(c2->set_triggers(std::span<const int>(&trigger_fd, 1)));
#ifdef COIOMMUD_HAS_EXPORTER
    // The operator sees the restart the VM survived: one session accepted, and it was a resume.
    double resumed = -1;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (resumed != 1 && std::chrono::steady_clock::now() < until) {
        auto resp = exporter::testing::http_get("127.0.0.1", port, "/metrics");
        auto e = resp ? exporter::testing::parse_exposition(resp->body) : Result<exporter::testing::Exposition>{};
        if (e) resumed = e->value("coiommu_sessions_resumed_total");
        if (resumed != 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(resumed, 1.0);
#endif
    ASSERT_OK_AND_ASSIGN(auto closed, c2->close());
    EXPECT_EQ(closed.pages_unpinned, 8u);
    ASSERT_OK_AND_ASSIGN(left, dma::FakeBackend::read_shared_state(state.get()));
    EXPECT_TRUE(left.empty());
}

TEST(Resume, ARecordOfAnotherGuestIsRefused) {
    ASSERT_OK_AND_ASSIGN(auto guest, testing::DttBuilder::create({}));
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto c1, Client::connect(d.socket(), "a", kFeatures));
    ASSERT_OK(c1->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto dev, c1->set_topology(1, std::span<const uint16_t>(&kBdf, 1)));
    ASSERT_OK_AND_ASSIGN(auto other, dma::HostRecord::create(guest.mem().gfn_span() * 2));
    ASSERT_OK_AND_ASSIGN(auto c2, Client::connect(d.socket(), "b", kFeatures));
    ASSERT_OK(c2->set_memory(guest.mem()));
    auto r = c2->resume(1, std::span<const uint16_t>(&kBdf, 1), dev.notifymap.get(), dev.topologymap.get(), other.fd());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
}

// ---- the client library's reconnect (ResumingClient) -------------------------------------------

// A daemon on `socket`, a path that outlives it (each restart binds it again).
Result<DaemonProcess> start_daemon_at(const std::string& socket) {
    return testing::start_daemon_at(COIOMMUD_PATH, socket,
                                    {"--tracing", "off", "--log-level", "warn", "--metrics-address", "none"},
                                    "coiommud-resume");
}

// One VM with one vCPU, its fake container in a memfd it owns, set up through a ResumingClient.
struct ResumableVm {
    testing::DttBuilder guest;
    UniqueFd state;
    EventFd trigger;
    std::unique_ptr<ResumingClient> client;

    static Result<ResumableVm> start(const std::string& socket, ReconnectPolicy policy) {
        COIOMMU_ASSIGN_OR_RETURN(auto guest, testing::DttBuilder::create({}));
        COIOMMU_ASSIGN_OR_RETURN(auto state, dma::FakeBackend::create_shared_state(4096));
        COIOMMU_ASSIGN_OR_RETURN(auto trigger, EventFd::create());
        SessionSpec spec;
        spec.socket_path = socket;
        spec.name = "resuming-vmm";
        spec.regions = guest.mem().layout();
        spec.vcpus = 1;
        spec.endpoints = {kBdf};
        spec.backend.kind = proto::BackendKind::Fake;
        spec.backend.fake = FakeBackendSpec{proto::FakeLatency::None, 0, state.get()};
        spec.triggers = {trigger.fd()};
        COIOMMU_ASSIGN_OR_RETURN(auto client, ResumingClient::start(std::move(spec), std::move(policy)));
        return ResumableVm{std::move(guest), std::move(state), std::move(trigger), std::move(client)};
    }
    Status write_reg(uint64_t off, uint64_t v) {
        std::byte b[8];
        std::memcpy(b, &v, 8);
        return client->mmio_write(off, b);
    }
    Status activate() {
        COIOMMU_TRY(write_reg(core::kRegDttRoot, raw(guest.root())));
        COIOMMU_TRY(write_reg(core::kRegDttLevel, guest.levels()));
        return write_reg(core::kRegCmd, static_cast<uint64_t>(core::Command::Activate));
    }
};

TEST(ResumingClient, ARequestMadeWhileTheDaemonIsDownIsServedByTheNextOne) {
    ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommud-resume"));
    const std::string socket = dir.path("coiommud.sock");
    std::optional<DaemonProcess> d;
    {
        ASSERT_OK_AND_ASSIGN(auto d1, start_daemon_at(socket));
        d.emplace(std::move(d1));
    }
    uint64_t resumed_pages = 0;
    ReconnectPolicy policy;
    policy.on_resumed = [&](const ResumeInfo& i) { resumed_pages = i.pages; };
    ASSERT_OK_AND_ASSIGN(auto vm, ResumableVm::start(socket, policy));
    ASSERT_OK(vm.activate());
    emulator::GuestDriverConfig gcfg;
    gcfg.mem = &vm.guest.mem();
    gcfg.dtt = &vm.guest.dtt();
    gcfg.notifymap_fd = vm.client->device().notifymap.get();
    gcfg.trigger_fds = {vm.trigger.fd()};
    ASSERT_OK_AND_ASSIGN(auto driver, emulator::GuestDriver::create(std::move(gcfg)));
    ASSERT_OK_AND_ASSIGN(auto vcpu, driver->vcpu({0, kBdf, Gpa{0x100000}, 64}));
    ASSERT_OK(vcpu.map(gfns(0x200, 6)));

    ASSERT_OK(d->signal(SIGKILL));
    ASSERT_TRUE(d->wait_for_exit(std::chrono::seconds(5)));
    d.reset();
    // The next daemon comes up only after the VMM has asked: the request waits for it. (This
    // thread starts it: a DaemonProcess belongs to the thread that forked it.)
    std::optional<Result<bool>> mapped;
    std::thread vmm([&] { mapped = vm.client->query_mapped(Iova{0x200ull << kPageShift}, 6 * kPageSize); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto d2 = start_daemon_at(socket);
    vmm.join();
    ASSERT_OK(d2);
    ASSERT_TRUE(mapped.has_value());
    ASSERT_OK(*mapped);
    EXPECT_TRUE(**mapped) << "the pages the guest holds stayed mapped";
    EXPECT_EQ(vm.client->resumes(), 1u);
    EXPECT_EQ(resumed_pages, 6u);
    // The vCPU is served by the new daemon through the same notifymap and trigger.
    ASSERT_OK_AND_ASSIGN(auto rep, vcpu.map(gfns(0x400, 3)));
    EXPECT_EQ(rep.pages, 3u);
    ASSERT_OK_AND_ASSIGN(auto closed, vm.client->close());
    EXPECT_EQ(closed.dma_entries_after, 0u);
    EXPECT_EQ(closed.pages_unpinned, 9u);
}

TEST(ResumingClient, WithoutReconnectALostDaemonFailsThatRequestAndEveryLaterOne) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    ReconnectPolicy policy;
    policy.reconnect = Reconnect::Off;
    ASSERT_OK_AND_ASSIGN(auto vm, ResumableVm::start(d.socket(), policy));
    ASSERT_OK(vm.activate());
    ASSERT_OK(d.signal(SIGKILL));
    ASSERT_TRUE(d.wait_for_exit(std::chrono::seconds(5)));
    auto first = vm.client->stats();
    ASSERT_FALSE(first);
    EXPECT_TRUE(ResumingClient::connection_lost(first.error().code)) << first.error().message();
    EXPECT_NE(first.error().message().find("went away"), std::string::npos) << first.error().message();
    auto later = vm.client->stats();
    ASSERT_FALSE(later);
    EXPECT_EQ(later.error().code, first.error().code);
    EXPECT_TRUE(vm.client->ended());
    EXPECT_EQ(vm.client->resumes(), 0u);
}

TEST(ResumingClient, ADaemonThatStaysAwayEndsTheSessionAfterTheTimeoutWithTheLastErrno) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    ReconnectPolicy policy;
    policy.give_up_after = std::chrono::milliseconds(300);
    int losses = 0;
    policy.on_lost = [&](const Error&) { ++losses; };
    ASSERT_OK_AND_ASSIGN(auto vm, ResumableVm::start(d.socket(), policy));
    ASSERT_OK(d.signal(SIGKILL));
    ASSERT_TRUE(d.wait_for_exit(std::chrono::seconds(5)));
    const auto t0 = std::chrono::steady_clock::now();
    auto r = vm.client->stats();
    const auto waited = std::chrono::steady_clock::now() - t0;
    ASSERT_FALSE(r);
    // The killed daemon's socket file is still there, with nobody listening.
    EXPECT_EQ(r.error().code, ECONNREFUSED) << r.error().message();
    EXPECT_NE(r.error().message().find("resuming"), std::string::npos) << r.error().message();
    EXPECT_GE(waited, std::chrono::milliseconds(250));
    EXPECT_EQ(losses, 1);
    EXPECT_TRUE(vm.client->ended());
}

// A VMM re-sends a request whose reply it never saw. A register write keeps its seq, and the
// daemon that applied it before dying recorded that seq: the resumed one does not apply it again.
TEST(Resume, ARegisterWriteResentWithItsSeqIsAppliedOnce) {
    ASSERT_OK_AND_ASSIGN(auto guest, testing::DttBuilder::create({}));
    ASSERT_OK_AND_ASSIGN(auto state, dma::FakeBackend::create_shared_state(4096));
    ASSERT_OK_AND_ASSIGN(auto trigger, EventFd::create());
    const int trigger_fd = trigger.fd();
    ASSERT_OK_AND_ASSIGN(auto d1, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto c1, Client::connect(d1.socket(), "resend-vmm", kFeatures));
    ASSERT_OK(c1->set_memory(guest.mem()));
    ASSERT_OK_AND_ASSIGN(auto dev, c1->set_topology(1, std::span<const uint16_t>(&kBdf, 1)));
    ASSERT_OK(c1->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK(c1->set_triggers(std::span<const int>(&trigger_fd, 1)));
    ASSERT_OK(write_reg(*c1, core::kRegDttRoot, raw(guest.root())));
    ASSERT_OK(write_reg(*c1, core::kRegDttLevel, guest.levels()));
    ASSERT_OK(write_reg(*c1, core::kRegCmd, static_cast<uint64_t>(core::Command::Activate)));
    uint64_t park = static_cast<uint64_t>(core::Command::ParkUnpin);
    std::byte park_bytes[8];
    std::memcpy(park_bytes, &park, 8);
    const RequestSeq parked = c1->reserve_seq();
    ASSERT_OK(c1->mmio_write(parked, core::kRegCmd, park_bytes));
    UniqueFd rec_fd(::fcntl(dev.record.get(), F_DUPFD_CLOEXEC, 0));
    ASSERT_OK_AND_ASSIGN(auto record, dma::HostRecord::adopt(std::move(rec_fd), guest.mem().gfn_span()));
    ASSERT_EQ(record.device().park_count, 1u);

    ASSERT_OK(d1.signal(SIGKILL));
    ASSERT_TRUE(d1.wait_for_exit(std::chrono::seconds(5)));
    ASSERT_OK_AND_ASSIGN(auto d2, start_daemon());
    ASSERT_OK_AND_ASSIGN(auto sock, connect_seqpacket(d2.socket()));
    auto c2 = Client::adopt(std::move(sock));
    c2->set_next_seq(c1->next_seq());
    ASSERT_OK(c2->hello("resend-vmm", kFeatures));
    ASSERT_OK(c2->set_memory(guest.mem()));
    ASSERT_OK(c2->resume(1, std::span<const uint16_t>(&kBdf, 1), dev.notifymap.get(), dev.topologymap.get(),
                         dev.record.get()));
    ASSERT_OK(c2->set_backend_fake({proto::FakeLatency::None, 0, state.get()}));
    ASSERT_OK(c2->set_triggers(std::span<const int>(&trigger_fd, 1)));
    ASSERT_OK(c2->mmio_write(parked, core::kRegCmd, park_bytes));  // the re-sent one
    EXPECT_EQ(record.device().park_count, 1u) << "a re-sent PARK_UNPIN counted twice";
    ASSERT_OK(c2->mmio_write(core::kRegCmd, park_bytes));  // a new one
    EXPECT_EQ(record.device().park_count, 2u);
    ASSERT_OK(c2->close());
}

}  // namespace
}  // namespace coiommu::daemon
