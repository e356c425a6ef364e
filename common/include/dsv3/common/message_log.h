// The rank's own messages (dsv3-worker and the engine libraries under it): one line each,
// written whole with one write(2) (info on stdout, warnings and errors on stderr), with a level
// and a time.
//   text: "2026-12-02T19:57:27.123Z <message>"; warnings and errors name the program and
//         the level ("... dsv3-worker: warning: <message>");
//   json: {"time":"2026-12-02T19:57:27.123Z","level":"warning","program":"dsv3-worker","rank":0,
//          "message":"..."}, one object per line, for log shippers.
// The leading time (text) or "time" field (json) is what dsv3d reads to give each rank log
// line its time (`dsv3ctl logs --timestamps --since`); SplitLogStamp is that reader.
//
// Plain C++17 without spdlog, so the engine builds where only PyTorch's LibTorch is (the GPU
// machines); dsv3d and dsv3-agent log through procs/log.h with the same JSON shape.
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dsv3::msg {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

inline constexpr const char* kLevels = "debug, info, warning, error";
inline constexpr const char* kFormats = "text, json";

// "" when `level` and `format` are valid, else the problem naming the flag, the value and
// what is valid. `rank` goes into JSON lines (-1: none).
std::string Setup(const std::string& program, int rank, const std::string& level, const std::string& format);

void Log(Level level, const std::string& message);
inline void Debug(const std::string& m) { Log(Level::kDebug, m); }
inline void Info(const std::string& m) { Log(Level::kInfo, m); }
inline void Warning(const std::string& m) { Log(Level::kWarning, m); }
inline void Error(const std::string& m) { Log(Level::kError, m); }

// "2026-12-02T19:57:27.123Z" (UTC, milliseconds).
std::string LogStamp(std::chrono::system_clock::time_point t);

// A log line's time and its text without the stamp: a text line that starts with a stamp and
// a space, or a JSON line whose first field is "time" (kept whole). No time otherwise.
struct StampedLine {
  std::optional<int64_t> unix_ms;
  std::string_view text;
};
StampedLine SplitLogStamp(std::string_view line);

}  // namespace dsv3::msg
