#include "output.h"

#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <iostream>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace dsv3::cli {

void AddOutputOption(CLI::App& verb, OutputFormat& format) {
  static const std::map<std::string, OutputFormat> kFormats = {{"text", OutputFormat::kText},
                                                               {"json", OutputFormat::kJson}};
  verb.add_option("--output,-O", format, "Output format: text (for people) or json (for scripts)")
      ->transform(CLI::CheckedTransformer(kFormats, CLI::ignore_case))
      ->default_str("text");
}

namespace {
std::string Scaled(double value, const char* const* units, int count, double base, int decimals) {
  int i = 0;
  double v = value;
  while (std::fabs(v) >= base && i < count - 1) {
    v /= base;
    ++i;
  }
  char buf[64];
  if (i == 0 && std::floor(v) == v) {
    std::snprintf(buf, sizeof buf, "%.0f%s", v, units[0]);
  } else {
    std::snprintf(buf, sizeof buf, "%.*f%s", decimals, v, units[i]);
  }
  return buf;
}
}  // namespace

std::string HumanCount(double n) {
  static const char* const kUnits[] = {"", "K", "M", "B", "T"};
  return Scaled(n, kUnits, 5, 1000.0, 2);
}

std::string HumanBytes(double bytes) {
  static const char* const kUnits[] = {" B", " KiB", " MiB", " GiB", " TiB"};
  return Scaled(bytes, kUnits, 5, 1024.0, 2);
}

std::string HumanFlops(double flops) {
  static const char* const kUnits[] = {" FLOP",  " KFLOP", " MFLOP", " GFLOP", " TFLOP",
                                       " PFLOP", " EFLOP", " ZFLOP", " YFLOP"};
  return Scaled(flops, kUnits, 9, 1000.0, 2);
}

std::string Grouped(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

namespace {

// Terminal columns of UTF-8 text (sparklines are 3 bytes a column); SGR colour codes
// (ESC [ ... m) take none.
size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\033' && i + 1 < s.size() && s[i + 1] == '[') {
      i += 2;
      while (i < s.size() && s[i] != 'm') ++i;
      continue;
    }
    n += (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 ? 1 : 0;
  }
  return n;
}

// Numbers, counts, ratios and durations start with a digit, a sign or are "-".
bool LooksNumeric(const std::string& s) {
  return s.empty() || std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+';
}

}  // namespace

bool ColorWanted(bool terminal, const char* no_color, const char* term) {
  if (!terminal) return false;
  if (no_color != nullptr && *no_color != '\0') return false;
  return term == nullptr || std::string(term) != "dumb";
}

bool UseColor(const std::ostream& out) {
  return &out == &std::cout && ColorWanted(isatty(STDOUT_FILENO) != 0, std::getenv("NO_COLOR"), std::getenv("TERM"));
}

std::string Paint(const std::string& text, const char* sgr, bool color) {
  return color ? std::string("\033[") + sgr + "m" + text + "\033[0m" : text;
}

std::string RenderTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  std::vector<bool> right;  // a column is right-aligned when every body cell is numeric
  bool header = true;
  for (const auto& row : rows) {
    if (row.size() < 2) continue;
    if (width.size() < row.size()) {
      width.resize(row.size(), 0);
      right.resize(row.size(), true);
    }
    for (size_t i = 0; i < row.size(); ++i) {
      width[i] = std::max(width[i], DisplayWidth(row[i]));
      if (!header && !LooksNumeric(row[i])) right[i] = false;
    }
    header = false;
  }
  std::string out;
  for (const auto& row : rows) {
    if (row.size() < 2) {
      out += (row.empty() ? "" : row[0]) + "\n";
      continue;
    }
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string pad(width[i] - DisplayWidth(row[i]), ' ');
      if (i == 0) {
        out += row[i] + pad;
      } else {
        out += right[i] ? "  " + pad + row[i] : "  " + row[i] + pad;
      }
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += "\n";
  }
  return out;
}

}  // namespace dsv3::cli
