// The log of dsv3d and dsv3-agent: spdlog underneath, one line per message on stderr, with a
// level (--log-level debug|info|warning|error) and a format (--log-format):
//   text: "2026-12-02 16:31:00.123 dsv3d: warning: <message>" (levels other than info are named);
//         under systemd (JOURNAL_STREAM points at stderr) no time, and a "<4>" priority prefix
//         that journald turns into the entry's priority (`journalctl -p warning` works);
//   json: {"time":"2026-12-02T16:31:00.123Z","level":"warning","program":"dsv3d","message":...}
//         one object per line, for log shippers (Loki, Vector, Fluent Bit).
// Thread-safe. Before Setup, messages go out as text at level info.
#pragma once

#include <string>

namespace dsv3::log {

inline constexpr const char* kLevels = "debug, info, warning, error";
inline constexpr const char* kFormats = "text, json";

// "" when `level` and `format` are valid, else the problem naming the value and what is valid.
std::string Setup(const std::string& program, const std::string& level, const std::string& format);

void Debug(const std::string& message);
void Info(const std::string& message);
void Warning(const std::string& message);
void Error(const std::string& message);

}  // namespace dsv3::log
