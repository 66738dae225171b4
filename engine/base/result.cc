#include "engine/base/result.h"

#include <cstring>

#include <fmt/format.h>

namespace coiommu {

std::string Error::message() const {
    if (code == 0) return context;
    // strerror_r (GNU) may return a static string instead of filling the buffer.
    char buf[128];
    const char* text = ::strerror_r(code, buf, sizeof buf);
    return fmt::format("{}: {} (errno {})", context, text, code);
}

Error with_context(Error e, std::string_view outer) {
    if (e.context.empty()) {
        e.context = std::string(outer);
    } else {
        e.context = fmt::format("{}: {}", outer, e.context);
    }
    return e;
}

}  // namespace coiommu
