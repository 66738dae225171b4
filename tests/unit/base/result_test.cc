#include "engine/base/result.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "tests/testing/expect.h"

namespace coiommu {
namespace {

Result<int> parse_positive(int v) {
    if (v <= 0) return make_error(EINVAL, "parse_positive");
    return v;
}

TEST(Result, ValueIsReturnedOnSuccess) {
    auto r = parse_positive(3);
    ASSERT_OK(r);
    EXPECT_EQ(*r, 3);
}

TEST(Result, ErrorCarriesErrnoAndContext) {
    auto r = parse_positive(-1);
    EXPECT_ERR(r, EINVAL);
    EXPECT_EQ(r.error().context, "parse_positive");
}

TEST(Result, MessageNamesStrerrorAndErrno) {
    const Error e{ENOENT, "open /dev/vfio/vfio"};
    EXPECT_EQ(e.message(), "open /dev/vfio/vfio: No such file or directory (errno 2)");
}

TEST(Result, WithContextPrefixesOuterContext) {
    const Error e = with_context(Error{EEXIST, "map"}, "pin gfn 0x10");
    EXPECT_EQ(e.context, "pin gfn 0x10: map");
    EXPECT_EQ(e.code, EEXIST);
}

TEST(Result, MessageWithoutErrnoIsJustContext) {
    const Error e{0, "plain"};
    EXPECT_EQ(e.message(), "plain");
}

Status fails_with(int err) {
    if (err != 0) return make_error(err, "inner");
    return ok();
}

Status try_plain(int err) {
    COIOMMU_TRY(fails_with(err));
    return ok();
}

Status try_with_context(int err, int gfn) {
    COIOMMU_TRY(fails_with(err), "pin gfn {:#x}", gfn);
    return ok();
}

Result<int> assign_twice(int a, int b) {
    COIOMMU_ASSIGN_OR_RETURN(const int x, parse_positive(a), "first");
    COIOMMU_ASSIGN_OR_RETURN(const int y, parse_positive(b), "second");
    return x + y;
}

TEST(Result, TryPassesSuccessThrough) { EXPECT_OK(try_plain(0)); }

TEST(Result, TryWithoutContextReturnsTheErrorUnchanged) {
    auto st = try_plain(EBUSY);
    EXPECT_ERR(st, EBUSY);
    EXPECT_EQ(st.error().context, "inner");
}

TEST(Result, TryPrefixesFormattedContext) {
    auto st = try_with_context(ENOSPC, 16);
    EXPECT_ERR(st, ENOSPC);
    EXPECT_EQ(st.error().context, "pin gfn 0x10: inner");
}

TEST(Result, AssignOrReturnBindsValues) {
    auto r = assign_twice(2, 3);
    ASSERT_OK(r);
    EXPECT_EQ(*r, 5);
}

TEST(Result, AssignOrReturnStopsAtTheFirstFailure) {
    auto r = assign_twice(2, -1);
    EXPECT_ERR(r, EINVAL);
    EXPECT_EQ(r.error().context, "second: parse_positive");
}

TEST(Result, TryEvaluatesItsExpressionOnce) {
    int calls = 0;
    auto counted = [&]() -> Status {
        ++calls;
        return ok();
    };
    auto wrapper = [&]() -> Status {
        COIOMMU_TRY(counted(), "once");
        return ok();
    };
    EXPECT_OK(wrapper());
    EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace coiommu
