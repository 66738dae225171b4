// A strict little JSON parser for the tests of coiommu-load's reports (RFC 8259: objects, arrays,
// strings with escapes, numbers, true/false/null; no trailing commas, no comments). It rejects
// anything malformed, which is the point: a report that python's json module would refuse must
// fail these tests too.
#pragma once

#include <cctype>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace coiommu::loadgen::test {

struct JsonValue;
using JsonObject = std::map<std::string, JsonValue, std::less<>>;
using JsonArray = std::vector<JsonValue>;

struct JsonValue {
    std::variant<std::nullptr_t, bool, double, std::string, JsonArray, JsonObject> v;

    [[nodiscard]] bool is_null() const { return std::holds_alternative<std::nullptr_t>(v); }
    [[nodiscard]] bool is_number() const { return std::holds_alternative<double>(v); }
    [[nodiscard]] bool is_string() const { return std::holds_alternative<std::string>(v); }
    [[nodiscard]] bool is_bool() const { return std::holds_alternative<bool>(v); }
    [[nodiscard]] bool is_array() const { return std::holds_alternative<JsonArray>(v); }
    [[nodiscard]] bool is_object() const { return std::holds_alternative<JsonObject>(v); }
    [[nodiscard]] double number() const { return std::get<double>(v); }
    [[nodiscard]] const std::string& string() const { return std::get<std::string>(v); }
    [[nodiscard]] bool boolean() const { return std::get<bool>(v); }
    [[nodiscard]] const JsonArray& array() const { return std::get<JsonArray>(v); }
    [[nodiscard]] const JsonObject& object() const { return std::get<JsonObject>(v); }
    // The member `key` of an object, or nullptr (also when this is not an object).
    [[nodiscard]] const JsonValue* get(std::string_view key) const {
        if (!is_object()) return nullptr;
        auto it = object().find(key);
        return it == object().end() ? nullptr : &it->second;
    }
    // The member `key`, or a null value when it is missing (then .number() etc. throw, which
    // fails the test that asked).
    [[nodiscard]] const JsonValue& operator[](std::string_view key) const {
        static const JsonValue kMissing{nullptr};
        const JsonValue* found = get(key);
        return found != nullptr ? *found : kMissing;
    }
    // path() as a reference: a null value when missing.
    [[nodiscard]] const JsonValue& at(std::string_view dotted) const {
        static const JsonValue kMissing{nullptr};
        const JsonValue* found = path(dotted);
        return found != nullptr ? *found : kMissing;
    }
    // Follows "a.b.c" through nested objects.
    [[nodiscard]] const JsonValue* path(std::string_view dotted) const {
        const JsonValue* cur = this;
        while (cur != nullptr) {
            const auto dot = dotted.find('.');
            cur = cur->get(dotted.substr(0, dot));
            if (dot == std::string_view::npos) break;
            dotted.remove_prefix(dot + 1);
        }
        return cur;
    }
};

class JsonParser {
public:
    // nullopt when `text` is not exactly one valid JSON value (surrounding whitespace allowed).
    [[nodiscard]] static std::optional<JsonValue> parse(std::string_view text) {
        JsonParser p(text);
        auto v = p.value(0);
        p.ws();
        if (!v || p.i_ != p.s_.size()) return std::nullopt;
        return v;
    }

private:
    explicit JsonParser(std::string_view s) : s_(s) {}

    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
    }
    bool eat(char c) {
        ws();
        if (i_ < s_.size() && s_[i_] == c) {
            ++i_;
            return true;
        }
        return false;
    }
    bool literal(std::string_view word) {
        if (s_.substr(i_, word.size()) != word) return false;
        i_ += word.size();
        return true;
    }

    std::optional<JsonValue> value(int depth) {
        if (depth > 64) return std::nullopt;
        ws();
        if (i_ >= s_.size()) return std::nullopt;
        const char c = s_[i_];
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') {
            auto str = string();
            if (!str) return std::nullopt;
            return JsonValue{std::move(*str)};
        }
        if (literal("true")) return JsonValue{true};
        if (literal("false")) return JsonValue{false};
        if (literal("null")) return JsonValue{nullptr};
        return number();
    }

    std::optional<JsonValue> object(int depth) {
        ++i_;  // '{'
        JsonObject obj;
        if (eat('}')) return JsonValue{std::move(obj)};
        do {
            ws();
            auto key = string();
            if (!key || !eat(':')) return std::nullopt;
            auto v = value(depth + 1);
            if (!v || obj.count(*key) != 0) return std::nullopt;  // duplicate keys are a bug too
            obj.emplace(std::move(*key), std::move(*v));
        } while (eat(','));
        if (!eat('}')) return std::nullopt;
        return JsonValue{std::move(obj)};
    }

    std::optional<JsonValue> array(int depth) {
        ++i_;  // '['
        JsonArray arr;
        if (eat(']')) return JsonValue{std::move(arr)};
        do {
            auto v = value(depth + 1);
            if (!v) return std::nullopt;
            arr.push_back(std::move(*v));
        } while (eat(','));
        if (!eat(']')) return std::nullopt;
        return JsonValue{std::move(arr)};
    }

    std::optional<std::string> string() {
        if (i_ >= s_.size() || s_[i_] != '"') return std::nullopt;
        ++i_;
        std::string out;
        while (i_ < s_.size()) {
            const char c = s_[i_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) return std::nullopt;
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i_ >= s_.size()) return std::nullopt;
            const char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    if (i_ + 4 > s_.size()) return std::nullopt;
                    for (std::size_t k = 0; k < 4; ++k) {
                        if (!std::isxdigit(static_cast<unsigned char>(s_[i_ + k]))) return std::nullopt;
                    }
                    const unsigned long cp = std::strtoul(std::string(s_.substr(i_, 4)).c_str(), nullptr, 16);
                    i_ += 4;
                    out += cp < 0x80 ? static_cast<char>(cp) : '?';  // tests only need ASCII
                    break;
                }
                default: return std::nullopt;
            }
        }
        return std::nullopt;
    }

    std::optional<JsonValue> number() {
        const std::size_t start = i_;
        if (i_ < s_.size() && s_[i_] == '-') ++i_;
        if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) return std::nullopt;
        if (s_[i_] == '0') {
            ++i_;
        } else {
            while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
        }
        if (i_ < s_.size() && s_[i_] == '.') {
            ++i_;
            if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) return std::nullopt;
            while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) return std::nullopt;
            while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
        }
        return JsonValue{std::strtod(std::string(s_.substr(start, i_ - start)).c_str(), nullptr)};
    }

    std::string_view s_;
    std::size_t i_ = 0;
};

}  // namespace coiommu::loadgen::test
