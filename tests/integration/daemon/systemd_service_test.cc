// coiommud as systemd runs it, with systemd's side played by the test: a socket passed through
// $LISTEN_FDS (coiommud.socket), readiness and reload messages on $NOTIFY_SOCKET (Type=notify),
// and SIGHUP re-reading the configuration file while a session stays up.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>

#include "engine/base/unique_fd.h"
#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::Readiness;
using testing::TempDir;

sockaddr_un unix_addr(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    return a;
}

UniqueFd bound_socket(int type, const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    const sockaddr_un a = unix_addr(path);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
    return fd;
}

constexpr std::string_view kConfig = "log_level = info\nmax_sessions = 8\n";

void write_config(const std::string& path, std::string_view text) { std::ofstream(path) << text; }

// A private directory holding coiommud.conf.
Result<TempDir> service_dir() {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommud-sd"));
    write_config(dir.path("coiommud.conf"), kConfig);
    return dir;
}

// coiommud as systemd starts it: --config from `dir`, its own socket `own_socket` (which an
// inherited listener overrides), no tracing, no exporter.
DaemonOptions service_options(const TempDir& dir, const std::string& own_socket, Readiness readiness) {
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.args = {"--config", dir.path("coiommud.conf"), "--socket", own_socket, "--tracing",
              "off",      "--metrics-address",       "none"};
    o.readiness = readiness;
    return o;
}

// Started as a Type=notify service: start() returned on READY=1.
Result<DaemonProcess> start_notify_service(const std::string& socket_name) {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, service_dir());
    DaemonOptions o = service_options(dir, dir.path(socket_name), Readiness::NotifyReady);
    return DaemonProcess::start(std::move(dir), std::move(o));
}

TEST(CoiommudService, SocketActivatedDaemonServesTheInheritedSocket) {
    ASSERT_OK_AND_ASSIGN(auto dir, service_dir());
    const std::string sock = dir.path("activated.sock");
    UniqueFd listener = bound_socket(SOCK_SEQPACKET, sock);
    ASSERT_EQ(::listen(listener.get(), 16), 0);
    // --socket names a path nobody binds: the daemon must use the inherited one instead.
    DaemonOptions o = service_options(dir, dir.path("unused.sock"), Readiness::Exec);
    o.listen_fd = listener.get();
    ASSERT_OK_AND_ASSIGN(auto d, DaemonProcess::start(std::move(dir), std::move(o)));

    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "sd-vmm"));
    EXPECT_GT(client->hello_info().session_id, 0u);
    EXPECT_FALSE(std::filesystem::exists(d.path("unused.sock")));
    client.reset();
    EXPECT_EQ(d.terminate(), 0);
    // The socket file belongs to systemd (RemoveOnStop=): the daemon leaves it in place.
    EXPECT_TRUE(std::filesystem::exists(sock));
}

TEST(CoiommudService, ReadyIsSentOnlyOnceTheSocketAcceptsSessions) {
    ASSERT_OK_AND_ASSIGN(auto d, start_notify_service("own.sock"));
    const std::string sock = d.path("own.sock");

    const std::string& ready = d.ready_message();
    ASSERT_NE(ready.find("READY=1"), std::string::npos) << ready;
    EXPECT_NE(ready.find("STATUS=serving VMMs on " + sock), std::string::npos) << ready;
    // At the instant READY arrived, a VMM can already start a session.
    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "right-after-ready"));
    client.reset();
    EXPECT_EQ(d.terminate(), 0);
    EXPECT_NE(d.next_notify().find("STOPPING=1"), std::string::npos);
}

TEST(CoiommudService, SighupReloadsTheLogLevelAndNamesKeysThatNeedARestart) {
    ASSERT_OK_AND_ASSIGN(auto d, start_notify_service("own.sock"));
    const std::string sock = d.path("own.sock");
    EmulatedVmOptions v;
    v.socket_path = sock;
    v.name = "survives-reload";
    v.vcpus = 1;
    v.ram_bytes = uint64_t{64} << 20;
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(v));

    write_config(d.path("coiommud.conf"), "log_level = info\nmax_sessions = 3\nio_timeout = 7s\n");
    ASSERT_OK(d.signal(SIGHUP));
    EXPECT_NE(d.next_notify().find("RELOADING=1"), std::string::npos);
    EXPECT_NE(d.next_notify().find("READY=1"), std::string::npos);

    // The session running before the reload is still served, and still pins.
    std::this_thread::sleep_for(milliseconds(200));
    vm->stop();
    ASSERT_OK_AND_ASSIGN(auto stats, vm->client().stats());
    EXPECT_GT(stats.snapshot.totals.pages_pinned, 0u);
    EXPECT_EQ(vm->counters().map_failures, 0u);
    ASSERT_OK_AND_ASSIGN(auto closed, vm->close());
    EXPECT_EQ(closed.dma_entries_after, 0u);
    EXPECT_EQ(d.terminate(), 0);
    EXPECT_NE(d.stderr_text().find("take effect only after a restart: max_sessions, io_timeout"), std::string::npos)
        << d.stderr_text();
}

TEST(CoiommudService, SighupWithABrokenConfigKeepsTheRunningOne) {
    ASSERT_OK_AND_ASSIGN(auto d, start_notify_service("own.sock"));
    const std::string sock = d.path("own.sock");

    write_config(d.path("coiommud.conf"), "no_such_key = 1\n");
    ASSERT_OK(d.signal(SIGHUP));
    EXPECT_NE(d.next_notify().find("RELOADING=1"), std::string::npos);
    EXPECT_NE(d.next_notify().find("reload failed"), std::string::npos);
    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "after-failed-reload"));
    client.reset();
    EXPECT_EQ(d.terminate(), 0);
    EXPECT_NE(d.stderr_text().find("configuration not reloaded"), std::string::npos) << d.stderr_text();
}

}  // namespace
}  // namespace coiommu::daemon
