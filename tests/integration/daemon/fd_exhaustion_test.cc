// coiommud and its file descriptors (issue #15 §2): the real binary under a low RLIMIT_NOFILE.
// A daemon that has run out answers every new VMM at once with EMFILE and does not spin; the fd
// budgets refuse a VM of a uid, or a session, that would pass them, with EMFILE, before the
// daemon runs out, and the other VMs carry on; a running session holds no more fds than it is
// charged.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "engine/daemon/client.h"
#include "engine/daemon/emulated_vm.h"
#include "engine/daemon/fd_budget.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/expect.h"

namespace coiommu::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::TempDir;

Result<DaemonProcess> start_daemon(const std::vector<std::string>& extra, std::optional<rlim_t> nofile = {}) {
    COIOMMU_ASSIGN_OR_RETURN(auto dir, TempDir::create("coiommud-fd"));
    DaemonOptions o;
    o.program = COIOMMUD_PATH;
    o.socket = dir.path("coiommud.sock");
    o.args = {"--socket", o.socket, "--tracing", "off", "--metrics-address", "none", "--log-level", "warn"};
    o.args.insert(o.args.end(), extra.begin(), extra.end());
    o.open_files_limit = nofile;
    return DaemonProcess::start(std::move(dir), std::move(o));
}

std::size_t open_fds_of(pid_t pid) {
    std::error_code ec;
    std::size_t n = 0;
    for (auto it = std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid), ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        ++n;
    }
    return n;
}

// utime + stime of the process, in clock ticks (/proc/<pid>/stat fields 14 and 15).
uint64_t cpu_ticks_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));  // after "pid (comm) "
    std::string field;
    uint64_t utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    return utime + stime;
}

template <class Pred>
bool eventually(Pred p, milliseconds limit = milliseconds(5000)) {
    const auto until = Clock::now() + limit;
    while (Clock::now() < until) {
        if (p()) return true;
        std::this_thread::sleep_for(milliseconds(10));
    }
    return p();
}

EmulatedVmOptions vm_options(const std::string& socket, std::string name, uint32_t vcpus) {
    EmulatedVmOptions v;
    v.socket_path = socket;
    v.name = std::move(name);
    v.vcpus = vcpus;
    v.ram_bytes = uint64_t{64} << 20;
    v.latency = proto::FakeLatency::None;
    v.balloon_interval = milliseconds(0);
    v.rate_per_vcpu = 10;
    return v;
}

// What the budget charges a running EmulatedVm (one memory region, the fake backend).
uint64_t charge_of_vm(uint32_t vcpus) { return kSessionBaseFds + 1 + kTopologyFds + 2 * uint64_t{vcpus}; }

TEST(CoiommudFds, OutOfFdsANewVmmGetsEmfileAtOnceAndTheDaemonDoesNotSpin) {
    constexpr rlim_t kNofile = 64;
    // Silent connections wait for their Hello for a minute, one fd each: they fill the daemon.
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({"--max-pending", "1000", "--hello-timeout", "60s"}, kNofile));
    std::vector<UniqueFd> fill;
    for (rlim_t i = 0; i < kNofile; ++i) {
        ASSERT_OK_AND_ASSIGN(auto fd, connect_seqpacket(d.socket()));
        fill.push_back(std::move(fd));
    }
    ASSERT_TRUE(eventually([&] { return open_fds_of(d.pid()) >= kNofile - 1; }))
        << "the daemon holds " << open_fds_of(d.pid()) << " fds";
    std::this_thread::sleep_for(milliseconds(200));  // the overflow of the fill has been dealt with

    const uint64_t ticks_before = cpu_ticks_of(d.pid());
    const auto window_start = Clock::now();
    std::vector<std::future<Result<HelloInfo>>> answers;
    for (int i = 0; i < 10; ++i) {
        answers.push_back(std::async(std::launch::async, [&d]() -> Result<HelloInfo> {
            COIOMMU_ASSIGN_OR_RETURN(auto sock, connect_seqpacket(d.socket()));
            auto c = Client::adopt(std::move(sock));
            c->set_timeout(milliseconds(2000));
            return c->hello("late-vmm", proto::kAllFeatures);
        }));
    }
    for (auto& a : answers) {
        const auto r = a.get();
        ASSERT_FALSE(r) << "a session although the daemon is out of fds";
        EXPECT_EQ(r.error().code, EMFILE) << r.error().message();
        EXPECT_NE(r.error().context.find("RLIMIT_NOFILE 64"), std::string::npos) << r.error().context;
    }
    EXPECT_LT(Clock::now() - window_start, milliseconds(2000));
    std::this_thread::sleep_for(milliseconds(1000));  // idle at its limit: nothing to do
    const auto window = std::chrono::duration<double>(Clock::now() - window_start).count();
    const double cpu = static_cast<double>(cpu_ticks_of(d.pid()) - ticks_before) / ::sysconf(_SC_CLK_TCK);
    EXPECT_LT(cpu / window, 0.05) << cpu << " s of CPU in " << window << " s";

    // Room again: a VMM is served (what RLIMIT_NOFILE 64 leaves the sessions is one bare session).
    fill.clear();
    ASSERT_TRUE(eventually([&] { return open_fds_of(d.pid()) < kNofile / 2; }));
    ASSERT_OK_AND_ASSIGN(auto c, Client::connect(d.socket(), "after"));
    ASSERT_OK(c->close());
    EXPECT_EQ(d.terminate(), 0);
}

