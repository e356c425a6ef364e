// One optimizer step of the trainer: the micro-steps (forward, backward, overlapped
// reductions), the one all-reduce the ranks agree through, and the update with non-finite
// checks, fp16 loss scaling and gradient clipping.
#include <cmath>
#include <map>
#include <sstream>
#include <stdexcept>

#include "dsv3/dist/flight_recorder.h"
#include "dsv3/train/pipeline_schedule.h"
#include "trainer_state.h"

namespace dsv3::train {
namespace {

// A micro-batch's loss parts into the step's sums, each divided by the micro-batch count:
// one device-to-host copy for the three (each .item() is a sync on a GPU).
void AddLossParts(const model::ModelOutput& out, int64_t micro_batches, LossParts& sum) {
  const torch::Tensor parts = torch::stack({out.main_loss.detach().to(torch::kDouble),
                                            out.mtp_loss.detach().to(torch::kDouble),
                                            out.balance_loss.detach().to(torch::kDouble)})
                                  .to(torch::kCPU);
  const double* v = parts.data_ptr<double>();
  sum.main += v[0] / static_cast<double>(micro_batches);
  sum.mtp += v[1] / static_cast<double>(micro_batches);
  sum.balance += v[2] / static_cast<double>(micro_batches);
}

}  // namespace

LossParts Trainer::State::MicroSteps(const data::Batch& batch, StepFigures& f) {
  if (groups.grid.pp > 1) return PipelineMicroSteps(batch, f);
  const config::TrainingConfig& t = cfg.training;
  const int64_t gas = cfg.derived.gradient_accumulation_steps, micro = t.micro_batch_size;
  LossParts sum;
  dist::FlightRecorder& progress = dist::FlightRecorder::Get();
  for (int64_t m = 0; m < gas; ++m) {
    progress.SetMicroStep(m);
    progress.SetPhase(dist::TrainPhase::kForward);
    optimizer->BeginMicroStep(m == gas - 1);
    const auto f0 = Clock::now();
    const torch::Tensor tokens = Rows(batch.tokens, m * micro, micro, batch.width, device);
    torch::Tensor segments;  // data.reset_attention_mask
    if (!batch.segments.empty()) segments = Rows(batch.segments, m * micro, micro, batch.width, device);
    const model::ModelOutput out = compute->forward(tokens, segments);
    torch::Tensor loss = out.loss / static_cast<double>(gas);
    if (t.use_fp16) loss = loss * scaler.scale;
    const auto f1 = Clock::now();
    progress.SetPhase(dist::TrainPhase::kBackward);
    loss.backward();
    optimizer->FinishBackward();  // this micro-step's reductions (overlapped with backward)
    const auto f2 = Clock::now();
    f.ms_forward += Ms(f0, f1);
    f.ms_backward += Ms(f1, f2);
    AddLossParts(out, gas, sum);
  }
  return sum;
}

LossParts Trainer::State::PipelineMicroSteps(const data::Batch& batch, StepFigures& f) {
  const config::TrainingConfig& t = cfg.training;
  const int64_t gas = cfg.derived.gradient_accumulation_steps, micro = t.micro_batch_size;
  dist::Communicator& pp = *groups.pp;
  const int p = static_cast<int>(groups.grid.pp), s = static_cast<int>(groups.coord.pp);
  // Neighbours in the ring of virtual stages: the interleaved schedule wraps from the last
  // stage to the first (the other schedules never use the wrap).
  const int prev = (s + p - 1) % p, next = (s + 1) % p;
  constexpr int kActivation = 0, kGradient = 1;  // tags: with two stages both go both ways
  const auto activation = torch::TensorOptions().dtype(compute_dtype).device(device);
  const std::vector<int64_t> shape = {micro, t.seq_length, cfg.model.mla.d_model};
  const int64_t chunks = static_cast<int64_t>(compute->pipeline_stage().chunks.size());
  const auto first_chunk = [&](int64_t c) { return s == 0 && c == 0; };
  const auto last_chunk = [&](int64_t c) { return s == p - 1 && c == chunks - 1; };
  // A micro-batch in one chunk between its forward and its backward: the input from the
  // previous stage (whose gradient goes back), the output to the next, the loss to backprop.
  struct InFlight {
    torch::Tensor h_in, h_out, loss;
  };
  std::map<std::pair<int64_t, int64_t>, InFlight> in_flight;
  // Sends complete in the background; their tensors stay alive until the step's end.
  std::vector<std::pair<dist::WorkHandle, torch::Tensor>> sends;
  const auto send = [&](torch::Tensor x, int peer, int tag) {
    x = x.contiguous();
    sends.emplace_back(pp.Send(x, peer, tag), x);
  };
  const std::vector<PipelineAction> actions =
      PipelineSchedule(cfg.distributed.pipeline_schedule, p, s, gas, chunks);
  size_t last_backward = 0;
  for (size_t i = 0; i < actions.size(); ++i) {
    if (!actions[i].forward) last_backward = i;
  }
  const double wait_before = pp.blocked_seconds();
  LossParts sum;
  dist::FlightRecorder& progress = dist::FlightRecorder::Get();
  for (size_t i = 0; i < actions.size(); ++i) {
    const PipelineAction& a = actions[i];
    progress.SetMicroStep(a.micro);
    progress.SetPhase(a.forward ? dist::TrainPhase::kForward : dist::TrainPhase::kBackward);
    const auto key = std::make_pair(a.micro, a.chunk);
    const auto t0 = Clock::now();
    if (a.forward) {
      const torch::Tensor tokens = Rows(batch.tokens, a.micro * micro, micro, batch.width, device);
      torch::Tensor segments;
      if (!batch.segments.empty()) segments = Rows(batch.segments, a.micro * micro, micro, batch.width, device);
      InFlight x;
      if (!first_chunk(a.chunk)) {
        x.h_in = torch::empty(shape, activation);
        pp.Recv(x.h_in, prev, kActivation)->Wait();
        x.h_in.requires_grad_(true);
      }
      const model::ModelOutput out = compute->ForwardStage(tokens, segments, x.h_in, a.chunk);
      x.h_out = out.h_BTD;
      x.loss = out.loss / static_cast<double>(gas);
      if (t.use_fp16) x.loss = x.loss * scaler.scale;
      if (!last_chunk(a.chunk)) send(out.h_BTD.detach(), next, kActivation);
      AddLossParts(out, gas, sum);
      in_flight[key] = std::move(x);
      f.ms_forward += Ms(t0, Clock::now());
    } else {
      InFlight x = std::move(in_flight.at(key));
      in_flight.erase(key);
      // Gradients are complete (and reduced, ZeRO 0/1) after the schedule's last backward:
      // with model chunks, a micro-batch's index alone does not say that.
      optimizer->BeginMicroStep(i == last_backward);
      if (last_chunk(a.chunk)) {
        x.loss.backward();
      } else {
        torch::Tensor grad = torch::empty(shape, activation);
        pp.Recv(grad, next, kGradient)->Wait();
        std::vector<torch::Tensor> outputs = {x.h_out}, grads = {grad};
        if (x.loss.requires_grad()) {  // the chunk's MoE balance losses
          outputs.push_back(x.loss);
          grads.push_back(torch::ones_like(x.loss));
        }
        torch::autograd::backward(outputs, grads);
      }
      // The input's gradient goes back before this stage waits for its reductions: the
      // embedding's two copies reduce together, so the first stage must get to its backward.
      if (!first_chunk(a.chunk)) send(x.h_in.grad(), prev, kGradient);
      optimizer->FinishBackward();
      f.ms_backward += Ms(t0, Clock::now());
    }
  }
  for (auto& [work, tensor] : sends) work->Wait();
  f.ms_pipeline_wait += 1000.0 * (pp.blocked_seconds() - wait_before);
  return sum;
}

// One all-reduce per step carries what the ranks must agree on: the loss parts (then
// averaged), the stop / checkpoint requests of any rank, and the MoE expert loads of the
// global batch (so every rank makes the same aux-loss-free bias update). Counts are exact
// in double. Under pipeline parallelism it also carries each stage's compute time.
StepAgreement Trainer::State::Agree(const LossParts& mine, bool stop, bool checkpoint, double busy_ms) {
  const std::vector<model::MoeStats> stats = compute->TakeMoeStats();
  std::vector<torch::Tensor> parts = {
      torch::tensor({mine.main, mine.mtp, mine.balance, stop ? 1.0 : 0.0, checkpoint ? 1.0 : 0.0}, torch::kDouble)};
  double assignments = 0, dropped = 0;
  for (const auto& st : stats) {
    parts.push_back(st.tokens_per_expert_E.to(torch::kDouble));
    assignments += static_cast<double>(st.assignments);
    dropped += static_cast<double>(st.dropped);
  }
  parts.push_back(torch::tensor({assignments, dropped}, torch::kDouble));
  const int64_t pp = groups.grid.pp;
  torch::Tensor stage_ms = torch::zeros({pp}, torch::kDouble);
  stage_ms[groups.coord.pp] = busy_ms;
  parts.push_back(stage_ms);
  torch::Tensor agreed = torch::cat(parts);
  if (world->size() > 1) {
    agreed = agreed.to(device);
    world->AllReduce(agreed)->Wait();
    agreed = agreed.to(torch::kCPU);
  }
  // The tensor-parallel ranks of a replica computed the same losses and loads: each counts
  // tp times in the world's sum.
  agreed.narrow(0, 0, 3).div_(static_cast<double>(dp) * tp);
  if (tp > 1) agreed.narrow(0, 5, agreed.numel() - 5).div_(static_cast<double>(tp));
  agreed.narrow(0, agreed.numel() - pp, pp).div_(static_cast<double>(dp));  // the stages' mean over replicas
  const double* x = agreed.data_ptr<double>();
  StepAgreement a;
  a.main = x[0];
  a.mtp = x[1];
  a.balance = x[2];
  a.stop = x[3] > 0;
  a.checkpoint = x[4] > 0;
  int64_t at = 5;
  for (const auto& st : stats) {
    const int64_t E = st.tokens_per_expert_E.numel();
    a.loads.push_back(agreed.narrow(0, at, E));
    at += E;
  }
  a.assignments = static_cast<int64_t>(x[at]);
  a.dropped = static_cast<int64_t>(x[at + 1]);
  a.stage_ms.assign(x + at + 2, x + at + 2 + pp);
  return a;
}

bool Trainer::State::Update(double step_loss, double lr, double& grad_norm) {
  const config::TrainingConfig& t = cfg.training;
  bool apply = true;
  grad_norm = 0;
  if (!std::isfinite(step_loss)) {
    if (!t.skip_nonfinite_steps) {
      std::ostringstream msg;
      msg << "non-finite loss (" << step_loss << ") at step " << step + 1
          << "; lower the learning rate, enable grad_clip, or set training.skip_nonfinite_steps";
      throw std::runtime_error(msg.str());
    }
    Message("skipping step " + std::to_string(step + 1) + ": non-finite loss");
    apply = false;
  }
  if (apply) {
    if (t.use_fp16) optimizer->ScaleGrads(1.0 / scaler.scale);
    // The global norm: one all-reduce of every rank's share; nan/inf when a gradient overflowed.
    grad_norm = optimizer->GradNorm();
    if (t.use_fp16) apply = scaler.Update(grad_norm);
  }
  if (!apply) {
    optimizer->ZeroGrad();
    return false;
  }
  // torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1 (inside
  // the fused update, not as a pass over the gradients of its own).
  double clip_scale = 1.0;
  if (t.grad_clip > 0 && grad_norm > 0 && t.grad_clip / (grad_norm + 1e-6) < 1.0) {
    clip_scale = t.grad_clip / (grad_norm + 1e-6);
  }
  optimizer->Step(lr, clip_scale);  // updates, gathers the shards, refreshes the compute model
  return true;
}

}  // namespace dsv3::train
