#include "checkpoint/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace loom::checkpoint {
namespace {

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  Json parse_document() {
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    LOOM_THROW(InvalidArgument, "JSON parse error at byte ", pos_, ": ", what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool consume_literal(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s_.compare(pos_, n, lit) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  Json parse_value(int depth) {
    if (depth > 64) fail("nesting deeper than 64");
    char c = peek();
    if (c == '{') {
      ++pos_;
      Json obj = Json::object();
      if (peek() == '}') {
        ++pos_;
        return obj;
      }
      while (true) {
        if (peek() != '"') fail("expected a string key");
        std::string key = parse_string();
        expect(':');
        obj.set(key, parse_value(depth + 1));
        char d = peek();
        ++pos_;
        if (d == '}') return obj;
        if (d != ',') fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      ++pos_;
      Json arr = Json::array();
      if (peek() == ']') {
        ++pos_;
        return arr;
      }
      while (true) {
        arr.push(parse_value(depth + 1));
        char d = peek();
        ++pos_;
        if (d == ']') return arr;
        if (d != ',') fail("expected ',' or ']'");
      }
    }
    if (c == '"') return Json(parse_string());
    if (consume_literal("true")) return Json(true);
    if (consume_literal("false")) return Json(false);
    if (consume_literal("null")) return Json();
    return parse_number();
  }
  Json parse_number() {
    const char* begin = s_.c_str() + pos_;
    char* end = nullptr;
    double d = std::strtod(begin, &end);
    if (end == begin) fail("expected a value");
    pos_ += static_cast<size_t>(end - begin);
    return Json(d);
  }
  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned cp = static_cast<unsigned>(std::strtoul(s_.substr(pos_, 4).c_str(), nullptr, 16));
          pos_ += 4;
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          } else {
            out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          }
          break;
        }
        default:
          fail("bad escape");
      }
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
};

void dump_string(const std::string& s, std::string& out) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void dump_value(const Json& v, std::string& out) {
  switch (v.kind()) {
    case Json::Kind::kNull:
      out += "null";
      break;
    case Json::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      break;
    case Json::Kind::kNumber: {
      double d = v.as_number();
      char buf[32];
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.007199254740992e15)
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(d));
      else if (std::isfinite(d))
        std::snprintf(buf, sizeof buf, "%.17g", d);
      else
        std::snprintf(buf, sizeof buf, "null");
      out += buf;
      break;
    }
    case Json::Kind::kString:
      dump_string(v.as_string(), out);
      break;
    case Json::Kind::kArray: {
      out.push_back('[');
      bool first = true;
      for (const Json& e : v.elements()) {
        if (!first) out.push_back(',');
        first = false;
        dump_value(e, out);
      }
      out.push_back(']');
      break;
    }
    case Json::Kind::kObject: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, e] : v.items()) {
        if (!first) out.push_back(',');
        first = false;
        dump_string(k, out);
        out.push_back(':');
        dump_value(e, out);
      }
      out.push_back('}');
      break;
    }
  }
}

}  // namespace

Json Json::parse(const std::string& text) { return Parser(text).parse_document(); }

double Json::as_number() const {
  LOOM_CHECK(kind_ == Kind::kNumber, "json: expected a number");
  return number_;
}
const std::string& Json::as_string() const {
  LOOM_CHECK(kind_ == Kind::kString, "json: expected a string");
  return string_;
}
bool Json::as_bool() const {
  LOOM_CHECK(kind_ == Kind::kBool, "json: expected true or false");
  return bool_;
}
const std::vector<Json>& Json::elements() const {
  LOOM_CHECK(kind_ == Kind::kArray, "json: expected an array");
  return array_;
}
const std::vector<std::pair<std::string, Json>>& Json::items() const {
  LOOM_CHECK(kind_ == Kind::kObject, "json: expected an object");
  return object_;
}
const Json* Json::find(const std::string& key) const {
  if (kind_ != Kind::kObject) return nullptr;
  for (const auto& [k, v] : object_)
    if (k == key) return &v;
  return nullptr;
}
const Json& Json::at(const std::string& key, const std::string& context) const {
  const Json* v = find(key);
  LOOM_CHECK(v != nullptr, context, ": missing key '", key, "'");
  return *v;
}
void Json::push(Json v) {
  LOOM_CHECK(kind_ == Kind::kArray, "json: push on a non-array");
  array_.push_back(std::move(v));
}
void Json::set(const std::string& key, Json v) {
  LOOM_CHECK(kind_ == Kind::kObject, "json: set on a non-object");
  for (auto& [k, e] : object_)
    if (k == key) {
      e = std::move(v);
      return;
    }
  object_.emplace_back(key, std::move(v));
}
std::string Json::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

}  // namespace loom::checkpoint
