// GoogleTest helpers for Result/Status.
//   EXPECT_OK(expr)            expr holds a value (prints the Error otherwise)
//   EXPECT_ERR(expr, EINVAL)   expr holds an Error with that errno
//   ASSERT_OK_AND_ASSIGN(auto v, expr)
//   must(expr, "what")         the value, or throws std::runtime_error naming what and the Error
//                              (for constructors and fixtures, where ASSERT_* cannot return)
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "engine/base/result.h"

namespace coiommu::testing {

template <class R>
std::string describe(const R& r) {
    return r ? std::string("ok") : r.error().message();
}

// GoogleTest reports the exception's text as the test's failure, so a setup step that fails says
// which step and why instead of tl::bad_expected_access's "Bad expected access".
template <class T>
T must(Result<T> r, const char* what) {
    if (!r) throw std::runtime_error(std::string(what) + ": " + r.error().message());
    return std::move(*r);
}

}  // namespace coiommu::testing

#define EXPECT_OK(expr)                                                                      \
    do {                                                                                     \
        const auto& expect_ok_r_ = (expr);                                                   \
        EXPECT_TRUE(expect_ok_r_.has_value()) << ::coiommu::testing::describe(expect_ok_r_); \
    } while (0)
#define ASSERT_OK(expr)                                                                      \
    do {                                                                                     \
        const auto& assert_ok_r_ = (expr);                                                   \
        ASSERT_TRUE(assert_ok_r_.has_value()) << ::coiommu::testing::describe(assert_ok_r_); \
    } while (0)
#define EXPECT_ERR(expr, errno_value)                                                            \
    do {                                                                                         \
        const auto& expect_err_r_ = (expr);                                                      \
        ASSERT_FALSE(expect_err_r_.has_value()) << "expected errno " #errno_value;               \
        EXPECT_EQ(expect_err_r_.error().code, (errno_value)) << expect_err_r_.error().message(); \
    } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(COIOMMU_CONCAT_(result_, __LINE__), lhs, expr)
// `lhs` is a declaration ("auto v"), which parentheses would break: the check is silenced on each
// line of the definition, where clang-tidy reports it.
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr)                                                              \
    auto tmp = (expr);                                                 /* NOLINT(bugprone-macro-parentheses) */ \
    ASSERT_TRUE(tmp.has_value()) << ::coiommu::testing::describe(tmp); /* NOLINT(bugprone-macro-parentheses) */ \
    lhs = std::move(*tmp)                                              /* NOLINT(bugprone-macro-parentheses) */
