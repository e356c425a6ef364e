// How the trainer tells the world what it does. The trainer knows nothing of RPC: the worker
// binary plugs in reporters (console, metrics.jsonl, TensorBoard here; the controller's gRPC
// reporter later). Calls come from the training thread, in order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dsv3::train {

struct RunInfo {
  std::string experiment;
  int64_t parameters = 0, activated_parameters = 0;
  int64_t start_step = 0, train_steps = 0, tokens_planned = 0, tokens_per_step = 0;
  int64_t gradient_accumulation_steps = 1;
  double flops_per_token = 0, peak_flops = 0;
  int rank = 0, world_size = 1, threads = 1;
  std::string precision, device, output_dir, checkpoint_dir, resumed_from;
  std::string weights_from;  // the HF directory the initial weights came from ("" = random)
};

struct StepMetrics {
  int64_t step = 0;  // steps completed
  std::vector<std::pair<std::string, double>> values;  // in a stable order
  double Get(const std::string& name) const;
};

struct EvalResult {
  int64_t step = 0;
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
  std::vector<std::pair<std::string, double>> per_source_loss;
  std::string sample_prompt, sample;
};

struct CheckpointEvent {
  int64_t step = 0;
  std::string path;
  double seconds = 0;  // blocking time of the training loop
  bool async = false;
  std::string reason;  // interval | signal | final | request
};

class Reporter {
 public:
  virtual ~Reporter() = default;
  virtual void OnStart(const RunInfo&) {}
  virtual void OnMetrics(const StepMetrics&) {}
  virtual void OnEval(const EvalResult&) {}
  virtual void OnCheckpoint(const CheckpointEvent&) {}
  virtual void OnMessage(const std::string&) {}  // human-readable notes (resume, warnings)
  virtual void OnEnd(int64_t, const std::string&) {}
};

// One readable line per log step to stdout.
std::unique_ptr<Reporter> MakeConsoleReporter();
// <output_dir>/metrics.jsonl: one JSON object per metrics step, eval and checkpoint.
std::unique_ptr<Reporter> MakeJsonlReporter(const std::string& path);
// TensorBoard event files (scalars) under `log_dir`.
std::unique_ptr<Reporter> MakeTensorBoardReporter(const std::string& log_dir);

}  // namespace dsv3::train
