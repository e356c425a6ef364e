// The model's one switch between the kernels of dsv3_kernels and the plain LibTorch ops
// (model.fused_kernels): a module built with the switch on uses a kernel only where it runs
// on the tensor's device in this build, and the reference path otherwise.
#pragma once

#include <torch/torch.h>

#include "dsv3/kernels/kernels.h"

namespace dsv3::model {

inline bool UseFused(bool enabled, const torch::Tensor& x) { return enabled && kernels::Available(x.device()); }

// linear(x) without bias: the tiled kernel or the module itself.
inline torch::Tensor Project(torch::nn::Linear linear, const torch::Tensor& x, bool fused) {
  return UseFused(fused, x) ? kernels::Linear(x, linear->weight) : linear->forward(x);
}

}  // namespace dsv3::model
