// The optimizer update in one pass over flat fp32 shards: decoupled (AdamW) or L2 (Adam, SGD)
// weight decay under a 0/1 mask, the gradient-clipping scale, Adam's moments, and the copy of
// the new weights into a lower-precision compute copy. The arithmetic is torch::optim's,
// element by element, so results equal the unfused ops within fp32 rounding.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace dsv3::kernels {

struct UpdateHyper {
  std::string type = "adamw";  // adamw | adam | sgd
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;           // 1 for the first update (bias correction)
  double grad_scale = 1.0;    // multiplies the gradient first (clipping, loss-scale undo)
};

// In place on param (and exp_avg, exp_avg_sq for Adam/AdamW), all fp32 1-D of equal length on
// one device, contiguous; decay_mask may be fp32 0/1 of the same length. When `compute` is
// defined (same length, bf16/fp16/fp32), the new parameter values are also written into it.
// CPU: vectorized and split over the intra-op threads; CUDA: one kernel (kernels/cuda).
void FusedUpdate(const UpdateHyper& hyper, torch::Tensor param, const torch::Tensor& grad,
                 const torch::Tensor& decay_mask, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                 torch::Tensor compute = {});

}  // namespace dsv3::kernels
