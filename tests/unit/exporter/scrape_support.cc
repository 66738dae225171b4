#include "tests/unit/exporter/scrape_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "engine/base/unique_fd.h"

namespace coiommu::exporter::testing {
namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
    return out;
}

bool parse_double(std::string_view s, double* out) {
    if (s == "+Inf" || s == "Inf") {
        *out = std::numeric_limits<double>::infinity();
        return true;
    }
    if (s == "-Inf") {
        *out = -std::numeric_limits<double>::infinity();
        return true;
    }
    if (s == "NaN" || s == "Nan") {
        *out = std::numeric_limits<double>::quiet_NaN();
        return true;
    }
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && ptr == s.data() + s.size();
}

}  // namespace

Result<uint16_t> free_loopback_port() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(errno, "free_loopback_port: socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        return make_error(errno, "free_loopback_port: bind");
    }
    socklen_t len = sizeof(addr);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return make_error(errno, "free_loopback_port: getsockname");
    }
    return ntohs(addr.sin_port);
}

Result<HttpResponse> http_get(const std::string& host, uint16_t port, const std::string& path, int timeout_ms) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) return make_error(EINVAL, "http_get: host " + host);
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(errno, "http_get: socket");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        return make_error(errno, fmt::format("http_get: connect {}:{}", host, port));
    }
    const std::string req =
        fmt::format("GET {} HTTP/1.0\r\nHost: {}:{}\r\nConnection: close\r\n\r\n", path, host, port);
    std::size_t sent = 0;
    while (sent < req.size()) {
        const ssize_t n = ::send(fd.get(), req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return make_error(errno, "http_get: send");
        }
        sent += static_cast<std::size_t>(n);
    }
    std::string raw;
    char buf[16384];
    for (;;) {
        pollfd p{fd.get(), POLLIN, 0};
        const int r = ::poll(&p, 1, timeout_ms);
        if (r < 0) {
            if (errno == EINTR) continue;
            return make_error(errno, "http_get: poll");
        }
        if (r == 0) return make_error(ETIMEDOUT, "http_get: response timed out");
        const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return make_error(errno, "http_get: recv");
        }
        if (n == 0) break;
        raw.append(buf, static_cast<std::size_t>(n));
    }
    const auto header_end = raw.find("\r\n\r\n");
    if (header_end == std::string::npos || !raw.starts_with("HTTP/1."))
        return make_error(EPROTO, "http_get: no HTTP header");
    HttpResponse resp;
    const auto sp = raw.find(' ');
    if (sp == std::string::npos || sp + 4 > raw.size()) return make_error(EPROTO, "http_get: no status");
    const auto [p, ec] = std::from_chars(raw.data() + sp + 1, raw.data() + sp + 4, resp.status);
    if (ec != std::errc()) return make_error(EPROTO, "http_get: bad status");
    std::string_view headers(raw.data(), header_end);
    std::size_t pos = 0;
    while (pos < headers.size()) {
        auto eol = headers.find("\r\n", pos);
        if (eol == std::string_view::npos) eol = headers.size();
        const std::string_view line = headers.substr(pos, eol - pos);
        const auto colon = line.find(':');
        if (colon != std::string_view::npos && lower(line.substr(0, colon)) == "content-type") {
            std::string_view v = line.substr(colon + 1);
            while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
            resp.content_type = std::string(v);
        }
        pos = eol + 2;
    }
    resp.body = raw.substr(header_end + 4);
    return resp;
}

std::vector<Sample> Exposition::find(std::string_view name, const std::map<std::string, std::string>& match) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
        if (s.name != name) continue;
        bool ok = true;
        for (const auto& [k, v] : match) {
            auto it = s.labels.find(k);
            if (it == s.labels.end() || it->second != v) {
                ok = false;
                break;
            }
        }
        if (ok) out.push_back(s);
    }
    return out;
}

double Exposition::value(std::string_view name, const std::map<std::string, std::string>& match) const {
    const auto found = find(name, match);
    return found.size() == 1 ? found.front().value : std::numeric_limits<double>::quiet_NaN();
}

