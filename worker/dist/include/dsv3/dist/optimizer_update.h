// The optimizer's arithmetic on one flat range of parameters, apart from any sharding: the
// distributed optimizer applies it to the elements each rank owns, and a test holds it
// against torch::optim on its own.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace dsv3::dist {

struct OptimizerOptions {
  std::string type = "adamw";  // adamw | adam | sgd (same arithmetic as torch::optim's)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  bool fused = true;  // the one-pass kernel where the device has it (model.fused_kernels)
};

// One update of step number `step` (1 for the first) with learning rate `lr`, in place on
// `param`: torch::optim's AdamW (decoupled decay), Adam (L2 decay folded into the gradient)
// or SGD without momentum. All tensors are fp32, 1-D and of equal length on one device;
// `decay_mask` is 1 where weight decay applies and 0 elsewhere (norms, biases). `exp_avg`
// and `exp_avg_sq` are the Adam moments, updated in place (undefined for sgd). `grad` is
// not modified; `grad_scale` multiplies it first (the clipping factor). Runs the fused
// one-pass kernel (dsv3_kernels) when options.fused and the device has it, ReferenceUpdate
// otherwise.
void ApplyUpdate(const OptimizerOptions& options, double lr, int64_t step, torch::Tensor param, torch::Tensor grad,
                 const torch::Tensor& decay_mask, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                 double grad_scale = 1.0);

// The same update as a sequence of LibTorch ops (torch::optim's own): the reference the fused
// kernel is tested against, and the path on devices without kernels.
void ReferenceUpdate(const OptimizerOptions& options, double lr, int64_t step, torch::Tensor param, torch::Tensor grad,
                     const torch::Tensor& decay_mask, torch::Tensor exp_avg, torch::Tensor exp_avg_sq);

}  // namespace dsv3::dist
