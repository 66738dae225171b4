// libcoiommu-client's C ABI (coiommu/client.h) against the real coiommud binary on a private socket:
// errno-style returns and last_error texts, the negotiated Hello, the daemon's errno for a message out
// of order, stats after ACTIVATE, Close with no DMA entry left, NULL arguments. Only the C API is
// used: this file links the shared library, not the C++ client behind it (the daemon harness brings
// engine/base only).
#include <coiommu/client.h>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"

namespace {

using coiommu::testing::DaemonOptions;
using coiommu::testing::DaemonProcess;
using coiommu::testing::TempDir;

constexpr uint64_t kRamBytes = uint64_t{64} << 20;
constexpr uint16_t kBdf = 0x0008;

// coiommud with the fake and null backends on a socket in a fresh temporary directory.
coiommu::Result<DaemonProcess> start_daemon() {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommu-c-client"));
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.socket = dir.path("coiommud.sock");
    o.args = {"--socket",  o.socket, "--metrics-address", "none", "--backends", "fake,null",
              "--tracing", "off",    "--log-level",       "warn"};
    return DaemonProcess::start(std::move(dir), std::move(o));
}

// The VMM's resources for one session: guest RAM, the device fds, trigger eventfds. Closed at the end.
struct Vmm {
    coiommu_client* c = nullptr;
    int ram_fd = -1;
    int notifymap_fd = -1;
    int topologymap_fd = -1;
    std::vector<int> triggers;

    Vmm() { EXPECT_EQ(coiommu_client_new(&c), 0); }
    ~Vmm() {
        coiommu_client_free(c);
        for (int fd : triggers) ::close(fd);
        for (int fd : {ram_fd, notifymap_fd, topologymap_fd}) {
            if (fd >= 0) ::close(fd);
        }
    }
    Vmm(const Vmm&) = delete;
    Vmm& operator=(const Vmm&) = delete;

    [[nodiscard]] std::string error() const { return coiommu_client_last_error(c); }

    // Hello .. SetTriggers with a fake backend. Returns false (with a gtest failure) at the first error.
    bool setup(const std::string& socket, uint32_t vcpus = 1) {
        if (int rc = coiommu_client_connect(c, socket.c_str(), "c-client-test", COIOMMU_CLIENT_FEATURES_ALL, nullptr);
            rc != 0) {
            ADD_FAILURE() << "connect: " << rc << " " << error();
            return false;
        }
        ram_fd = ::memfd_create("c-client-test-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (ram_fd < 0 || ::ftruncate(ram_fd, static_cast<off_t>(kRamBytes)) != 0 ||
            ::fcntl(ram_fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
            ADD_FAILURE() << "guest RAM memfd: " << std::strerror(errno);
            return false;
        }
        const coiommu_client_region region{ram_fd, 0, 0, kRamBytes, 0};
        const uint16_t bdf = kBdf;
        for (int rc : {coiommu_client_set_memory(c, &region, 1),
                       coiommu_client_set_topology(c, vcpus, &bdf, 1, &notifymap_fd, &topologymap_fd),
                       coiommu_client_set_backend_fake(c, COIOMMU_CLIENT_FAKE_LATENCY_NONE, 0, nullptr)}) {
            if (rc != 0) {
                ADD_FAILURE() << "setup: " << rc << " " << error();
                return false;
            }
        }
        for (uint32_t i = 0; i < vcpus; ++i) triggers.push_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        bool running = false;
        if (int rc = coiommu_client_set_triggers(c, triggers.data(), triggers.size(), &running); rc != 0 || !running) {
            ADD_FAILURE() << "set_triggers: " << rc << " running " << running << " " << error();
            return false;
        }
        return true;
    }

    // The guest driver's BAR0 programming (a one-level DTT whose root page is at 1 MiB) and ACTIVATE.
    bool activate() {
        for (auto [off, value] : {std::pair<uint64_t, uint64_t>{COIOMMU_CLIENT_REG_DTT_ROOT, 0x100000},
                                  {COIOMMU_CLIENT_REG_DTT_LEVEL, 1},
                                  {COIOMMU_CLIENT_REG_CMD, COIOMMU_CLIENT_CMD_ACTIVATE}}) {
            if (int rc = coiommu_client_mmio_write(c, off, &value, sizeof value); rc != 0) {
                ADD_FAILURE() << "mmio_write " << off << ": " << rc << " " << error();
                return false;
            }
        }
        return true;
    }
};

TEST(CClient, ConnectToAMissingSocketReturnsENOENTAndNamesThePath) {
    Vmm v;
    const std::string path = "/tmp/coiommu-c-client-no-such-dir/coiommud.sock";
    EXPECT_EQ(coiommu_client_connect(v.c, path.c_str(), "t", COIOMMU_CLIENT_FEATURES_ALL, nullptr), -ENOENT);
    EXPECT_NE(v.error().find(path), std::string::npos) << v.error();
    EXPECT_NE(v.error().find("coiommu_client_connect"), std::string::npos) << v.error();
}

TEST(CClient, FullSessionReportsTheNegotiatedVersion) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    coiommu_client_hello hello{};
    ASSERT_EQ(coiommu_client_connect(v.c, d.socket().c_str(), "c-client-test", COIOMMU_CLIENT_FEATURES_ALL, &hello), 0)
        << v.error();
    EXPECT_EQ(hello.version, COIOMMU_CLIENT_PROTOCOL_VERSION);
    EXPECT_GT(hello.session_id, 0u);
    EXPECT_GT(hello.max_message_size, 0u);
    // --backends fake,null: the daemon does not offer VFIO.
    EXPECT_EQ(hello.features & COIOMMU_CLIENT_FEATURE_VFIO_BACKEND, 0u);
    EXPECT_NE(hello.features & COIOMMU_CLIENT_FEATURE_FAKE_BACKEND, 0u);
    EXPECT_EQ(std::string(coiommu_client_last_error(v.c)), "");
    EXPECT_EQ(coiommu_client_close(v.c, nullptr), 0) << v.error();
}

TEST(CClient, SetBackendBeforeSetMemoryReturnsTheDaemonsErrno) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_EQ(coiommu_client_connect(v.c, d.socket().c_str(), "out-of-order", COIOMMU_CLIENT_FEATURES_ALL, nullptr), 0);
    coiommu_client_backend_info info{};
    EXPECT_EQ(coiommu_client_set_backend_fake(v.c, COIOMMU_CLIENT_FAKE_LATENCY_NONE, 0, &info), -EPROTO);
    EXPECT_NE(v.error().find("coiommud"), std::string::npos) << v.error();
}

