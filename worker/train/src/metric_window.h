// The sums behind one log line: every step since the last line adds its losses, timings and
// expert loads; Emit averages them into StepMetrics and starts the next window.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "dsv3/train/reporter.h"

namespace dsv3::train {

// One step's figures (losses averaged over the data-parallel ranks; times in ms).
struct StepFigures {
  double loss = 0, main = 0, mtp = 0, balance = 0, grad_norm = 0;
  double ms_data = 0, ms_forward = 0, ms_backward = 0, ms_optimizer = 0, ms_communication = 0;
  double ms_pipeline_wait = 0;  // blocked receiving from (or sending to) the other stages: the bubble
  std::vector<std::pair<std::string, double>> bytes_sent;  // per process group, this step
  std::vector<double> stage_ms;  // per pipeline stage: compute time (mean over its replicas)
  // Global-batch expert loads of each MoE layer (tokens per expert, summed over ranks), and
  // the routing assignments and capacity drops of the step.
  std::vector<torch::Tensor> loads;
  int64_t assignments = 0, dropped = 0;
};

// What a log line needs besides the window's sums.
struct WindowContext {
  int64_t step = 0;
  double lr = 0;
  int64_t tokens_per_step = 0;  // global batch x sequence
  int world_size = 1;
  double peak_flops = 0, flops_per_token = 0;
  int64_t optimizer_state_bytes = 0, parameter_bytes = 0, gradient_bytes = 0;
  int64_t tokens_seen = 0;
  std::optional<double> loss_scale;  // fp16 only
  bool pipeline = false;             // pp > 1: report the time waiting on the other stages
};

// Not thread-safe: the training thread owns it.
class MetricWindow {
 public:
  MetricWindow() : start_(std::chrono::steady_clock::now()) {}
  void Add(const StepFigures& f);
  // The averages since the last Emit (at least one Add before), then a new window starts.
  StepMetrics Emit(const WindowContext& ctx);
  bool empty() const { return steps_ == 0; }

 private:
  double loss_ = 0, main_ = 0, mtp_ = 0, balance_ = 0, norm_ = 0;
  double data_ = 0, fwd_ = 0, bwd_ = 0, opt_ = 0, comm_ = 0, pipe_ = 0;
  std::vector<std::pair<std::string, double>> bytes_;  // per group, summed over the window
  std::vector<double> stage_ms_;                       // per stage, summed over the window
  int64_t steps_ = 0, assignments_ = 0, dropped_ = 0;
  std::vector<torch::Tensor> load_sums_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv3::train
