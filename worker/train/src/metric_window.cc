#include "metric_window.h"

#include <algorithm>
#include <string>

namespace dsv3::train {

void MetricWindow::Add(const StepFigures& f) {
  loss_ += f.loss;
  main_ += f.main;
  mtp_ += f.mtp;
  balance_ += f.balance;
  norm_ += f.grad_norm;
  data_ += f.ms_data;
  fwd_ += f.ms_forward;
  bwd_ += f.ms_backward;
  opt_ += f.ms_optimizer;
  comm_ += f.ms_communication;
  pipe_ += f.ms_pipeline_wait;
  if (stage_ms_.size() != f.stage_ms.size()) stage_ms_.assign(f.stage_ms.size(), 0.0);
  for (size_t i = 0; i < stage_ms_.size(); ++i) stage_ms_[i] += f.stage_ms[i];
  if (bytes_.size() != f.bytes_sent.size()) {
    bytes_ = f.bytes_sent;  // the first step
  } else {
    for (size_t i = 0; i < bytes_.size(); ++i) bytes_[i].second += f.bytes_sent[i].second;
  }
  for (size_t i = 0; i < f.loads.size(); ++i) {
    if (load_sums_.size() <= i) load_sums_.push_back(torch::zeros_like(f.loads[i]));
    load_sums_[i] += f.loads[i];
  }
  assignments_ += f.assignments;
  dropped_ += f.dropped;
  ++steps_;
}

StepMetrics MetricWindow::Emit(const WindowContext& ctx) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double n = static_cast<double>(steps_);
  const double tokens_per_s = static_cast<double>(steps_ * ctx.tokens_per_step / ctx.world_size) / seconds;
  StepMetrics m;
  m.step = ctx.step;
  double worst = 1.0;
  std::vector<std::pair<std::string, double>> per_layer;
  for (size_t i = 0; i < load_sums_.size(); ++i) {
    const torch::Tensor l = load_sums_[i].to(torch::kDouble);
    const double mean = l.mean().item<double>();
    const double ratio = mean > 0 ? l.max().item<double>() / mean : 1.0;
    worst = std::max(worst, ratio);
    per_layer.push_back({"expert_load_max_over_mean_moe" + std::to_string(i), ratio});
    load_sums_[i].zero_();
  }
  m.values = {{"loss", loss_ / n},
              {"loss_main", main_ / n},
              {"loss_mtp", mtp_ / n},
              {"loss_balance", balance_ / n},
              {"lr", ctx.lr},
              {"grad_norm", norm_ / n},
              {"tokens_per_s", tokens_per_s},
              {"mfu", ctx.peak_flops > 0 ? tokens_per_s * ctx.flops_per_token / ctx.peak_flops : 0.0},
              {"step_ms", 1000.0 * seconds / n},
              {"time_data_ms", data_ / n},
              {"time_forward_ms", fwd_ / n},
              {"time_backward_ms", bwd_ / n},
              {"time_optimizer_ms", opt_ / n},
              {"time_communication_ms", comm_ / n},
              {"optimizer_state_bytes", static_cast<double>(ctx.optimizer_state_bytes)},
              {"parameter_bytes", static_cast<double>(ctx.parameter_bytes)},
              {"gradient_bytes", static_cast<double>(ctx.gradient_bytes)},
              {"expert_load_max_over_mean", worst},
              {"expert_dropped_fraction",
               assignments_ > 0 ? static_cast<double>(dropped_) / static_cast<double>(assignments_) : 0.0},
              {"tokens_seen", static_cast<double>(ctx.tokens_seen)}};
  m.values.insert(m.values.end(), per_layer.begin(), per_layer.end());
  if (ctx.loss_scale) m.values.push_back({"loss_scale", *ctx.loss_scale});
  // The pipeline bubble as this stage saw it: blocked on the stages before and after.
  if (ctx.pipeline) {
    m.values.push_back({"time_pipeline_wait_ms", pipe_ / n});
    // Each stage's compute per step: the imbalance pipeline_layout can even out.
    for (size_t i = 0; i < stage_ms_.size(); ++i) m.values.push_back({"time_stage" + std::to_string(i) + "_ms", stage_ms_[i] / n});
  }
  std::fill(stage_ms_.begin(), stage_ms_.end(), 0.0);
  // What this rank sent per step in each of its process groups (those with traffic).
  for (auto& [group, bytes] : bytes_) {
    if (bytes > 0) m.values.push_back({"comm_bytes_" + group, bytes / n});
    bytes = 0;
  }
  loss_ = main_ = mtp_ = balance_ = norm_ = data_ = fwd_ = bwd_ = opt_ = comm_ = pipe_ = 0;
  steps_ = assignments_ = dropped_ = 0;
  start_ = std::chrono::steady_clock::now();
  return m;
}

}  // namespace dsv3::train
