#include "web/request_parts.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace dsv3::server::web {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool ParseInt(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::string PercentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < text.size() && HexDigit(text[i + 1]) >= 0 && HexDigit(text[i + 2]) >= 0) {
      out += static_cast<char>(HexDigit(text[i + 1]) * 16 + HexDigit(text[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string PathOf(std::string_view target) { return std::string(target.substr(0, target.find('?'))); }

Query ParseQuery(std::string_view target) {
  Query q;
  const auto mark = target.find('?');
  if (mark == std::string_view::npos) return q;
  std::string_view rest = target.substr(mark + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    const std::string name = PercentDecode(pair.substr(0, eq));
    q[name].push_back(eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1)));
  }
  return q;
}

absl::StatusOr<int64_t> IntParam(const Query& query, const std::string& name, int64_t fallback, int64_t min,
                                 int64_t max) {
  auto it = query.find(name);
  if (it == query.end() || it->second.empty()) return fallback;
  const std::string& text = it->second.back();
  int64_t v = 0;
  if (!ParseInt(text, &v) || v < min || v > max) {
    return absl::InvalidArgumentError("query parameter '" + name + "': '" + text + "' is not an integer in [" +
                                      std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return v;
}

std::string CookieValue(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    const auto semi = header.find(';');
    const std::string_view part = Trim(header.substr(0, semi));
    header = semi == std::string_view::npos ? std::string_view() : header.substr(semi + 1);
    const auto eq = part.find('=');
    if (eq != std::string_view::npos && Trim(part.substr(0, eq)) == name) {
      std::string_view value = Trim(part.substr(eq + 1));
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
      return std::string(value);
    }
  }
  return "";
}

absl::StatusOr<std::optional<std::string>> TokenOf(const std::string& authorization, const std::string& cookie) {
  std::string token;
  if (!authorization.empty()) {
    constexpr std::string_view kBearer = "Bearer ";
    if (authorization.rfind(kBearer, 0) != 0) {
      return absl::UnauthenticatedError("the Authorization header must be 'Bearer TOKEN'");
    }
    token = std::string(Trim(std::string_view(authorization).substr(kBearer.size())));
  } else {
    token = CookieValue(cookie, kTokenCookie);
  }
  if (token.empty()) return std::optional<std::string>();
  const bool well_formed = token.size() <= 256 && std::all_of(token.begin(), token.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
  if (!well_formed) return absl::UnauthenticatedError("the token is not valid (it has characters no token has)");
  return std::optional<std::string>(token);
}

std::optional<JobPath> ParseJobPath(std::string_view path, std::string_view prefix) {
  if (path.rfind(prefix, 0) != 0) return std::nullopt;
  std::string_view rest = path.substr(prefix.size());
  const auto slash = rest.find('/');
  JobPath out;
  if (!ParseInt(rest.substr(0, slash), &out.id) || out.id <= 0) return std::nullopt;
  if (slash != std::string_view::npos) out.rest = std::string(rest.substr(slash + 1));
  return out;
}

}  // namespace dsv3::server::web
