// Result<T> / Status: the one error-handling vocabulary of the engine.
//
// Policy (katran's SystemMaybe, without folly):
//  - Every OS-facing or guest-facing call returns Result<T> (or Status = Result<void>) and is
//    [[nodiscard]]. tl::expected is not [[nodiscard]] itself, so every declaration says so.
//  - Error carries the errno (captured on the line of the failing call, before anything else can
//    run) and a context string that grows outward with with_context().
//  - Expected *outcomes* (an overlap, a page already pinned, no space left) are values of the
//    success type, never Errors: callers branch on them.
//  - The engine throws nothing. Third-party code that may throw (TBB allocation, prometheus-cpp,
//    GoogleTest) is caught at the boundary.
//
// Stays source-compatible with std::expected: use and_then / transform / or_else / value_or /
// error(); avoid the tl-only map / map_error. `tl::` is spelled in this file only: code outside it
// says Result, Status, coiommu::unexpected, make_error, COIOMMU_TRY and COIOMMU_ASSIGN_OR_RETURN, so
// moving to C++23's std::expected flips the two aliases below and nothing else.
//
// Propagation in one line:
//   COIOMMU_TRY(backend.map(iova, hva, len), "pin gfn {:#x}", raw(gfn));
//   COIOMMU_ASSIGN_OR_RETURN(auto fd, open_memfd(name), "guest RAM");
// Both evaluate the expression once; on failure they return its Error from the enclosing function
// (which must return some Result<U>), with the optional fmt-style context prefixed.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <tl/expected.hpp>

namespace coiommu {

struct Error {
    int code = 0;         // errno value; validation failures use EINVAL/EFAULT/ERANGE/...
    std::string context;  // "outer: inner: innermost"

    // "context: strerror(code) (errno N)".
    [[nodiscard]] std::string message() const;
};

template <class T>
using Result = tl::expected<T, Error>;
using Status = Result<void>;

// The failure half of a Result: `return coiommu::unexpected(with_context(st.error(), "..."));`.
// A class, not an alias template: clang 14 (the fuzzers' compiler) has no CTAD for alias
// templates. tl::expected accepts it as the tl::unexpected it derives from.
template <class E>
class unexpected : public tl::unexpected<E> {
public:
    using tl::unexpected<E>::unexpected;
};
template <class E>
unexpected(E) -> unexpected<E>;

// Builds the unexpected value for a failure. `err` is an errno value captured by the caller.
[[nodiscard]] inline unexpected<Error> make_error(int err, std::string context) {
    return unexpected<Error>(Error{err, std::move(context)});
}

// Prefixes an outer context: with_context(e, "pin gfn 0x10") -> "pin gfn 0x10: map: ...".
[[nodiscard]] Error with_context(Error e, std::string_view outer);

[[nodiscard]] inline Status ok() { return {}; }

namespace detail {

// The context argument of COIOMMU_TRY / COIOMMU_ASSIGN_OR_RETURN: none, a plain string, or a
// fmt format string with arguments. Evaluated only on the failure path.
inline Error add_context(Error e) { return e; }
inline Error add_context(Error e, std::string_view outer) { return with_context(std::move(e), outer); }
template <class... Args>
requires(sizeof...(Args) > 0) Error add_context(Error e, fmt::format_string<Args...> f, Args&&... args) {
    return with_context(std::move(e), fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace detail

}  // namespace coiommu

#define COIOMMU_CONCAT_INNER_(a, b) a##b
#define COIOMMU_CONCAT_(a, b) COIOMMU_CONCAT_INNER_(a, b)

// Evaluates `expr` (a Result<T> or Status); on failure returns its Error, with context prefixed.
#define COIOMMU_TRY(expr, ...)                                                                                      \
    do {                                                                                                            \
        auto&& coiommu_try_result_ = (expr);                                                                        \
        if (!coiommu_try_result_) [[unlikely]]                                                                      \
            return ::coiommu::unexpected<::coiommu::Error>(                                                         \
                ::coiommu::detail::add_context(std::move(coiommu_try_result_).error() __VA_OPT__(, ) __VA_ARGS__)); \
    } while (0)

#define COIOMMU_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr, ...)                                     \
    auto tmp = (expr);                                                                          \
    if (!tmp) [[unlikely]]                                                                      \
        return ::coiommu::unexpected<::coiommu::Error>(                                         \
            ::coiommu::detail::add_context(std::move(tmp).error() __VA_OPT__(, ) __VA_ARGS__)); \
    lhs = std::move(*tmp)

// Evaluates `expr` (a Result<T>); on failure returns its Error with context prefixed, otherwise
// moves the value into `lhs` (a declaration such as `auto fd` or an existing variable).
#define COIOMMU_ASSIGN_OR_RETURN(lhs, expr, ...)                                           \
    COIOMMU_ASSIGN_OR_RETURN_IMPL_(COIOMMU_CONCAT_(coiommu_assign_result_, __LINE__), lhs, \
                                   expr __VA_OPT__(, ) __VA_ARGS__)

namespace coiommu {}  // namespace coiommu
