// One optimizer step of the trainer: the micro-steps (forward, backward, overlapped
// reductions), the one all-reduce the ranks agree through, and the update with non-finite
// checks, fp16 loss scaling and gradient clipping.
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "trainer_state.h"

namespace dsv3::train {

LossParts Trainer::State::MicroSteps(const data::Batch& batch, StepFigures& f) {
  const config::TrainingConfig& t = cfg.training;
  const int64_t gas = cfg.derived.gradient_accumulation_steps, micro = t.micro_batch_size;
  LossParts sum;
  for (int64_t m = 0; m < gas; ++m) {
    optimizer->BeginMicroStep(m == gas - 1);
    const auto f0 = Clock::now();
    const torch::Tensor tokens = Rows(batch.tokens, m * micro, micro, batch.width, device);
    torch::Tensor segments;  // data.reset_attention_mask
    if (!batch.segments.empty()) segments = Rows(batch.segments, m * micro, micro, batch.width, device);
    const model::ModelOutput out = compute->forward(tokens, segments);
    torch::Tensor loss = out.loss / static_cast<double>(gas);
    if (t.use_fp16) loss = loss * scaler.scale;
    const auto f1 = Clock::now();
    loss.backward();
    optimizer->FinishBackward();  // this micro-step's reductions (overlapped with backward)
    const auto f2 = Clock::now();
    f.ms_forward += Ms(f0, f1);
    f.ms_backward += Ms(f1, f2);
    // One device-to-host copy for the three loss parts (each .item() is a sync on a GPU).
    const torch::Tensor parts = torch::stack({out.main_loss.detach().to(torch::kDouble),
                                              out.mtp_loss.detach().to(torch::kDouble),
                                              out.balance_loss.detach().to(torch::kDouble)})
                                    .to(torch::kCPU);
    const double* v = parts.data_ptr<double>();
    sum.main += v[0] / static_cast<double>(gas);
    sum.mtp += v[1] / static_cast<double>(gas);
    sum.balance += v[2] / static_cast<double>(gas);
  }
  return sum;
}

// One all-reduce per step carries what the ranks must agree on: the loss parts (then
// averaged), the stop / checkpoint requests of any rank, and the MoE expert loads of the
// global batch (so every rank makes the same aux-loss-free bias update). Counts are exact
// in double.
StepAgreement Trainer::State::Agree(const LossParts& mine, bool stop, bool checkpoint) {
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
