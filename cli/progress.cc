#include "progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "output.h"

namespace dsv3::cli {

Progress::Progress(std::ostream* out, std::string label, double total, std::string unit)
    : out_(out), label_(std::move(label)), unit_(std::move(unit)), total_(total),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { Finish(); }

std::string Progress::Frame(double done, const std::string& note, std::chrono::milliseconds elapsed) const {
  const auto amount = [&](double v) {
    if (unit_ == "B") return HumanBytes(v);
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return std::string(buf) + (unit_.empty() ? "" : " " + unit_);
  };
  const long secs = static_cast<long>(elapsed.count() / 1000);
  std::string frame = label_ + " ";
  if (total_ > 0) {
    constexpr int kWidth = 24;
    const double f = std::min(1.0, std::max(0.0, done / total_));
    const int full = static_cast<int>(std::floor(f * kWidth));
    frame += "[" + std::string(full, '#') + std::string(kWidth - full, '.') + "] ";
    char pct[16];
    std::snprintf(pct, sizeof(pct), "%3.0f%% ", 100 * f);
    frame += pct + amount(done) + " / " + amount(total_);
  } else {
    static const char* kSpin = "|/-\\";
    frame += std::string(1, kSpin[(elapsed.count() / 100) % 4]);
  }
  frame += " " + std::to_string(secs) + " s";
  if (!note.empty()) frame += " " + note;
  return frame;
}

void Progress::Update(double done, const std::string& note, bool force) {
  if (out_ == nullptr) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && frames_ > 0 && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  ++frames_;
  const std::string frame =
      Frame(done, note, std::chrono::duration_cast<std::chrono::milliseconds>(now - start_));
  *out_ << "\r" << frame;
  if (frame.size() < drawn_) *out_ << std::string(drawn_ - frame.size(), ' ');
  out_->flush();
  drawn_ = frame.size();
}

void Progress::Finish() {
  if (out_ == nullptr || drawn_ == 0) return;
  *out_ << "\r" << std::string(drawn_, ' ') << "\r";
  out_->flush();
  drawn_ = 0;
}

std::ostream* ProgressStream(bool json_output) {
  return !json_output && isatty(STDERR_FILENO) != 0 ? &std::cerr : nullptr;
}

}  // namespace dsv3::cli
