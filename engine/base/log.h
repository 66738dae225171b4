// The logging facade: one place, levels, a component label, stderr by default.
//
//   CLOG_ERROR("pin", "gfn {:#x} outside guest RAM", raw(gfn));
//   CLOG_ERROR_RL("pin", ...)   // rate-limited per call site: a hostile guest cannot flood logs
//
// Lines are "LEVEL component: message" on stderr (journald adds its own timestamps and maps
// the <N> priority prefix when COIOMMU_LOG_PRIORITY_PREFIX is set by the daemon).
// Formatting happens only when the level is enabled. Thread-safe: each line is one write(2).
// Tests may install a capture sink.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace coiommu::log {

enum class Level : int { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

void set_level(Level level);
[[nodiscard]] Level level();
[[nodiscard]] inline bool enabled(Level l);
// Parses "debug|info|warn|error|off"; false when unknown.
[[nodiscard]] bool parse_level(std::string_view text, Level* out);
// "debug", "info", "warn", "error" or "off".
[[nodiscard]] std::string_view level_name(Level level);
// Prefix each line with the syslog priority "<N>" (journald-friendly).
void set_priority_prefix(bool on);

using Sink = std::function<void(Level, std::string_view component, std::string_view message)>;
// Replaces the stderr sink (nullptr restores it). Not for hot paths; tests use it.
void set_sink(Sink sink);

void write(Level level, std::string_view component, std::string_view message);

namespace detail {
extern std::atomic<int> g_level;
}  // namespace detail

inline bool enabled(Level l) { return static_cast<int>(l) >= detail::g_level.load(std::memory_order_relaxed); }

template <class... Args>
void logf(Level l, std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
    if (!enabled(l)) return;
    write(l, component, fmt::format(f, std::forward<Args>(args)...));
}

// Allows at most `burst` lines per `period_ns`, then counts suppressed lines and reports them
// with the next allowed line. Lock-free; one static instance per call site.
class RateLimiter {
public:
    constexpr RateLimiter(uint32_t burst, uint64_t period_ns) : burst_(burst), period_ns_(period_ns) {}
    // True if a line may be written now; *suppressed receives how many were dropped before it.
    bool allow(uint64_t* suppressed);

private:
    const uint32_t burst_;
    const uint64_t period_ns_;
    std::atomic<uint64_t> window_start_ns_{0};
    std::atomic<uint32_t> in_window_{0};
    std::atomic<uint64_t> suppressed_{0};
};

template <class... Args>
void logf_limited(RateLimiter& rl, Level l, std::string_view component, fmt::format_string<Args...> f, Args&&... args) {
    if (!enabled(l)) return;
    uint64_t suppressed = 0;
    if (!rl.allow(&suppressed)) return;
    std::string msg = fmt::format(f, std::forward<Args>(args)...);
    if (suppressed != 0) msg += fmt::format(" ({} similar lines suppressed)", suppressed);
    write(l, component, msg);
}

}  // namespace coiommu::log

#define CLOG_DEBUG(comp, ...) ::coiommu::log::logf(::coiommu::log::Level::Debug, comp, __VA_ARGS__)
#define CLOG_INFO(comp, ...) ::coiommu::log::logf(::coiommu::log::Level::Info, comp, __VA_ARGS__)
#define CLOG_WARN(comp, ...) ::coiommu::log::logf(::coiommu::log::Level::Warn, comp, __VA_ARGS__)
#define CLOG_ERROR(comp, ...) ::coiommu::log::logf(::coiommu::log::Level::Error, comp, __VA_ARGS__)

// At most 10 lines per second per call site.
#define CLOG_LIMITED_(lvl, comp, ...)                                                          \
    do {                                                                                       \
        static ::coiommu::log::RateLimiter clog_rl_{10, 1000000000ull};                        \
        ::coiommu::log::logf_limited(clog_rl_, ::coiommu::log::Level::lvl, comp, __VA_ARGS__); \
    } while (0)
#define CLOG_WARN_RL(comp, ...) CLOG_LIMITED_(Warn, comp, __VA_ARGS__)
#define CLOG_ERROR_RL(comp, ...) CLOG_LIMITED_(Error, comp, __VA_ARGS__)
