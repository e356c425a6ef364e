#include "dsv3/common/message_log.h"

#include <unistd.h>

#include <atomic>
#include <ctime>
#include <mutex>

#include <nlohmann/json.hpp>

namespace dsv3::msg {
namespace {

struct Settings {
  std::string program = "dsv3-worker";
  int rank = -1;
  Level level = Level::kInfo;
  bool json = false;
};

std::mutex g_mu;
Settings g_settings;

const char* LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kWarning: return "warning";
    case Level::kError: return "error";
    default: return "info";
  }
}

bool Digits(std::string_view s, size_t at, size_t n, int* out) {
  int v = 0;
  for (size_t i = at; i < at + n; ++i) {
    if (i >= s.size() || s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ" at the start of `s`, as Unix milliseconds.
std::optional<int64_t> ParseStamp(std::string_view s) {
  if (s.size() < 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' ||
      s[23] != 'Z') {
    return std::nullopt;
  }
  int y, mo, d, h, mi, se, ms;
  if (!Digits(s, 0, 4, &y) || !Digits(s, 5, 2, &mo) || !Digits(s, 8, 2, &d) || !Digits(s, 11, 2, &h) ||
      !Digits(s, 14, 2, &mi) || !Digits(s, 17, 2, &se) || !Digits(s, 20, 3, &ms)) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  return static_cast<int64_t>(timegm(&tm)) * 1000 + ms;
}

}  // namespace

std::string Setup(const std::string& program, int rank, const std::string& level, const std::string& format) {
  Settings s;
  s.program = program;
  s.rank = rank;
  if (level == "debug") s.level = Level::kDebug;
  else if (level == "info") s.level = Level::kInfo;
  else if (level == "warning" || level == "warn") s.level = Level::kWarning;
  else if (level == "error") s.level = Level::kError;
  else return "--log-level: \"" + level + "\" is not a level; valid: " + kLevels;
  if (format == "json") s.json = true;
  else if (format != "text") return "--log-format: \"" + format + "\" is not a format; valid: " + kFormats;
  std::lock_guard<std::mutex> lock(g_mu);
  g_settings = s;
  return "";
}

std::string LogStamp(std::chrono::system_clock::time_point t) {
  const auto ms_total = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms_total / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof(out), "%.*s.%03dZ", static_cast<int>(n), buf, static_cast<int>(ms_total % 1000));
  return out;
}

void Log(Level level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mu);
  const Settings& s = g_settings;
  if (level < s.level) return;
  const std::string stamp = LogStamp(std::chrono::system_clock::now());
  std::string line;
  if (s.json) {
    nlohmann::ordered_json j = {{"time", stamp}, {"level", LevelName(level)}, {"program", s.program}};
    if (s.rank >= 0) j["rank"] = s.rank;
    j["message"] = message;
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    // Warnings and errors name the program, as the daemons' lines do; training lines do not.
    line = stamp + " " + (level == Level::kInfo ? "" : s.program + ": " + LevelName(level) + ": ") + message;
  }
  line += '\n';
  // One write per line: lines of threads and of ranks sharing a file never interleave. Info
  // goes to stdout (the training lines a user pipes), warnings and errors to stderr.
  const int fd = level >= Level::kWarning ? STDERR_FILENO : STDOUT_FILENO;
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = write(fd, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

StampedLine SplitLogStamp(std::string_view line) {
  if (auto ms = ParseStamp(line); ms && line.size() > 24 && line[24] == ' ') return {ms, line.substr(25)};
  constexpr std::string_view kJsonTime = "{\"time\":\"";
  if (line.rfind(kJsonTime, 0) == 0) {
    if (auto ms = ParseStamp(line.substr(kJsonTime.size()))) return {ms, line};
  }
  return {std::nullopt, line};
}

}  // namespace dsv3::msg
