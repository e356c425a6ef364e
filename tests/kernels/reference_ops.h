// Plain LibTorch references for dsv3_kernels, shared by kernels_test (values and gradients)
// and bench/kernels_bench (timings).
#pragma once

#include <limits>

#include <torch/torch.h>

#include "dsv3/kernels/kernels.h"

namespace dsv3::kernels {

// softmax(q k^T * scale) v with the model's masks, materialising T x T.
inline torch::Tensor ReferenceAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                                 const AttentionMask& mask) {
  const int64_t T = q.size(1);
  const auto up = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor s = torch::matmul(q.transpose(1, 2), k.permute({0, 2, 3, 1})).to(up) * scale;
  const torch::Tensor idx = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(q.device()));
  const torch::Tensor dist = idx.unsqueeze(1) - idx.unsqueeze(0);
  torch::Tensor visible = dist >= 0;
  if (mask.window) visible = visible & (dist < *mask.window);
  if (mask.segments_BT.defined()) {
    visible = (visible.unsqueeze(0) & (mask.segments_BT.unsqueeze(2) == mask.segments_BT.unsqueeze(1))).unsqueeze(1);
  }
  s = s.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
  const torch::Tensor p = torch::softmax(s, -1).to(q.scalar_type());
  return torch::matmul(p, v.transpose(1, 2)).transpose(1, 2);
}

}  // namespace dsv3::kernels
