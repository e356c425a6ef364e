// A progress line for the verbs that make people wait (cancel --wait, export-hf, data
// train-tokenizer): redrawn in place on stderr, at most ten times a second, and only when
// stderr is a terminal; never with --output json. Piped or captured output stays as it was.
#pragma once

#include <chrono>
#include <ostream>
#include <string>

namespace dsv3::cli {

class Progress {
 public:
  // `out`: where to draw (stderr), or nullptr for none. `total` > 0 draws a bar of done/total
  // in `unit` ("B" prints bytes as KB/MB/GB); otherwise a spinner with the elapsed time.
  Progress(std::ostream* out, std::string label, double total = 0, std::string unit = "");
  ~Progress();  // clears the line

  // Redraws when 100 ms have passed since the last frame (or `force`).
  void Update(double done, const std::string& note = "", bool force = false);
  // Clears the line (the caller prints the outcome).
  void Finish();

  // The frame for `done` after `elapsed`; what Update draws after "\r" (tested).
  std::string Frame(double done, const std::string& note, std::chrono::milliseconds elapsed) const;

 private:
  std::ostream* out_;
  const std::string label_, unit_;
  const double total_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_{};
  size_t drawn_ = 0;  // width of the last frame, to blank it
  int frames_ = 0;
};

// stderr when it is a terminal and the output is not JSON, else nullptr.
std::ostream* ProgressStream(bool json_output);

}  // namespace dsv3::cli