// The story: VMs of one uid, each legal, until one does not fit. The daemon refuses that
// one with EMFILE naming the budget and keeps the descriptors to answer every new VMM.
TEST(CoiommudFds, LegalSessionsOfOneUidCannotTakeTheDaemonToItsFdLimit) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({}, 600));
    std::vector<std::unique_ptr<EmulatedVm>> vms;
    std::optional<Error> refused;
    for (int i = 0; i < 6 && !refused; ++i) {
        auto vm = EmulatedVm::start(vm_options(d.socket(), fmt::format("vm{}", i), 64));
        if (vm) {
            vms.push_back(std::move(*vm));
        } else {
            refused = vm.error();
        }
    }
    ASSERT_TRUE(refused) << vms.size() << " VMs of 64 vCPUs within RLIMIT_NOFILE 600";
    EXPECT_EQ(refused->code, EMFILE) << refused->message();
    EXPECT_NE(refused->context.find("RLIMIT_NOFILE 600"), std::string::npos) << refused->context;
    // Every new VMM still gets its answer, at once.
    for (int i = 0; i < 10; ++i) {
        const auto start = Clock::now();
        ASSERT_OK_AND_ASSIGN(auto sock, connect_seqpacket(d.socket()));
        auto c = Client::adopt(std::move(sock));
        c->set_timeout(milliseconds(2000));
        auto hello = c->hello("late-vmm", proto::kAllFeatures);
        EXPECT_TRUE(hello || hello.error().code == EMFILE) << hello.error().message();
        EXPECT_LT(Clock::now() - start, milliseconds(2000));
    }
    for (auto& vm : vms) EXPECT_TRUE(vm->close());
    EXPECT_EQ(d.terminate(), 0);
}

TEST(CoiommudFds, AVmBeyondItsUidsFdBudgetIsRefusedWithEmfileAndTheOthersRunOn) {
    // Room for one 64-vCPU VM of this uid, not two.
    const uint64_t budget = charge_of_vm(64) + charge_of_vm(64) / 2;
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({"--max-fds-per-uid", std::to_string(budget)}));
    ASSERT_OK_AND_ASSIGN(auto first, EmulatedVm::start(vm_options(d.socket(), "first", 64)));
    auto second = EmulatedVm::start(vm_options(d.socket(), "second", 64));
    ASSERT_FALSE(second) << "two 64-vCPU VMs within " << budget << " fds";
    EXPECT_EQ(second.error().code, EMFILE) << second.error().message();
    EXPECT_NE(second.error().context.find("max_fds_per_uid"), std::string::npos) << second.error().context;
    // The first runs on, and a VM that fits what is left is served.
    const uint64_t maps = first->counters().maps;
    EXPECT_TRUE(eventually([&] { return first->counters().maps > maps + 10; }));
    ASSERT_OK_AND_ASSIGN(auto small, EmulatedVm::start(vm_options(d.socket(), "small", 2)));
    ASSERT_OK(small->close());
    // Once the first has gone its fds are the uid's again.
    ASSERT_OK(first->close());
    first.reset();
    bool served = false;
    ASSERT_TRUE(eventually([&] {
        auto again = EmulatedVm::start(vm_options(d.socket(), "second-again", 64));
        if (!again) return false;
        served = true;
        return (*again)->close().has_value();
    }));
    EXPECT_TRUE(served);
    EXPECT_EQ(d.terminate(), 0);
}

TEST(CoiommudFds, ASessionBeyondMaxFdsPerSessionIsRefusedWithEmfile) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({"--max-fds-per-session", std::to_string(charge_of_vm(8))}));
    auto big = EmulatedVm::start(vm_options(d.socket(), "big", 9));
    ASSERT_FALSE(big);
    EXPECT_EQ(big.error().code, EMFILE) << big.error().message();
    EXPECT_NE(big.error().context.find("max_fds_per_session"), std::string::npos) << big.error().context;
    ASSERT_OK_AND_ASSIGN(auto fits, EmulatedVm::start(vm_options(d.socket(), "fits", 8)));
    ASSERT_OK(fits->close());
    EXPECT_EQ(d.terminate(), 0);
}

TEST(CoiommudFds, ARunningSessionHoldsNoMoreFdsThanItIsCharged) {
    ASSERT_OK_AND_ASSIGN(auto d, start_daemon({}));
    constexpr uint32_t kVcpus = 32;
    // A first session brings up what every later one shares (threads, logs): not the session's.
    ASSERT_OK_AND_ASSIGN(auto warm, EmulatedVm::start(vm_options(d.socket(), "warm", 2)));
    ASSERT_OK(warm->close());
    warm.reset();
    std::this_thread::sleep_for(milliseconds(300));  // reaped
    const std::size_t before = open_fds_of(d.pid());
    ASSERT_OK_AND_ASSIGN(auto vm, EmulatedVm::start(vm_options(d.socket(), "measured", kVcpus)));
    const std::size_t running = open_fds_of(d.pid());
    ASSERT_GE(running, before);
    EXPECT_LE(running - before, charge_of_vm(kVcpus)) << "held " << running - before;
    // Not far below either: a charge much larger than the truth refuses VMs that would fit.
    EXPECT_GE(running - before + kSessionBaseFds, charge_of_vm(kVcpus)) << "held " << running - before;
    ASSERT_OK(vm->close());
    EXPECT_EQ(d.terminate(), 0);
}

}  // namespace
}  // namespace coiommu::daemon
