// Test support for the exporter: a tiny HTTP/1.0 GET client over a loopback socket and a parser
// for the Prometheus text exposition format (0.0.4), good enough to check what we emit.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace coiommu::exporter::testing {

struct HttpResponse {
    int status = 0;
    std::string content_type;
    std::string body;
};

// GET http://host:port/path with a timeout. Errors: errno of the failing socket call,
// ETIMEDOUT, EPROTO (unparseable response).
[[nodiscard]] Result<HttpResponse> http_get(const std::string& host, uint16_t port, const std::string& path,
                                            int timeout_ms = 5000);

// A loopback TCP port that was free a moment ago (bound to port 0, then closed): for a child
// process that must be told its --metrics-address. Errors: errno of socket/bind/getsockname.
[[nodiscard]] Result<uint16_t> free_loopback_port();

struct Sample {
    std::string name;                           // full sample name, e.g. x_bucket, x_count
    std::map<std::string, std::string> labels;  // unescaped values
    double value = 0;
};

struct Exposition {
    std::map<std::string, std::string> types;  // family name -> counter|gauge|histogram|...
    std::map<std::string, std::string> help;   // family name -> help text
    std::vector<Sample> samples;

    // Samples with this exact name whose labels include every pair in `match`.
    [[nodiscard]] std::vector<Sample> find(std::string_view name,
                                           const std::map<std::string, std::string>& match = {}) const;
    // The single matching sample's value; NaN if none or several match.
    [[nodiscard]] double value(std::string_view name, const std::map<std::string, std::string>& match = {}) const;
};

// Errors: EINVAL with the line number and what is wrong.
[[nodiscard]] Result<Exposition> parse_exposition(std::string_view text);

// For every histogram family: buckets are cumulative (non-decreasing in `le`), the `+Inf` bucket
// exists and equals `_count`, `_sum` exists. Returns the violations (empty = fine).
[[nodiscard]] std::vector<std::string> check_histograms(const Exposition& e);

// Runs `promtool check metrics` over `text`. Returns {exit status, combined output}.
// Errors: ENOENT when promtool is not installed.
struct PromtoolResult {
    int exit_status = -1;
    std::string output;
};
[[nodiscard]] Result<PromtoolResult> promtool_check_metrics(const std::string& text);

}  // namespace coiommu::exporter::testing
