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
// error(); avoid the tl-only map / map_error, so moving to C++23 only flips the alias.
#pragma once

#include <string>
#include <string_view>
#include <utility>

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

// Builds the unexpected value for a failure. `err` is an errno value captured by the caller.
[[nodiscard]] inline tl::unexpected<Error> make_error(int err, std::string context) {
    return tl::unexpected<Error>(Error{err, std::move(context)});
}

// Prefixes an outer context: with_context(e, "pin gfn 0x10") -> "pin gfn 0x10: map: ...".
[[nodiscard]] Error with_context(Error e, std::string_view outer);

[[nodiscard]] inline Status ok() { return {}; }

}  // namespace coiommu
