// The trainer's state, shared by the files that make up Trainer (private to dsv3_train):
//   trainer.cc             construction (what to build) and the step loop;
//   trainer_step.cc        one optimizer step: micro-steps (or the pipeline schedule of
//                          pipeline_schedule.cc), the ranks' agreement, the update;
//   capabilities.cc        what this build cannot do, refused up front;
//   parallelize.cc         tensor and expert parallelism, replica groups, the sharded optimizer;
//   trainer_checkpoint.cc  resume and save;
//   evaluation.cc          validation loss, per-source loss and a greedy sample;
//   metric_window.cc       the averages behind each log line;
//   precision.cc           master copies, loss scaling, peak FLOP/s.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/common/config.h"
#include "dsv3/common/estimator.h"
#include "dsv3/data/pipeline.h"
#include "dsv3/dist/communicator.h"
#include "dsv3/dist/distributed_optimizer.h"
#include "dsv3/dist/parallel_groups.h"
#include "dsv3/model/model.h"
#include "dsv3/train/trainer.h"
#include "metric_window.h"
#include "parallelize.h"
#include "precision.h"

namespace dsv3::train {

using Clock = std::chrono::steady_clock;

inline double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Rows [first, first + rows) of a loader batch (int32, `width` per row) as int64 on `device`.
torch::Tensor Rows(const std::vector<int32_t>& data, int64_t first, int64_t rows, int64_t width, torch::Device device);

// The parts of a step's loss, summed over its micro-steps (each divided by their count).
struct LossParts {
  double main = 0, mtp = 0, balance = 0;
};

// What the ranks agreed on after a step's micro-steps (one all-reduce).
struct StepAgreement {
  double main = 0, mtp = 0, balance = 0;  // averaged over the data-parallel ranks
  bool stop = false, checkpoint = false;  // any rank asked
  std::vector<torch::Tensor> loads;       // per MoE layer: the global batch's tokens per expert
  int64_t assignments = 0, dropped = 0;
  std::vector<double> stage_ms;           // per pipeline stage: forward + backward compute, not waiting
};

struct Trainer::State {
  config::Config cfg;
  TrainerOptions opt;
  std::vector<std::unique_ptr<Reporter>> reporters;
  torch::Device device = torch::kCPU;
  torch::ScalarType compute_dtype = torch::kFloat;
  bool mixed = false;
  model::DeepSeekV3 master{nullptr}, compute{nullptr};
  // The world and this rank's groups in the parallel grid (pp x dp x tp, ep inside dp).
  dist::Communicator* world = nullptr;
  std::unique_ptr<dist::Communicator> self_world;
  dist::ParallelGroups groups;
  int dp = 1, ep = 1, tp = 1;
  std::unique_ptr<dist::DistributedOptimizer> optimizer;
  data::DataPipeline data;
  std::unique_ptr<ckpt::CheckpointManager> checkpoints;
  config::Estimate estimate;
  std::string output_dir, checkpoint_dir, resumed_from;
  std::string weights_from;  // the HF directory of the initial weights, kept through resumes
  double peak_flops = 0;
  int threads = 1;
  int64_t step = 0, tokens_seen = 0;
  LossScaler scaler;  // fp16 only
  std::optional<double> eval_loss_at_step;
  int64_t eval_step = -1, last_saved_step = -1;
  // The checkpoint whose optimizer state loads once the optimizer exists (after the experts
  // are sharded).
  std::optional<ckpt::LoadedCheckpoint> pending_optimizer;

  // Seconds blocked in communication, every group together.
  double CommSeconds() const { return groups.BlockedSeconds(); }
  void Message(const std::string& m) {
    for (auto& r : reporters) r->OnMessage(m);
  }

  // trainer.cc: the parts of construction.
  void PlaceOnDevice();
  void BuildModels();
  void OpenDataAndCheckpoints();
  void Parallelize();
  RunInfo Info() const;

  // trainer_step.cc: one optimizer step. MicroSteps runs forward and backward and returns
  // this rank's loss parts, adding their times to `f`; Agree all-reduces what the ranks must
  // share; Update applies (or skips) the step and returns whether it did.
  LossParts MicroSteps(const data::Batch& batch, StepFigures& f);
  // The same through the pipeline stages (pp > 1), in the configured schedule.
  LossParts PipelineMicroSteps(const data::Batch& batch, StepFigures& f);
  StepAgreement Agree(const LossParts& mine, bool stop, bool checkpoint, double busy_ms);
  bool Update(double step_loss, double lr, double& grad_norm);

  // trainer_checkpoint.cc
  std::vector<std::pair<std::string, torch::Tensor>> FullModelState();
  void RestoreRng(const std::map<std::string, torch::Tensor>& saved);
  void LoadOptimizerState();
  void Resume(const std::string& requested);
  // checkpointing.init_from_hf on a run that did not resume: this rank's share of the weights.
  void InitFromHf(const std::string& dir);
  std::string SaveCheckpoint(const std::string& reason);

  // evaluation.cc: a collective over every rank.
  EvalResult Evaluate();
  // Main-head logits of tokens_BT through the pipeline stages: defined on the last stage only.
  torch::Tensor PipelineLogits(const torch::Tensor& tokens_BT);
};

}  // namespace dsv3::train
