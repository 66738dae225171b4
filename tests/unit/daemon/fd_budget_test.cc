// The fd budgets: what each message is charged, the three limits, and charges coming back.
#include "engine/daemon/fd_budget.h"

#include <gtest/gtest.h>

#include "tests/testing/expect.h"

namespace coiommu::daemon {
namespace {

Message message(proto::MsgType type, std::size_t fds) {
    Message m;
    m.header.type = static_cast<uint16_t>(type);
    for (std::size_t i = 0; i < fds; ++i) m.fds.emplace_back();  // invalid fds: only counted
    return m;
}

Message topology(uint32_t vcpus) {
    Message m = message(proto::MsgType::SetTopology, 0);
    proto::SetTopologyReq req;
    req.vcpus = vcpus;
    req.endpoint_count = 1;
    append_wire(m.payload, req);
    append_wire(m.payload, uint16_t{8});
    return m;
}

TEST(FdBudget, EachSetupMessageIsChargedTheFdsItMakesTheSessionHold) {
    EXPECT_EQ(fds_added_by(message(proto::MsgType::SetMemory, 3)), 3u);
    EXPECT_EQ(fds_added_by(topology(1024)), kTopologyFds + 2 * 1024);
    EXPECT_EQ(fds_added_by(message(proto::MsgType::SetBackend, 1)), 1u);
    EXPECT_EQ(fds_added_by(message(proto::MsgType::SetTriggers, 64)), 0u);  // reserved by SetTopology
    EXPECT_EQ(fds_added_by(message(proto::MsgType::MmioWrite, 0)), 0u);
    EXPECT_EQ(fds_added_by(message(proto::MsgType::GetStats, 2)), 2u);  // refused, but held until then
    EXPECT_EQ(fds_added_by(topology(0)), 0u);                           // refused by the session
    EXPECT_EQ(fds_added_by(topology(1025)), 0u);                        // likewise
    Message short_topology = message(proto::MsgType::SetTopology, 0);
    EXPECT_EQ(fds_added_by(short_topology), 0u);
}

TEST(FdBudget, AResumeIsChargedAsTheSetTopologyItReplaces) {
    Message resume = topology(64);
    resume.header.type = static_cast<uint16_t>(proto::MsgType::Resume);
    for (int i = 0; i < 3; ++i) resume.fds.emplace_back();  // notifymap, topologymap, record
    EXPECT_EQ(fds_added_by(resume), kTopologyFds + 2 * 64);
}

TEST(FdBudget, DefaultsComeFromRlimitNofileAndAdmitTheLargestVm) {
    const FdLimits l = derive_fd_limits(65536, 64, 0, 0);
    EXPECT_EQ(l.total, 65536u - 64 - kDaemonReserveFds);
    EXPECT_EQ(l.per_uid, l.total);
    EXPECT_EQ(l.per_session, kMaxSessionFds);
    EXPECT_GE(kMaxSessionFds, kSessionBaseFds + fds_added_by(topology(1024)) + 64 + 1);
    const FdLimits small = derive_fd_limits(1024, 64, 0, 0);
    EXPECT_EQ(small.per_session, small.total);  // a 1024-vCPU VM cannot fit 1024 fds
    const FdLimits tiny = derive_fd_limits(64, 1000, 0, 0);
    EXPECT_EQ(tiny.total, kSessionBaseFds);
    const FdLimits set = derive_fd_limits(65536, 64, 100, 200);
    EXPECT_EQ(set.per_session, 100u);
    EXPECT_EQ(set.per_uid, 200u);
}

TEST(FdBudget, ASessionBeyondItsBudgetIsRefusedWithEmfileAndKeepsWhatItHad) {
    FdBudget b(FdLimits{.per_session = 100, .per_uid = 1000, .total = 1000, .rlimit_nofile = 2000});
    ASSERT_OK_AND_ASSIGN(auto a, b.open(1, 16));
    ASSERT_OK(b.charge(a, 80, "SetTopology"));
    auto st = b.charge(a, 5, "SetMemory");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, EMFILE);
    EXPECT_NE(st.error().context.find("max_fds_per_session 100"), std::string::npos) << st.error().context;
    EXPECT_EQ(a.charged(), 96u);
    EXPECT_EQ(b.charged_to(1), 96u);
}

TEST(FdBudget, AUidBeyondItsBudgetIsRefusedWhileOtherUidsGetIn) {
    FdBudget b(FdLimits{.per_session = 100, .per_uid = 150, .total = 1000, .rlimit_nofile = 2000});
    ASSERT_OK_AND_ASSIGN(auto first, b.open(1, 100));
    auto second = b.open(1, 51);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, EMFILE);
    EXPECT_NE(second.error().context.find("uid 1 hold 100 of max_fds_per_uid 150"), std::string::npos)
        << second.error().context;
    ASSERT_OK_AND_ASSIGN(auto other, b.open(2, 100));
    EXPECT_EQ(b.charged_total(), 200u);
}

TEST(FdBudget, AllSessionsTogetherStayWithinWhatRlimitLeavesThem) {
    FdBudget b(FdLimits{.per_session = 100, .per_uid = 100, .total = 150, .rlimit_nofile = 400});
    ASSERT_OK_AND_ASSIGN(auto first, b.open(1, 100));
    auto second = b.open(2, 60);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, EMFILE);
    EXPECT_NE(second.error().context.find("RLIMIT_NOFILE 400"), std::string::npos) << second.error().context;
}

TEST(FdBudget, AChargeComesBackWhenItsAccountIsReleasedOrDestroyed) {
    FdBudget b(FdLimits{.per_session = 100, .per_uid = 100, .total = 100, .rlimit_nofile = 400});
    {
        ASSERT_OK_AND_ASSIGN(auto a, b.open(1, 60));
        FdBudget::Account moved = std::move(a);
        EXPECT_EQ(b.charged_to(1), 60u);
    }
    EXPECT_EQ(b.charged_total(), 0u);
    ASSERT_OK_AND_ASSIGN(auto c, b.open(1, 100));
    c.release();
    c.release();
    EXPECT_EQ(b.charged_to(1), 0u);
    ASSERT_OK_AND_ASSIGN(auto d, b.open(1, 100));
}

TEST(FdBudget, TheCheckChargesTheSessionsAccountAndCountsRefusals) {
    FdBudget b(FdLimits{.per_session = 100, .per_uid = 100, .total = 100, .rlimit_nofile = 400});
    ASSERT_OK_AND_ASSIGN(auto a, b.open(1, 16));
    std::atomic<uint64_t> refused{0};
    FdBudgetCheck check(b, a, refused);
    ASSERT_OK(check.check(topology(8)));
    EXPECT_EQ(a.charged(), 16u + kTopologyFds + 16);
    ASSERT_OK(check.check(message(proto::MsgType::MmioRead, 0)));
    EXPECT_ERR(check.check(topology(64)), EMFILE);
    EXPECT_EQ(refused.load(), 1u);
}

}  // namespace
}  // namespace coiommu::daemon