Result<Exposition> parse_exposition(std::string_view text) {
    Exposition e;
    std::size_t pos = 0;
    int line_no = 0;
    while (pos < text.size()) {
        ++line_no;
        auto eol = text.find('\n', pos);
        if (eol == std::string_view::npos) eol = text.size();
        std::string_view line = text.substr(pos, eol - pos);
        pos = eol + 1;
        if (line.empty()) continue;
        const auto bad = [&](std::string_view why) {
            return make_error(EINVAL, fmt::format("line {}: {}: '{}'", line_no, why, line));
        };
        if (line.front() == '#') {
            if (line.starts_with("# TYPE ") || line.starts_with("# HELP ")) {
                std::string_view rest = line.substr(7);
                const auto sp = rest.find(' ');
                if (sp == std::string_view::npos) return bad("TYPE/HELP without value");
                auto& map = line[2] == 'T' ? e.types : e.help;
                map[std::string(rest.substr(0, sp))] = std::string(rest.substr(sp + 1));
            }
            continue;
        }
        Sample s;
        std::size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
        s.name = std::string(line.substr(0, i));
        if (s.name.empty()) return bad("no metric name");
        if (i < line.size() && line[i] == '{') {
            ++i;
            while (i < line.size() && line[i] != '}') {
                const auto eq = line.find('=', i);
                if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"')
                    return bad("bad label");
                std::string key(line.substr(i, eq - i));
                std::string value;
                std::size_t j = eq + 2;
                for (; j < line.size() && line[j] != '"'; ++j) {
                    if (line[j] == '\\' && j + 1 < line.size()) {
                        ++j;
                        value += line[j] == 'n' ? '\n' : line[j];
                    } else {
                        value += line[j];
                    }
                }
                if (j >= line.size()) return bad("unterminated label value");
                if (!s.labels.emplace(std::move(key), std::move(value)).second) return bad("duplicate label");
                i = j + 1;
                if (i < line.size() && line[i] == ',') ++i;
            }
            if (i >= line.size()) return bad("unterminated label set");
            ++i;  // '}'
        }
        while (i < line.size() && line[i] == ' ') ++i;
        std::string_view value_text = line.substr(i);
        const auto sp = value_text.find(' ');  // an optional timestamp follows
        if (sp != std::string_view::npos) value_text = value_text.substr(0, sp);
        if (!parse_double(value_text, &s.value)) return bad("bad value");
        e.samples.push_back(std::move(s));
    }
    return e;
}

std::vector<std::string> check_histograms(const Exposition& e) {
    std::vector<std::string> problems;
    for (const auto& [family, type] : e.types) {
        if (type != "histogram") continue;
        // Group the family's series by their labels without `le`.
        std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
        for (const Sample& s : e.find(family + "_bucket")) {
            auto labels = s.labels;
            auto le_it = labels.find("le");
            if (le_it == labels.end()) {
                problems.push_back(family + ": bucket without le");
                continue;
            }
            double le = 0;
            if (!parse_double(le_it->second, &le)) problems.push_back(family + ": bad le " + le_it->second);
            labels.erase(le_it);
            buckets[labels].emplace_back(le, s.value);
        }
        if (buckets.empty()) problems.push_back(family + ": no buckets");
        for (auto& [labels, series] : buckets) {
            std::string id = family;
            for (const auto& [k, v] : labels) id += fmt::format(" {}={}", k, v);
            for (std::size_t k = 1; k < series.size(); ++k) {
                if (series[k].first <= series[k - 1].first) problems.push_back(id + ": le bounds not increasing");
                if (series[k].second < series[k - 1].second) problems.push_back(id + ": buckets not cumulative");
            }
            if (series.empty() || !std::isinf(series.back().first)) {
                problems.push_back(id + ": no +Inf bucket");
                continue;
            }
            const auto count = e.find(family + "_count", labels);
            const auto sum = e.find(family + "_sum", labels);
            if (count.size() != 1) problems.push_back(id + ": no _count");
            if (sum.size() != 1) problems.push_back(id + ": no _sum");
            if (count.size() == 1 && count.front().value != series.back().second) {
                problems.push_back(
                    fmt::format("{}: +Inf bucket {} != _count {}", id, series.back().second, count.front().value));
            }
        }
    }
    return problems;
}

Result<PromtoolResult> promtool_check_metrics(const std::string& text) {
    if (std::system("command -v promtool >/dev/null 2>&1") != 0) return make_error(ENOENT, "promtool not installed");
    char path[] = "/tmp/coiommu-metrics-XXXXXX";
    UniqueFd fd(::mkstemp(path));
    if (!fd) return make_error(errno, "mkstemp");
    const std::string file(path);
    std::size_t written = 0;
    while (written < text.size()) {
        const ssize_t n = ::write(fd.get(), text.data() + written, text.size() - written);
        if (n < 0) {
            const int err = errno;
            ::unlink(path);
            return make_error(err, "write metrics file");
        }
        written += static_cast<std::size_t>(n);
    }
    const std::string cmd = fmt::format("promtool check metrics < {} 2>&1", file);
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) {
        const int err = errno;
        ::unlink(path);
        return make_error(err, "popen promtool");
    }
    PromtoolResult r;
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
    const int status = ::pclose(p);
    ::unlink(path);
    r.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

}  // namespace coiommu::exporter::testing
