#include "tests/testing/daemon_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

namespace coiommu::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kPollStep{10};
constexpr std::string_view kListenPid = "LISTEN_PID=";
constexpr int kListenFdNumber = 3;  // SD_LISTEN_FDS_START

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

int exit_code(int wait_status) {
    return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

// The variables systemd sets for the process it starts: the test's own, if any, are not the
// daemon's. Only the harness sets them, from DaemonOptions.
bool systemd_variable(std::string_view name) {
    return name == "LISTEN_FDS" || name == "LISTEN_PID" || name == "LISTEN_FDNAMES" || name == "NOTIFY_SOCKET";
}

// argv and envp for execve, built before fork: between fork and exec the child may only make
// async-signal-safe calls (another thread of the test may hold the allocator's lock), so it
// writes its pid for LISTEN_PID into space reserved here. Pinned in place: argv and envp point
// into the strings.
class ExecImage {
public:
    ExecImage(const DaemonOptions& o, const std::string& notify_path) {
        args_.push_back(o.program);
        args_.insert(args_.end(), o.args.begin(), o.args.end());
        auto replaced = [&](std::string_view entry) {
            const std::string_view name = entry.substr(0, entry.find('='));
            return systemd_variable(name) ||
                   std::ranges::any_of(o.env, [&](const auto& kv) { return kv.first == name; });
        };
        for (char** e = environ; *e != nullptr; ++e) {
            if (!replaced(*e)) env_.emplace_back(*e);
        }
        for (const auto& [name, value] : o.env) env_.push_back(fmt::format("{}={}", name, value));
        if (!notify_path.empty()) env_.push_back("NOTIFY_SOCKET=" + notify_path);
        if (o.listen_fd >= 0) {
            env_.emplace_back("LISTEN_FDS=1");
            env_.push_back(std::string(kListenPid) + std::string(24, '\0'));
        }
        for (auto& a : args_) argv_.push_back(a.data());
        argv_.push_back(nullptr);
        for (auto& e : env_) envp_.push_back(e.data());
        envp_.push_back(nullptr);
        if (o.listen_fd >= 0) listen_pid_digits_ = env_.back().data() + kListenPid.size();
    }
    ExecImage(const ExecImage&) = delete;
    ExecImage& operator=(const ExecImage&) = delete;

    [[nodiscard]] char* const* argv() const { return argv_.data(); }
    [[nodiscard]] char* const* envp() const { return envp_.data(); }
    // Async-signal-safe.
    void set_listen_pid(pid_t pid) const {
        char reversed[24];
        int n = 0;
        do {
            reversed[n++] = static_cast<char>('0' + pid % 10);
            pid /= 10;
        } while (pid > 0);
        for (int i = 0; i < n; ++i) listen_pid_digits_[i] = reversed[n - 1 - i];
        listen_pid_digits_[n] = '\0';
    }

private:
    std::vector<std::string> args_, env_;
    std::vector<char*> argv_, envp_;
    char* listen_pid_digits_ = nullptr;
};

struct ChildFds {
    int out;     // becomes 1
    int err;     // becomes 2
    int listen;  // becomes 3 when >= 0
    int report;  // CLOEXEC pipe: the errno of a failed setup or execve, EOF once exec succeeded
    std::optional<rlim_t> open_files_limit;
};

[[noreturn]] void report_and_exit(int report_fd) {
    const int err = errno;
    (void)!::write(report_fd, &err, sizeof err);
    ::_exit(127);
}

// The child between fork and execve: async-signal-safe calls only.
[[noreturn]] void exec_child(const ExecImage& image, const ChildFds& fds, pid_t parent) {
    // SIGKILL when the test dies (a crash, ctest's timeout); the check closes the window in which
    // the parent died before prctl.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) report_and_exit(fds.report);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the forking thread's mask is not the daemon's
    int report = fds.report;
    if (fds.listen >= 0 && report == kListenFdNumber) report = ::fcntl(report, F_DUPFD_CLOEXEC, kListenFdNumber + 1);
    if (::dup2(fds.out, STDOUT_FILENO) < 0 || ::dup2(fds.err, STDERR_FILENO) < 0) report_and_exit(report);
    if (fds.listen >= 0) {
        // dup2 clears FD_CLOEXEC on the copy, but does nothing at all when the numbers are equal.
        const int rc =
            fds.listen == kListenFdNumber ? ::fcntl(kListenFdNumber, F_SETFD, 0) : ::dup2(fds.listen, kListenFdNumber);
        if (rc < 0) report_and_exit(report);
        image.set_listen_pid(::getpid());
    }
    if (fds.open_files_limit) {
        const rlimit lim{*fds.open_files_limit, *fds.open_files_limit};
        if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) report_and_exit(report);
    }
    ::execve(image.argv()[0], image.argv(), image.envp());
    report_and_exit(report);
}