TEST(CClient, UnsealedMemfdIsRefusedWithEINVAL) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_EQ(coiommu_client_connect(v.c, d.socket().c_str(), "unsealed", COIOMMU_CLIENT_FEATURES_ALL, nullptr), 0);
    v.ram_fd = ::memfd_create("unsealed", MFD_CLOEXEC);
    ASSERT_EQ(::ftruncate(v.ram_fd, static_cast<off_t>(kRamBytes)), 0);
    const coiommu_client_region region{v.ram_fd, 0, 0, kRamBytes, 0};
    EXPECT_EQ(coiommu_client_set_memory(v.c, &region, 1), -EINVAL);
    EXPECT_NE(v.error().find("F_SEAL_SHRINK"), std::string::npos) << v.error();
}

TEST(CClient, StatsAfterActivationSayActive) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_TRUE(v.setup(d.socket(), 2));
    ASSERT_TRUE(v.activate());
    coiommu_client_stats s{};
    ASSERT_EQ(coiommu_client_get_stats(v.c, &s, sizeof s), 0) << v.error();
    EXPECT_EQ(s.active, 1u);
    EXPECT_EQ(s.activate_refused, 0u);
    EXPECT_EQ(s.vcpus, 2u);
    EXPECT_EQ(s.guest_ram_bytes, kRamBytes);
    EXPECT_EQ(s.dma_entry_limit, 65535u);  // the fake backend's default
    uint64_t root = 0;
    ASSERT_EQ(coiommu_client_mmio_read(v.c, COIOMMU_CLIENT_REG_DTT_ROOT, &root, sizeof root), 0) << v.error();
    EXPECT_EQ(root, 0x100000u);
}

TEST(CClient, StatsFromALargerCallerStructAreZeroFilledAndASmallerOneIsRefused) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_TRUE(v.setup(d.socket()));
    struct {
        coiommu_client_stats s;
        uint64_t newer_field;  // a caller built against a later header
    } big;
    std::memset(&big, 0xff, sizeof big);
    ASSERT_EQ(coiommu_client_get_stats(v.c, &big.s, sizeof big), 0) << v.error();
    EXPECT_EQ(big.newer_field, 0u);
    EXPECT_EQ(big.s.active, 0u);
    coiommu_client_stats small{};
    EXPECT_EQ(coiommu_client_get_stats(v.c, &small, sizeof small - 8), -EINVAL);
}

TEST(CClient, CloseReportsNoDmaEntriesAfter) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_TRUE(v.setup(d.socket()));
    ASSERT_TRUE(v.activate());
    coiommu_client_close_info info{1, 1};
    ASSERT_EQ(coiommu_client_close(v.c, &info), 0) << v.error();
    EXPECT_EQ(info.dma_entries_after, 0u);
    EXPECT_EQ(info.pages_unpinned, 0u);
    // The handle is unconnected now.
    coiommu_client_stats s{};
    EXPECT_EQ(coiommu_client_get_stats(v.c, &s, sizeof s), -ENOTCONN);
}

TEST(CClient, BalloonBeforeActivateIsEAGAINAndTheSessionGoesOn) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_TRUE(v.setup(d.socket()));
    const coiommu_client_gfn_range r{0x800, 4};
    coiommu_client_balloon_result result = COIOMMU_CLIENT_BALLOON_SUCCESS;
    EXPECT_EQ(coiommu_client_balloon_unpin(v.c, &r, 1, &result), -EAGAIN) << v.error();
    ASSERT_TRUE(v.activate());
    ASSERT_EQ(coiommu_client_balloon_unpin(v.c, &r, 1, &result), 0) << v.error();
    EXPECT_EQ(result, COIOMMU_CLIENT_BALLOON_SUCCESS);  // nothing was pinned
}

