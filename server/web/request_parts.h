// The pieces of an HTTP request the web room reads: query parameters, a cookie, the caller's
// token (a bearer header or the login cookie). Pure functions, unit-tested.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv3::server::web {

// The login cookie's name.
inline constexpr const char* kTokenCookie = "dsv3_token";

// %XX and '+' decoded; a malformed escape is kept as it is.
std::string PercentDecode(std::string_view text);

// The query string of `target` as name -> values, in order, decoded.
using Query = std::map<std::string, std::vector<std::string>>;
Query ParseQuery(std::string_view target);
// The path of `target` (no query string).
std::string PathOf(std::string_view target);

// One parameter as an integer in [min, max]: `fallback` when absent; an error that names the
// parameter, the value and the range otherwise.
absl::StatusOr<int64_t> IntParam(const Query& query, const std::string& name, int64_t fallback, int64_t min,
                                 int64_t max);

// The value of cookie `name` in a Cookie header, or "".
std::string CookieValue(std::string_view cookie_header, std::string_view name);

// The caller's token: "Authorization: Bearer T" first, then the login cookie; nullopt when
// neither is there. A token that could not be one (characters outside [A-Za-z0-9_-], or
// longer than 256) is an error rather than passed on.
absl::StatusOr<std::optional<std::string>> TokenOf(const std::string& authorization, const std::string& cookie);

// "/api/v1/jobs/12/metrics" with prefix "/api/v1/jobs/" -> {12, "metrics"}; nullopt when the
// part after the prefix does not start with a job id.
struct JobPath {
  int64_t id = 0;
  std::string rest;  // after "<id>/", or "" for the job itself
};
std::optional<JobPath> ParseJobPath(std::string_view path, std::string_view prefix);

}  // namespace dsv3::server::web