Result<UniqueFd> open_log(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return make_error(errno, fmt::format("open {}", path));
    return fd;
}

Result<UniqueFd> bind_datagram(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path) return make_error(ENAMETOOLONG, path);
    std::memcpy(a.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(errno, "socket(AF_UNIX, SOCK_DGRAM)");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        return make_error(errno, fmt::format("bind {}", path));
    }
    return fd;
}

// An error's context with the captured stderr inside it: Error::message() appends strerror, so the
// block is closed explicitly.
std::string with_stderr(std::string_view what, const std::string& err) {
    return fmt::format("{}; its stderr:\n{}(end of stderr)", what, err);
}

std::string describe(Readiness r, const std::string& socket) {
    switch (r) {
        case Readiness::Exec: return "exec";
        case Readiness::SocketFile: return "socket file " + socket;
        case Readiness::NotifyReady: return "READY=1 on NOTIFY_SOCKET";
    }
    return "?";
}

}  // namespace

Result<TempDir> TempDir::create(std::string_view prefix) {
    std::string tmpl = fmt::format("/tmp/{}.XXXXXX", prefix);
    if (::mkdtemp(tmpl.data()) == nullptr) return make_error(errno, fmt::format("mkdtemp {}", tmpl));
    return TempDir(std::move(tmpl));
}

TempDir::~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

TempDir::TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
    if (this != &other) {
        TempDir old(std::move(*this));
        path_ = std::exchange(other.path_, {});
    }
    return *this;
}

std::string TempDir::path(std::string_view name) const { return fmt::format("{}/{}", path_, name); }

Result<DaemonProcess> DaemonProcess::start(TempDir dir, DaemonOptions options) {
    if (options.readiness == Readiness::SocketFile && options.socket.empty()) {
        return make_error(EINVAL, "Readiness::SocketFile needs DaemonOptions::socket");
    }
    if (options.listen_fd >= 0 && options.listen_fd < kListenFdNumber) {
        return make_error(EBADF, fmt::format("listen_fd {} would be clobbered by stdio", options.listen_fd));
    }
    DaemonProcess d(std::move(dir), std::move(options));
    if (d.options_.readiness == Readiness::NotifyReady) {
        COIOMMU_ASSIGN_OR_RETURN(d.notify_, bind_datagram(d.path("notify")), "notify socket");
    }
    COIOMMU_TRY(d.spawn(), "start {}", d.options_.program);
    COIOMMU_TRY(d.wait_until_ready(), "{} (pid {})", d.options_.program, d.pid_);
    return d;
}

Status DaemonProcess::spawn() {
    const ExecImage image(options_, notify_ ? path("notify") : std::string());
    COIOMMU_ASSIGN_OR_RETURN(auto out, open_log(path("stdout.log")));
    COIOMMU_ASSIGN_OR_RETURN(auto err, open_log(path("stderr.log")));
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return make_error(errno, "pipe2");
    UniqueFd report_read(p[0]);
    UniqueFd report_write(p[1]);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) return make_error(errno, "fork");
    if (pid_ == 0)
        exec_child(image,
                   ChildFds{out.get(), err.get(), options_.listen_fd, report_write.get(), options_.open_files_limit},
                   parent);
    report_write.reset();
    int child_errno = 0;
    ssize_t n = 0;
    do {
        n = ::read(report_read.get(), &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        (void)reap(0);
        return make_error(child_errno, "execve");
    }
    return ok();
}