TEST(CClient, MmioOutsideBar0IsEINVALAndTheSessionGoesOn) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    Vmm v;
    ASSERT_TRUE(v.setup(d.socket()));
    uint64_t value = 0;
    EXPECT_EQ(coiommu_client_mmio_read(v.c, COIOMMU_CLIENT_BAR_SIZE, &value, sizeof value), -EINVAL);
    EXPECT_EQ(coiommu_client_mmio_read(v.c, COIOMMU_CLIENT_REG_CMD, &value, 9), -EINVAL);  // refused locally
    EXPECT_EQ(coiommu_client_mmio_read(v.c, COIOMMU_CLIENT_REG_CMD, &value, sizeof value), 0) << v.error();
}

TEST(CClient, ConnectFdSaysHelloOverAnAlreadyConnectedSocket) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon());
    const int sock = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ASSERT_GE(sock, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, d.socket().c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::connect(sock, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
    Vmm v;
    coiommu_client_hello hello{};
    ASSERT_EQ(coiommu_client_connect_fd(v.c, sock, "sandboxed", COIOMMU_CLIENT_FEATURES_ALL, &hello), 0) << v.error();
    ::close(sock);  // borrowed: the handle has its own
    EXPECT_EQ(hello.version, COIOMMU_CLIENT_PROTOCOL_VERSION);
    EXPECT_EQ(coiommu_client_connect_fd(v.c, sock, "again", COIOMMU_CLIENT_FEATURES_ALL, nullptr), -EISCONN);
    EXPECT_EQ(coiommu_client_close(v.c, nullptr), 0) << v.error();
}

TEST(CClient, CallsBeforeConnectReturnENOTCONN) {
    Vmm v;
    uint64_t value = 0;
    EXPECT_EQ(coiommu_client_mmio_read(v.c, 0, &value, sizeof value), -ENOTCONN);
    EXPECT_NE(v.error().find("not connected"), std::string::npos) << v.error();
    EXPECT_EQ(coiommu_client_close(v.c, nullptr), -ENOTCONN);
}

TEST(CClient, NullHandleArgumentsReturnEINVAL) {
    coiommu_client_stats s{};
    uint64_t value = 0;
    bool flag = false;
    int fd1 = 0, fd2 = 0;
    EXPECT_EQ(coiommu_client_new(nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_connect(nullptr, "/nonexistent", "t", 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_connect_fd(nullptr, 0, "t", 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_set_timeout(nullptr, 100), -EINVAL);
    EXPECT_EQ(coiommu_client_set_memory(nullptr, nullptr, 0), -EINVAL);
    EXPECT_EQ(coiommu_client_set_topology(nullptr, 1, nullptr, 0, &fd1, &fd2), -EINVAL);
    EXPECT_EQ(fd1, -1);
    EXPECT_EQ(fd2, -1);
    EXPECT_EQ(coiommu_client_set_backend_vfio(nullptr, 0, 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_set_backend_fake(nullptr, COIOMMU_CLIENT_FAKE_LATENCY_NONE, 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_set_backend_null(nullptr, 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_set_triggers(nullptr, nullptr, 0, &flag), -EINVAL);
    EXPECT_EQ(coiommu_client_mmio_write(nullptr, 0, &value, sizeof value), -EINVAL);
    EXPECT_EQ(coiommu_client_mmio_read(nullptr, 0, &value, sizeof value), -EINVAL);
    EXPECT_EQ(coiommu_client_balloon_unpin(nullptr, nullptr, 0, nullptr), -EINVAL);
    EXPECT_EQ(coiommu_client_get_stats(nullptr, &s, sizeof s), -EINVAL);
    EXPECT_EQ(coiommu_client_query_mapped(nullptr, 0, 4096, &flag), -EINVAL);
    EXPECT_EQ(coiommu_client_close(nullptr, nullptr), -EINVAL);
    EXPECT_NE(std::string(coiommu_client_last_error(nullptr)), "");
    coiommu_client_free(nullptr);
}

TEST(CClient, NullRequiredPointersOnAHandleReturnEINVALWithAText) {
    Vmm v;
    EXPECT_EQ(coiommu_client_connect(v.c, nullptr, "t", 0, nullptr), -EINVAL);
    EXPECT_NE(v.error().find("socket_path"), std::string::npos) << v.error();
    EXPECT_EQ(coiommu_client_set_timeout(v.c, 0), -EINVAL);
}

TEST(CClient, VersionIsTheHeaders) {
    EXPECT_EQ(coiommu_client_version(), static_cast<uint32_t>(COIOMMU_CLIENT_VERSION));
    EXPECT_EQ(coiommu_client_version() >> 16, static_cast<uint32_t>(COIOMMU_CLIENT_VERSION_MAJOR));
}

}  // namespace
