#include "json_line.h"

#include <cstdint>
#include <cstring>

namespace dsv3::data::internal {
namespace {

constexpr int kMaxDepth = 512;

class Scanner {
 public:
  explicit Scanner(std::string_view s) : p_(s.data()), end_(s.data() + s.size()) {}

  bool Document(DolmaFields& out) {
    SkipSpace();
    if (p_ < end_ && *p_ == '{') {
      out.is_object = true;
      if (!TopObject(out)) return false;
    } else if (!Value(0)) {
      return false;
    }
    SkipSpace();
    return p_ == end_;
  }

 private:
  void SkipSpace() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  bool Hex4(uint32_t& v) {
    if (end_ - p_ < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = Hex(p_[i]);
      if (h < 0) return false;
      v = v * 16 + static_cast<uint32_t>(h);
    }
    p_ += 4;
    return true;
  }

  static void AppendUtf8(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Length of a valid UTF-8 sequence starting at p (RFC 3629), 0 if invalid.
  size_t Utf8Length(const unsigned char* p) const {
    const size_t left = static_cast<size_t>(end_ - reinterpret_cast<const char*>(p));
    const unsigned char c = p[0];
    const auto cont = [&](size_t i) { return i < left && (p[i] & 0xC0) == 0x80; };
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
      if (c == 0xED && p[1] > 0x9F) return 0;  // surrogates
      return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      if (c == 0xF0 && p[1] < 0x90) return 0;
      if (c == 0xF4 && p[1] > 0x8F) return 0;
      return 4;
    }
    return 0;
  }

  // A string at p_ (which points at '"'); decoded into *out when out is not null.
  bool String(std::string* out) {
    ++p_;
    while (true) {
      // Copy runs of plain bytes at once: this is where Dolma lines spend their length.
      const char* run = p_;
      while (p_ < end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20 &&
             static_cast<unsigned char>(*p_) < 0x80) {
        ++p_;
      }
      if (out != nullptr) out->append(run, static_cast<size_t>(p_ - run));
      if (p_ >= end_) return false;
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (c >= 0x80) {
        const size_t n = Utf8Length(reinterpret_cast<const unsigned char*>(p_));
        if (n == 0) return false;
        if (out != nullptr) out->append(p_, n);
        p_ += n;
        continue;
      }
      // Escape.
      if (++p_ >= end_) return false;
      const char e = *p_++;
      char plain = 0;
      switch (e) {
        case '"': plain = '"'; break;
        case '\\': plain = '\\'; break;
        case '/': plain = '/'; break;
        case 'b': plain = '\b'; break;
        case 'f': plain = '\f'; break;
        case 'n': plain = '\n'; break;
        case 'r': plain = '\r'; break;
        case 't': plain = '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // high surrogate: a low one must follow
            uint32_t low = 0;
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return false;
            p_ += 2;
            if (!Hex4(low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;  // a lone low surrogate
          }
          if (out != nullptr) AppendUtf8(cp, *out);
          continue;
        }
        default: return false;
      }
      if (out != nullptr) *out += plain;
    }
  }

  bool Number() {
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ >= end_) return false;
    if (*p_ == '0') {
      ++p_;
    } else if (*p_ >= '1' && *p_ <= '9') {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    } else {
      return false;
    }
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    return true;
  }

  bool Literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
    p_ += n;
    return true;
  }

  bool Value(int depth) {
    if (depth > kMaxDepth) return false;
    SkipSpace();
    if (p_ >= end_) return false;
    switch (*p_) {
      case '"': return String(nullptr);
      case '{': return Object(depth);
      case '[': return Array(depth);
      case 't': return Literal("true");
      case 'f': return Literal("false");
      case 'n': return Literal("null");
      default: return Number();
    }
  }

  bool Array(int depth) {
    ++p_;
    SkipSpace();
    if (p_ < end_ && *p_ == ']') {
      ++p_;
      return true;
    }
    while (true) {
      if (!Value(depth + 1)) return false;
      SkipSpace();
      if (p_ >= end_) return false;
      if (*p_ == ']') {
        ++p_;
        return true;
      }
      if (*p_++ != ',') return false;
    }
  }

  // The members of an object at p_ ('{'); on_value(key) consumes each member's value.
  template <class OnValue>
  bool Members(std::string* key, OnValue&& on_value) {
    ++p_;
    SkipSpace();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      return true;
    }
    while (true) {
      SkipSpace();
      if (key != nullptr) key->clear();
      if (p_ >= end_ || *p_ != '"' || !String(key)) return false;
      SkipSpace();
      if (p_ >= end_ || *p_++ != ':') return false;
      SkipSpace();
      if (!on_value()) return false;
      SkipSpace();
      if (p_ >= end_) return false;
      if (*p_ == '}') {
        ++p_;
        return true;
      }
      if (*p_++ != ',') return false;
    }
  }

  bool Object(int depth) {
    return Members(nullptr, [&] { return Value(depth + 1); });
  }

  // The top-level object: keeps "text" and "id". For a repeated key the last one wins, as
  // in nlohmann_json.
  bool TopObject(DolmaFields& out) {
    std::string key;
    return Members(&key, [&] {
      if (key == "text") {
        out.has_text = true;
        out.text_is_string = p_ < end_ && *p_ == '"';
        out.text.clear();
        return out.text_is_string ? String(&out.text) : Value(1);
      }
      if (key == "id") {
        out.id.clear();
        if (p_ < end_ && *p_ == '"') return String(&out.id);
        const char* start = p_;
        if (!Value(1)) return false;
        out.id.assign(start, static_cast<size_t>(p_ - start));
        return true;
      }
      return Value(1);
    });
  }

  const char* p_;
  const char* end_;
};

}  // namespace

std::string ScanDolmaLine(std::string_view line, DolmaFields& out) {
  out = DolmaFields{};
  Scanner scanner(line);
  return scanner.Document(out) ? "" : "malformed JSON";
}

}  // namespace dsv3::data::internal