Result<bool> DaemonProcess::poll_ready() {
    switch (options_.readiness) {
        case Readiness::Exec: return true;
        case Readiness::SocketFile: {
            std::error_code ec;
            if (std::filesystem::is_socket(options_.socket, ec)) return true;
            std::this_thread::sleep_for(kPollStep);
            return false;
        }
        case Readiness::NotifyReady: {
            std::string message = next_notify(kPollStep);
            if (message.empty()) return false;
            if (message.find("READY=1") == std::string::npos) {
                return make_error(EPROTO, with_stderr(fmt::format("first notify message is not READY=1: '{}'", message),
                                                      stderr_text()));
            }
            ready_message_ = std::move(message);
            return true;
        }
    }
    return make_error(EINVAL, "unknown readiness");
}

Status DaemonProcess::wait_until_ready() {
    const auto until = Clock::now() + options_.ready_timeout;
    while (Clock::now() < until) {
        COIOMMU_ASSIGN_OR_RETURN(const bool ready, poll_ready());
        if (ready) return ok();
        if (reap(WNOHANG)) {
            return make_error(ECHILD,
                              with_stderr(fmt::format("exited with status {} before it was ready ({})", *exit_status_,
                                                      describe(options_.readiness, options_.socket)),
                                          stderr_text()));
        }
    }
    return make_error(
        ETIMEDOUT, with_stderr(fmt::format("not ready ({}) after {} ms", describe(options_.readiness, options_.socket),
                                           options_.ready_timeout.count()),
                               stderr_text()));
}

DaemonProcess::DaemonProcess(DaemonProcess&& other) noexcept
    : dir_(std::move(other.dir_)),
      options_(std::move(other.options_)),
      notify_(std::move(other.notify_)),
      ready_message_(std::move(other.ready_message_)),
      pid_(std::exchange(other.pid_, -1)),
      exit_status_(other.exit_status_) {}

DaemonProcess::~DaemonProcess() {
    if (pid_ <= 0) return;  // moved from, or fork failed
    kill_and_reap();
    // The captured output is the first thing to read when a story with a daemon fails, and the
    // directory holding it is about to go.
    if (::testing::Test::HasFailure()) {
        std::cerr << "---- " << options_.program << " (pid " << pid_ << ") stderr ----\n"
                  << stderr_text() << "---- end of stderr ----\n";
    }
}

void DaemonProcess::kill_and_reap() {
    if (pid_ <= 0 || exit_status_) return;
    ::kill(pid_, SIGKILL);
    (void)reap(0);
}

bool DaemonProcess::reap(int wait_flags) {
    if (exit_status_) return true;
    if (pid_ <= 0) return false;
    int st = 0;
    pid_t r = 0;
    do {
        r = ::waitpid(pid_, &st, wait_flags);
    } while (r < 0 && errno == EINTR);
    if (r != pid_) return false;
    exit_status_ = exit_code(st);
    return true;
}

std::string DaemonProcess::next_notify(std::chrono::milliseconds limit) {
    if (!notify_) return {};
    pollfd p{notify_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return {};
    char buf[4096];
    const ssize_t n = ::recv(notify_.get(), buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

Status DaemonProcess::signal(int sig) const {
    // Never signal a reaped pid: the kernel may have given the number to someone else.
    if (pid_ <= 0 || exit_status_) return make_error(ESRCH, fmt::format("{} is not running", options_.program));
    if (::kill(pid_, sig) != 0) return make_error(errno, fmt::format("kill({}, {})", pid_, sig));
    return ok();
}

std::optional<int> DaemonProcess::wait_for_exit(std::chrono::milliseconds limit) {
    const auto until = Clock::now() + limit;
    while (!reap(WNOHANG)) {
        if (Clock::now() >= until) return std::nullopt;
        std::this_thread::sleep_for(kPollStep);
    }
    return exit_status_;
}

std::optional<int> DaemonProcess::terminate(std::chrono::milliseconds limit) {
    if (!signal(SIGTERM)) return exit_status_;  // already reaped: its status stands
    return wait_for_exit(limit);
}

std::string DaemonProcess::stdout_text() const { return slurp(path("stdout.log")); }
std::string DaemonProcess::stderr_text() const { return slurp(path("stderr.log")); }

Result<DaemonProcess> start_daemon_at(std::string program, const std::string& socket, std::vector<std::string> args,
                                      std::string_view tag) {
    ::unlink(socket.c_str());
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create(tag));
    DaemonOptions o;
    o.program = std::move(program);
    o.socket = socket;
    o.args = {"--socket", socket};
    o.args.insert(o.args.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
    return DaemonProcess::start(std::move(dir), std::move(o));
}

}  // namespace coiommu::testing
