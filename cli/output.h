// Output conventions shared by every dsv3ctl verb: exit codes, --output, number formats.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace dsv3::cli {

// Exit codes (CONVENTIONS.md): scripts branch on these.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;       // invalid config, failed request, failed job
inline constexpr int kExitUsage = 2;        // bad command line
inline constexpr int kExitUnreachable = 3;  // cannot reach the controller

enum class OutputFormat { kText, kJson };

// Adds `--output text|json` to a verb.
void AddOutputOption(CLI::App& verb, OutputFormat& format);

// 671026404352 -> "671.03B"; below 1000 the number itself.
std::string HumanCount(double n);
// 123456789 -> "123,456,789"
std::string Grouped(int64_t n);
// bytes -> "12.5 GiB"
std::string HumanBytes(double bytes);
// FLOPs -> "1.23 TFLOP"
std::string HumanFlops(double flops);

// A plain aligned table: the first row is the header, columns after the first are
// right-aligned. Rows with a single cell are section titles. Colour codes take no width.
std::string RenderTable(const std::vector<std::vector<std::string>>& rows);

// Colour only on a terminal, never with NO_COLOR set to anything (no-color.org) or TERM=dumb.
bool ColorWanted(bool terminal, const char* no_color, const char* term);
// ColorWanted for `out`: true only when it is std::cout and that is a terminal.
bool UseColor(const std::ostream& out);
// `text` in the SGR colour `sgr` (e.g. "32" green) when `color`, else `text` itself.
std::string Paint(const std::string& text, const char* sgr, bool color);

}  // namespace dsv3::cli
