#include "engine/base/log.h"

#include <unistd.h>

#include <ctime>
#include <mutex>

namespace coiommu::log {

namespace detail {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
}  // namespace detail

namespace {

std::atomic<bool> g_priority_prefix{false};
std::mutex g_sink_mutex;  // guards g_sink only; the stderr path takes no lock
Sink g_sink;
std::atomic<bool> g_has_sink{false};

constexpr std::string_view name_of(Level l) {
    switch (l) {
        case Level::Debug: return "DEBUG";
        case Level::Info: return "INFO";
        case Level::Warn: return "WARN";
        case Level::Error: return "ERROR";
        case Level::Off: break;
    }
    return "OFF";
}

// syslog priorities: err 3, warning 4, info 6, debug 7.
constexpr int priority_of(Level l) {
    switch (l) {
        case Level::Debug: return 7;
        case Level::Info: return 6;
        case Level::Warn: return 4;
        case Level::Error: return 3;
        case Level::Off: break;
    }
    return 6;
}

uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

void set_level(Level l) { detail::g_level.store(static_cast<int>(l), std::memory_order_relaxed); }
Level level() { return static_cast<Level>(detail::g_level.load(std::memory_order_relaxed)); }

std::string_view level_name(Level level) {
    switch (level) {
        case Level::Debug: return "debug";
        case Level::Info: return "info";
        case Level::Warn: return "warn";
        case Level::Error: return "error";
        case Level::Off: return "off";
    }
    return "?";
}

bool parse_level(std::string_view text, Level* out) {
    static constexpr std::pair<std::string_view, Level> kNames[] = {{"debug", Level::Debug}, {"info", Level::Info},
                                                                    {"warn", Level::Warn},   {"warning", Level::Warn},
                                                                    {"error", Level::Error}, {"off", Level::Off}};
    for (const auto& [name, l] : kNames) {
        if (text == name) {
            *out = l;
            return true;
        }
    }
    return false;
}

void set_priority_prefix(bool on) { g_priority_prefix.store(on, std::memory_order_relaxed); }

void set_sink(Sink sink) {
    std::lock_guard lock(g_sink_mutex);
    g_sink = std::move(sink);
    g_has_sink.store(static_cast<bool>(g_sink), std::memory_order_release);
}

void write(Level l, std::string_view component, std::string_view message) {
    if (g_has_sink.load(std::memory_order_acquire)) {
        std::lock_guard lock(g_sink_mutex);
        if (g_sink) {
            g_sink(l, component, message);
            return;
        }
    }
    std::string line;
    if (g_priority_prefix.load(std::memory_order_relaxed)) {
        line = fmt::format("<{}>", priority_of(l));
    }
    line += fmt::format("{} {}: {}\n", name_of(l), component, message);
    // One write(2) per line so concurrent lines never interleave. A failed log write has
    // nowhere to be reported; it is dropped.
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

bool RateLimiter::allow(uint64_t* suppressed) {
    const uint64_t now = now_ns();
    uint64_t start = window_start_ns_.load(std::memory_order_relaxed);
    if (now - start >= period_ns_ && window_start_ns_.compare_exchange_strong(start, now, std::memory_order_relaxed)) {
        in_window_.store(0, std::memory_order_relaxed);
    }
    if (in_window_.fetch_add(1, std::memory_order_relaxed) < burst_) {
        *suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
        return true;
    }
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
}

}  // namespace coiommu::log
