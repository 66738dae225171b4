// DaemonProcess: a real coiommud as a child of the test, in a private temporary directory, with
// its output captured and its end guaranteed. The one harness of every test that runs the daemon
// binary (tests/integration/daemon, loadgen_connect, c_client).
//
//   ASSERT_OK_AND_ASSIGN(auto dir, TempDir::create("coiommud-it"));
//   DaemonOptions o;
//   o.program = COIOMMUD_PATH;  // from the build: target_compile_definitions($<TARGET_FILE:coiommud>)
//   o.socket = dir.path("coiommud.sock");
//   o.args = {"--socket", o.socket, "--tracing", "off", "--metrics-address", "none"};
//   ASSERT_OK_AND_ASSIGN(auto d, DaemonProcess::start(std::move(dir), std::move(o)));
//   ... connect to d.socket() ...
//   EXPECT_EQ(d.terminate(), 0);  // SIGTERM, then the exit status
//
// Whatever happens in the test (a failed ASSERT returns early), the destructor SIGKILLs and reaps
// a daemon still running and removes the directory; the child also gets SIGKILL if the test
// process itself dies (PR_SET_PDEATHSIG). When the current test has failed, the destructor prints
// the daemon's captured stderr, which is otherwise only read back through stderr_text().
//
// Thread-safety: none. One thread starts and owns a DaemonProcess and must outlive it: the death
// signal follows the thread that forked, not the process (the test body's thread, in practice).
// The daemon itself may be driven from any number of threads through its socket.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace coiommu::testing {

// A fresh directory /tmp/<prefix>.XXXXXX, removed with everything in it on destruction.
// Move-only; a moved-from TempDir owns nothing.
class TempDir {
public:
    // Errors: mkdtemp's errno.
    [[nodiscard]] static Result<TempDir> create(std::string_view prefix);
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    TempDir(TempDir&& other) noexcept;
    TempDir& operator=(TempDir&& other) noexcept;

    [[nodiscard]] const std::string& path() const { return path_; }
    // path() + "/" + name. The directory is under /tmp so that socket paths in it fit sun_path.
    [[nodiscard]] std::string path(std::string_view name) const;

private:
    explicit TempDir(std::string path) : path_(std::move(path)) {}
    std::string path_;
};

// When DaemonProcess::start returns.
enum class Readiness {
    // As soon as the program runs (execve succeeded). For a daemon given a listener the test
    // already owns (socket activation): connections queue on it from the first instant.
    Exec,
    // Once DaemonOptions::socket is a socket file. coiommud binds and listens under a temporary
    // name and renames it into place, so the path's appearance is the moment a VMM may connect;
    // nothing connects to probe it (a probe would be a session of its own).
    SocketFile,
    // Once the first message on $NOTIFY_SOCKET says READY=1 (systemd's Type=notify). The harness
    // binds the notify socket in the directory and sets NOTIFY_SOCKET for the child; the READY
    // message is ready_message(), later ones come from next_notify().
    NotifyReady,
};

struct DaemonOptions {
    std::string program;            // absolute path of the binary (the tests get COIOMMUD_PATH)
    std::vector<std::string> args;  // argv[1..]
    // Added to the test's environment, replacing a variable of the same name. The test's own
    // LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES and NOTIFY_SOCKET are never passed on (they would be
    // systemd's, for the test process).
    std::vector<std::pair<std::string, std::string>> env;
    Readiness readiness = Readiness::SocketFile;
    std::string socket;  // the path Readiness::SocketFile waits for; socket() returns it
    // >= 3: passed to the child as fd 3 with LISTEN_FDS=1 and LISTEN_PID=<the child's pid>, as
    // systemd passes coiommud.socket. Borrowed: the caller keeps and closes its own descriptor.
    int listen_fd = -1;
    std::chrono::milliseconds ready_timeout{10000};
    // When set, the child's RLIMIT_NOFILE (soft and hard) before execve: a daemon that runs out of
    // descriptors after a few connections.
    std::optional<rlim_t> open_files_limit;
};

class DaemonProcess {
public:
    // Spawns options.program with its stdout and stderr redirected to dir/stdout.log and
    // dir/stderr.log, and returns once options.readiness holds. Takes the directory: it lives
    // exactly as long as the process does.
    // Errors: the failing call's errno (mkdtemp, socket, open, fork, execve); ETIMEDOUT if not
    // ready within ready_timeout; ECHILD if the program exited first; EPROTO if the first notify
    // message is not READY=1. The last three carry the captured stderr. On any error nothing is
    // left: the child is killed and reaped, the directory removed.
    // Precondition: options.readiness == SocketFile implies a non-empty options.socket.
    [[nodiscard]] static Result<DaemonProcess> start(TempDir dir, DaemonOptions options);

    // SIGKILL and reap if still running; then the directory goes.
    ~DaemonProcess();
    DaemonProcess(const DaemonProcess&) = delete;
    DaemonProcess& operator=(const DaemonProcess&) = delete;
    DaemonProcess(DaemonProcess&& other) noexcept;
    DaemonProcess& operator=(DaemonProcess&&) = delete;

    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] const TempDir& dir() const { return dir_; }
    [[nodiscard]] std::string path(std::string_view name) const { return dir_.path(name); }
    [[nodiscard]] const std::string& socket() const { return options_.socket; }

    // Readiness::NotifyReady only: the READY=1 message start() waited for, and the next message
    // after it (or after the previous call), "" if none arrives within `limit`.
    [[nodiscard]] const std::string& ready_message() const { return ready_message_; }
    [[nodiscard]] std::string next_notify(std::chrono::milliseconds limit = std::chrono::seconds(10));

    // Errors: ESRCH once the process has been reaped.
    [[nodiscard]] Status signal(int sig) const;
    // The exit status, reaping the process: its exit code, or 128 + the signal that killed it
    // (the shell's convention). std::nullopt if it is still running after `limit`. Once reaped,
    // returns the same status again at once.
    [[nodiscard]] std::optional<int> wait_for_exit(std::chrono::milliseconds limit);
    // SIGTERM, then wait_for_exit(limit).
    [[nodiscard]] std::optional<int> terminate(std::chrono::milliseconds limit = std::chrono::seconds(15));

    // Everything the process wrote so far (the files stay readable after it exits).
    [[nodiscard]] std::string stdout_text() const;
    [[nodiscard]] std::string stderr_text() const;

private:
    DaemonProcess(TempDir dir, DaemonOptions options) : dir_(std::move(dir)), options_(std::move(options)) {}
    [[nodiscard]] Status spawn();
    [[nodiscard]] Status wait_until_ready();
    // Whether options_.readiness holds, after waiting at most one poll step for it.
    [[nodiscard]] Result<bool> poll_ready();
    [[nodiscard]] bool reap(int wait_flags);
    void kill_and_reap();

    TempDir dir_;  // first member: removed only after the process is gone
    DaemonOptions options_;
    UniqueFd notify_;
    std::string ready_message_;
    pid_t pid_ = -1;                  // -1 once reaped (or never started)
    std::optional<int> exit_status_;  // set by reap()
};

// `program` (a coiommud) serving `socket`, a path that outlives each daemon: a restart binds it
// again. The dead daemon's socket file is removed first, so that readiness waits for the new one.
// `args` follow `--socket PATH`; the logs go to a fresh TempDir named after `tag`.
// Errors: as DaemonProcess::start.
[[nodiscard]] Result<DaemonProcess> start_daemon_at(std::string program, const std::string& socket,
                                                    std::vector<std::string> args, std::string_view tag);

}  // namespace coiommu::testing
