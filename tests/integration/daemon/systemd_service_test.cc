// coiommud as systemd runs it, with systemd's side played by the test: a socket passed through
// $LISTEN_FDS (coiommud.socket), readiness and reload messages on $NOTIFY_SOCKET (Type=notify),
// and SIGHUP re-reading the configuration file while a session stays up.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "tests/testing/expect.h"

namespace coiommu::daemon {
namespace {

using std::chrono::milliseconds;

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

// A private directory, a config file, and coiommud started the way systemd starts it.
class ServiceHarness {
public:
    ServiceHarness() {
        char tmpl[] = "/tmp/coiommud-sd.XXXXXX";
        EXPECT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        write_config("log_level = info\nmax_sessions = 8\n");
    }
    ~ServiceHarness() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        std::filesystem::remove_all(dir_);
    }
    ServiceHarness(const ServiceHarness&) = delete;
    ServiceHarness& operator=(const ServiceHarness&) = delete;

    void write_config(const std::string& text) { std::ofstream(config_path()) << text; }
    [[nodiscard]] std::string config_path() const { return dir_ + "/coiommud.conf"; }
    [[nodiscard]] std::string path(const char* name) const { return dir_ + "/" + name; }

    // Starts coiommud with `listener` (if valid) as fd 3 and LISTEN_PID set to the child itself,
    // as systemd does; NOTIFY_SOCKET names `notify_path` when given.
    void start(int listener, const std::string& notify_path, const std::string& own_socket) {
        const std::string log = path("stderr.log");
        pid_ = ::fork();
        ASSERT_GE(pid_, 0);
        if (pid_ == 0) {
            const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            ::dup2(err, 2);
            if (listener >= 0) {
                ::dup2(listener, 3);  // dup2 clears FD_CLOEXEC on the copy
                ::setenv("LISTEN_FDS", "1", 1);
                ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
            }
            if (!notify_path.empty()) ::setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
            std::string cfg = config_path();
            std::vector<std::string> args{COIOMMUD_PATH, "--config",          cfg,
                                          "--socket",    own_socket,          "--tracing",
                                          "off",         "--metrics-address", "none"};
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
    }

    int terminate() {
        ::kill(pid_, SIGTERM);
        int st = 0;
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
        while (std::chrono::steady_clock::now() < until) {
            if (::waitpid(pid_, &st, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            std::this_thread::sleep_for(milliseconds(10));
        }
        return -1;
    }
    void signal(int sig) const { ::kill(pid_, sig); }

    [[nodiscard]] std::string stderr_text() const {
        std::ifstream in(path("stderr.log"));
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

private:
    std::string dir_;
    pid_t pid_ = -1;
};

// The next datagram on the notify socket, or "" after `limit`.
std::string next_notify(int fd, milliseconds limit = milliseconds(10000)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return {};
    char buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

TEST(CoiommudService, SocketActivatedDaemonServesTheInheritedSocket) {
    ServiceHarness h;
    const std::string sock = h.path("activated.sock");
    UniqueFd listener = bound_socket(SOCK_SEQPACKET, sock);
    ASSERT_EQ(::listen(listener.get(), 16), 0);
    // --socket names a path nobody binds: the daemon must use the inherited one instead.
    h.start(listener.get(), "", h.path("unused.sock"));

    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "sd-vmm"));
    EXPECT_GT(client->hello_info().session_id, 0u);
    EXPECT_FALSE(std::filesystem::exists(h.path("unused.sock")));
    client.reset();
    EXPECT_EQ(h.terminate(), 0);
    // The socket file belongs to systemd (RemoveOnStop=): the daemon leaves it in place.
    EXPECT_TRUE(std::filesystem::exists(sock));
}

TEST(CoiommudService, ReadyIsSentOnlyOnceTheSocketAcceptsSessions) {
    ServiceHarness h;
    UniqueFd notify = bound_socket(SOCK_DGRAM, h.path("notify"));
    const std::string sock = h.path("own.sock");
    h.start(-1, h.path("notify"), sock);

    const std::string ready = next_notify(notify.get());
    ASSERT_NE(ready.find("READY=1"), std::string::npos) << ready;
    EXPECT_NE(ready.find("STATUS=serving VMMs on " + sock), std::string::npos) << ready;
    // At the instant READY arrived, a VMM can already start a session.
    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "right-after-ready"));
    client.reset();
    EXPECT_EQ(h.terminate(), 0);
    EXPECT_NE(next_notify(notify.get()).find("STOPPING=1"), std::string::npos);
}

TEST(CoiommudService, SighupReloadsTheLogLevelAndNamesKeysThatNeedARestart) {
    ServiceHarness h;
    UniqueFd notify = bound_socket(SOCK_DGRAM, h.path("notify"));
    const std::string sock = h.path("own.sock");
    h.start(-1, h.path("notify"), sock);
    ASSERT_NE(next_notify(notify.get()).find("READY=1"), std::string::npos);
    EmulatedVmOptions v;
    v.socket_path = sock;
    v.name = "survives-reload";
    v.vcpus = 1;
    v.ram_bytes = uint64_t{64} << 20;
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(v));

    h.write_config("log_level = info\nmax_sessions = 3\nio_timeout = 7s\n");
    h.signal(SIGHUP);
    EXPECT_NE(next_notify(notify.get()).find("RELOADING=1"), std::string::npos);
    EXPECT_NE(next_notify(notify.get()).find("READY=1"), std::string::npos);

    // The session running before the reload is still served, and still pins.
    std::this_thread::sleep_for(milliseconds(200));
    vm->stop();
    ASSERT_OK_AND_ASSIGN(auto stats, vm->client().stats());
    EXPECT_GT(stats.snapshot.totals.pages_pinned, 0u);
    EXPECT_EQ(vm->counters().map_failures, 0u);
    ASSERT_OK_AND_ASSIGN(auto closed, vm->close());
    EXPECT_EQ(closed.dma_entries_after, 0u);
    EXPECT_EQ(h.terminate(), 0);
    EXPECT_NE(h.stderr_text().find("take effect only after a restart: max_sessions, io_timeout"), std::string::npos)
        << h.stderr_text();
}

TEST(CoiommudService, SighupWithABrokenConfigKeepsTheRunningOne) {
    ServiceHarness h;
    UniqueFd notify = bound_socket(SOCK_DGRAM, h.path("notify"));
    const std::string sock = h.path("own.sock");
    h.start(-1, h.path("notify"), sock);
    ASSERT_NE(next_notify(notify.get()).find("READY=1"), std::string::npos);

    h.write_config("no_such_key = 1\n");
    h.signal(SIGHUP);
    EXPECT_NE(next_notify(notify.get()).find("RELOADING=1"), std::string::npos);
    EXPECT_NE(next_notify(notify.get()).find("reload failed"), std::string::npos);
    ASSERT_OK_AND_ASSIGN(auto client, Client::connect(sock, "after-failed-reload"));
    client.reset();
    EXPECT_EQ(h.terminate(), 0);
    EXPECT_NE(h.stderr_text().find("configuration not reloaded"), std::string::npos) << h.stderr_text();
}

}  // namespace
}  // namespace coiommu::daemon
