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

}  // namespace
}  // namespace coiommu
