#include "dsv3/train/trainer.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "capabilities.h"
#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/exit_codes.h"
#include "dsv3/dist/flight_recorder.h"
#include "dsv3/train/lr_schedule.h"
#include "trainer_state.h"

namespace dsv3::train {

torch::Tensor Rows(const std::vector<int32_t>& data, int64_t first, int64_t rows, int64_t width, torch::Device device) {
  return torch::from_blob(const_cast<int32_t*>(data.data()) + first * width, {rows, width}, torch::kInt)
      .to(torch::kLong)
      .to(device);
}

// Threads, the seed, the device and the world; the compute precision.
void Trainer::State::PlaceOnDevice() {
  config::Config& c = cfg;
  if (!opt.output_dir.empty()) {
    c.checkpointing.dir = config::CheckpointDirForOutput(*c.checkpointing.dir, c.output_dir, opt.output_dir);
    c.output_dir = opt.output_dir;
  }
  output_dir = c.output_dir;
  checkpoint_dir = *c.checkpointing.dir;

  threads = opt.threads > 0                    ? opt.threads
            : c.training.intra_op_threads > 0  ? static_cast<int>(c.training.intra_op_threads)
                                               : std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(threads);
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  device = torch::cuda::is_available()
               ? torch::Device(torch::kCUDA, static_cast<int8_t>(opt.local_rank % std::max<int64_t>(
                                                                     torch::cuda::device_count(), 1)))
               : torch::Device(torch::kCPU);
  world = opt.world;
  if (world == nullptr) {
    self_world = dist::MakeSelfCommunicator();
    world = self_world.get();
  }
  groups = dist::MakeParallelGroups(*world, config::ParallelGrid::FromConfig(c));
  dp = static_cast<int>(groups.grid.dp);
  ep = static_cast<int>(groups.grid.ep);
  tp = static_cast<int>(groups.grid.tp);
  mixed = c.training.use_bf16 || c.training.use_fp16;
  compute_dtype = c.training.use_bf16 ? torch::kBFloat16 : c.training.use_fp16 ? torch::kHalf : torch::kFloat;
  if (c.training.use_fp16) RequireFp16Matmul(device);
}

// The fp32 master and, with mixed precision, its low-precision compute copy.
void Trainer::State::BuildModels() {
  master = model::DeepSeekV3(cfg);
  master->to(device);
  if (mixed) {
    compute = model::DeepSeekV3(cfg);
    compute->to(device, compute_dtype);
    for (auto& moe : compute->MoeLayers()) {
      auto& bias = moe->gate->e_score_correction_bias;
      bias.set_data(bias.to(torch::kFloat));
    }
    CopyMasterToCompute(*master, *compute);
  } else {
    compute = master;
  }
  master->train();
  compute->train();
  if (opt.world_size > 1) {
    // Same initial weights everywhere (the seed above); from here on each data-parallel rank
    // draws its own dropout masks and router noise, and the tensor-parallel ranks of one
    // replica draw the same (their replicated computations must agree).
    const uint64_t stream = static_cast<uint64_t>(groups.coord.pp * groups.grid.dp + groups.coord.dp + 1);
    torch::manual_seed(static_cast<uint64_t>(cfg.seed) ^ (0x9E3779B97F4A7C15ull * stream));
  }
  estimate = config::EstimateConfig(cfg);
  peak_flops = cfg.logging.peak_tflops > 0 ? cfg.logging.peak_tflops * 1e12 : MeasurePeakFlops(device, compute_dtype);
}

void Trainer::State::OpenDataAndCheckpoints() {
  const config::Config& c = cfg;
  try {
    data = data::OpenDataPipeline(c);
  } catch (const std::exception& e) {
    throw PermanentError(exit_status::kDataMissing, e.what());
  }
  if (data.prepared.files_prepared > 0) {
    Message("prepared the token cache: " + std::to_string(data.prepared.files_prepared) + " files, " +
            std::to_string(data.prepared.tokens) + " tokens");
  }
  for (const auto& issue : data.prepared.issues) Message("data warning: " + issue.ToString());
  ckpt::SaveGroup save_group;
  save_group.rank = opt.rank;
  save_group.world = opt.world_size;
  save_group.barrier = [w = world] { w->Barrier(); };
  checkpoints = std::make_unique<ckpt::CheckpointManager>(checkpoint_dir, c.checkpointing.keep_last_n,
                                                          c.checkpointing.keep_best_n, save_group);
  const std::string resume = !opt.resume.empty() ? opt.resume : c.checkpointing.resume_from.value_or("");
  if (!resume.empty()) {
    try {
      Resume(resume);
    } catch (const PermanentError&) {
      throw;
    } catch (const std::exception& e) {
      throw PermanentError(exit_status::kCheckpointUnreadable, "cannot resume from " + resume + ": " + e.what());
    }
  }
  if (c.checkpointing.init_from_hf && resumed_from.empty()) {
    try {
      InitFromHf(*c.checkpointing.init_from_hf);
    } catch (const std::exception& e) {
      throw PermanentError(exit_status::kCheckpointUnreadable,
                           "cannot initialise from " + *c.checkpointing.init_from_hf + ": " + e.what());
    }
  } else if (c.checkpointing.init_from_hf) {
    Message("checkpointing.init_from_hf ignored: the run resumed from " + resumed_from);
  }
}

// After the full weights are in place: experts split over the ranks, the sharded optimizer,
// and its saved state.
void Trainer::State::Parallelize() {
  const config::Config& c = cfg;
  if (tp > 1) ShardTensorParallel(groups, *master, *compute);
  if (ep > 1) ShardExperts(groups, *master, *compute);
  if (groups.grid.pp > 1) ShardPipeline(c, groups, *master, *compute);
  optimizer = BuildOptimizer(c, groups, *master, *compute, device);
  LoadOptimizerState();
  if (!device.is_cuda() && (c.derived.optimizer_offload || c.deepspeed.offload_param_device == "cpu")) {
    Message("offload: training on the CPU, so optimizer state and parameters are in host memory already");
  }
  if (opt.world_size > 1) {
    std::ostringstream m;
    m << "rank " << opt.rank << " of " << opt.world_size << " (" << world->backend() << "): data-parallel " << dp
      << ", tensor-parallel " << tp << ", pipeline-parallel " << groups.grid.pp << ", expert-parallel " << ep
      << " (at dp " << groups.coord.dp << ", tp " << groups.coord.tp << ", stage " << groups.coord.pp << ", layers";
    for (const model::LayerRange& r : compute->pipeline_stage().chunks) m << " " << r.first << "-" << r.end - 1;
    m << "), ZeRO-" << c.derived.effective_zero_stage << "; on this rank: parameters "
      << optimizer->param_bytes() / 1048576.0 << " MiB, optimizer state " << optimizer->state_bytes() / 1048576.0
      << " MiB, gradient buffers " << optimizer->grad_bytes() / 1048576.0 << " MiB";
    Message(m.str());
  }
}

RunInfo Trainer::State::Info() const {
  const config::TrainingConfig& t = cfg.training;
  const int64_t tokens_per_step = t.global_batch_size * t.seq_length;
  RunInfo info;
  info.experiment = cfg.experiment_name;
  info.parameters = estimate.params.total;
  info.activated_parameters = estimate.params.activated;
  info.start_step = step;
  info.train_steps = *t.train_steps;
  info.tokens_planned = *t.train_steps * tokens_per_step;
  info.tokens_per_step = tokens_per_step;
  info.gradient_accumulation_steps = cfg.derived.gradient_accumulation_steps;
  info.flops_per_token = estimate.flops.total;
  info.peak_flops = peak_flops;
  info.rank = opt.rank;
  info.world_size = opt.world_size;
  info.threads = threads;
  info.precision = t.use_bf16 ? "bf16 (fp32 master weights)" : t.use_fp16 ? "fp16 (fp32 master, loss scaling)" : "fp32";
  info.device = device.str();
  info.output_dir = output_dir;
  info.checkpoint_dir = checkpoint_dir;
  info.resumed_from = resumed_from;
  info.weights_from = weights_from;
  return info;
}

Trainer::Trainer(config::Config cfg, TrainerOptions options, std::vector<std::unique_ptr<Reporter>> reporters)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.cfg = std::move(cfg);
  s.opt = std::move(options);
  s.reporters = std::move(reporters);
  // What this build cannot do is refused up front, naming the field.
  try {
    RefuseWhatThisBuildCannot(s.cfg, s.opt);
  } catch (const std::exception& e) {
    throw PermanentError(exit_status::kConfigRefused, e.what());
  }
  s.PlaceOnDevice();
  s.BuildModels();
  s.OpenDataAndCheckpoints();
  s.Parallelize();
}

Trainer::~Trainer() = default;

EvalResult Trainer::Evaluate() { return s_->Evaluate(); }

TrainResult Trainer::Run() {
  State& s = *s_;
  const config::Config& c = s.cfg;
  const config::TrainingConfig& t = c.training;
  const int64_t total = *t.train_steps;
  const int64_t tokens_per_step = t.global_batch_size * t.seq_length;
  for (auto& r : s.reporters) r->OnStart(s.Info());

  TrainResult result;
  if (t.skip_train) {  // evaluate the weights as loaded, and end
    dist::FlightRecorder::Get().SetPhase(dist::TrainPhase::kEvaluation);
    result.last_eval_loss = s.Evaluate().loss;
    dist::FlightRecorder::Get().SetPhase(dist::TrainPhase::kDone);
    result.step = s.step;
    result.finished = true;
    for (auto& r : s.reporters) {
      r->OnEnd(s.step, "evaluated the weights of step " + std::to_string(s.step) + " (training.skip_train)");
    }
    return result;
  }
  int64_t run_steps = 0;
  MetricWindow window;
  bool stopped_by_signal = false;
  double last_lr = 0;
  // One log line: the averages of the steps since the last one.
  const auto emit = [&](double lr) {
    WindowContext ctx;
    ctx.step = s.step;
    ctx.lr = lr;
    ctx.tokens_per_step = tokens_per_step;
    ctx.world_size = s.opt.world_size;
    ctx.peak_flops = s.peak_flops;
    ctx.flops_per_token = s.estimate.flops.total;
    ctx.optimizer_state_bytes = s.optimizer->state_bytes();
    ctx.parameter_bytes = s.optimizer->param_bytes();
    ctx.gradient_bytes = s.optimizer->grad_bytes();
    ctx.tokens_seen = s.tokens_seen;
    if (t.use_fp16) ctx.loss_scale = s.scaler.scale;
    ctx.pipeline = s.groups.grid.pp > 1;
    const StepMetrics m = window.Emit(ctx);
    for (auto& r : s.reporters) r->OnMetrics(m);
  };
  // The watchdog's view (dist/flight_recorder.h): which step and phase this thread is in.
  dist::FlightRecorder& progress = dist::FlightRecorder::Get();
  while (s.step < total) {
    if (s.opt.max_steps >= 0 && run_steps >= s.opt.max_steps) break;
    StepFigures f;
    const auto t0 = Clock::now();
    progress.SetStep(s.step + 1);
    progress.SetPhase(dist::TrainPhase::kData);
    // Tensor-parallel ranks of one replica read the same micro-batches.
    const data::Batch batch = s.data.sampler->NextBatch(t.global_batch_size, s.groups.coord.dp, s.dp);
    const auto t1 = Clock::now();
    s.compute->SetTrainingProgress(static_cast<double>(s.step) / static_cast<double>(total));
    const double lr = LearningRate(t, s.step);
    const double comm_before = s.CommSeconds();
    std::vector<std::pair<std::string, double>> bytes = s.groups.BytesSent();
    const LossParts mine = s.MicroSteps(batch, f);
    const double busy_ms = std::max(0.0, f.ms_forward + f.ms_backward - f.ms_pipeline_wait);
    progress.SetPhase(dist::TrainPhase::kOptimizer);
    StepAgreement agreed = s.Agree(mine, stop_.load(), checkpoint_now_.exchange(false), busy_ms);
    const auto t2 = Clock::now();
    const double step_loss = agreed.main + t.mtp_loss_weight * agreed.mtp + agreed.balance;
    const bool applied = s.Update(step_loss, lr, f.grad_norm);
    // Aux-loss-free balancing from the global batch's loads.
    if (applied) {
      s.compute->UpdateRouterBiases(agreed.loads);
      if (s.mixed) s.master->UpdateRouterBiases(agreed.loads);
    }
    const auto t3 = Clock::now();

    ++s.step;
    ++run_steps;
    s.tokens_seen += tokens_per_step;
    result.losses.push_back(step_loss);
    f.loss = step_loss;
    f.main = agreed.main;
    f.mtp = agreed.mtp;
    f.balance = agreed.balance;
    f.ms_data = Ms(t0, t1);
    f.ms_optimizer = Ms(t2, t3);
    f.ms_communication = 1000.0 * (s.CommSeconds() - comm_before);
    const std::vector<std::pair<std::string, double>> bytes_after = s.groups.BytesSent();
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i].second = bytes_after[i].second - bytes[i].second;
    f.bytes_sent = std::move(bytes);
    f.loads = std::move(agreed.loads);
    f.assignments = agreed.assignments;
    f.dropped = agreed.dropped;
    f.stage_ms = std::move(agreed.stage_ms);
    window.Add(f);
    const double step_s = Ms(t0, t3) / 1000.0;
    progress.StepDone(step_s, std::max(0.0, step_s - f.ms_communication / 1000.0));

    last_lr = lr;
    if (s.step % t.log_interval == 0 || s.step == total) emit(lr);
    if (c.validation.enabled && t.eval_interval > 0 && (s.step % t.eval_interval == 0 || s.step == total)) {
      progress.SetPhase(dist::TrainPhase::kEvaluation);
      result.last_eval_loss = s.Evaluate().loss;
    }
    if (c.checkpointing.enabled) {
      if ((t.save_interval > 0 && s.step % t.save_interval == 0) || agreed.checkpoint) {
        progress.SetPhase(dist::TrainPhase::kCheckpoint);
      }
      if (t.save_interval > 0 && s.step % t.save_interval == 0) {
        result.last_checkpoint = s.SaveCheckpoint("interval");
      } else if (agreed.checkpoint) {
        result.last_checkpoint = s.SaveCheckpoint("request");
      }
    }
    if (agreed.stop) {
      stopped_by_signal = true;
      break;
    }
  }
  // A stop between log lines still reports its last steps (they would be lost otherwise).
  if (!window.empty()) emit(last_lr);
  result.step = s.step;
  result.finished = s.step >= total;
  const bool want_final = stopped_by_signal || (result.finished && c.checkpointing.save_final) ||
                          (s.opt.max_steps >= 0 && !result.finished);
  if (c.checkpointing.enabled && want_final && s.last_saved_step != s.step) {
    progress.SetPhase(dist::TrainPhase::kCheckpoint);
    result.last_checkpoint = s.SaveCheckpoint(stopped_by_signal ? "signal" : result.finished ? "final" : "stop");
  }
  const std::string background = s.checkpoints->Wait();
  progress.SetPhase(dist::TrainPhase::kDone);
  if (!background.empty() && result.last_checkpoint.empty()) result.last_checkpoint = background;
  std::string message = result.finished ? "completed " + std::to_string(total) + " steps"
                                        : (stopped_by_signal ? "stopped on request" : "stopped early");
  if (!result.last_checkpoint.empty()) message += "; checkpoint " + result.last_checkpoint;
  for (auto& r : s.reporters) r->OnEnd(s.step, message);
  return result;
}

}  // namespace dsv3::train
