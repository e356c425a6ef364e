// Norms, RoPE and the SwiGLU FFN.
#include <cmath>

#include "dsv3/common/check.h"
#include "dsv3/model/layers.h"
#include "fused.h"

namespace dsv3::model {

NormImpl::NormImpl(int64_t dim, double eps, bool layernorm, bool fused)
    : eps_(eps), layernorm_(layernorm), fused_(fused) {
  weight = register_parameter("weight", torch::ones({dim}));
  if (layernorm_) bias = register_parameter("bias", torch::zeros({dim}));
}

c10::ScalarType UpcastType(c10::ScalarType t) { return t == torch::kDouble ? torch::kDouble : torch::kFloat; }

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (!layernorm_ && UseFused(fused_, x) && weight.scalar_type() == x.scalar_type()) {
    return kernels::RmsNorm(x, weight, eps_);
  }
  // Statistics in fp32 whatever the activation dtype: bf16 sums of squares lose precision.
  const auto precision = UpcastType(x.scalar_type());
  const torch::Tensor xf = x.to(precision);
  if (layernorm_) {
    return torch::layer_norm(xf, {xf.size(-1)}, weight.to(precision), bias.to(precision), eps_)
        .to(x.scalar_type());
  }
  const torch::Tensor normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * normed.to(x.scalar_type());
}

Norm MakeNorm(const config::ModelConfig& cfg, int64_t dim) {
  return Norm(dim, cfg.norm_eps, cfg.norm_type == "layernorm", cfg.fused_kernels);
}

torch::Tensor ApplyRope(const torch::Tensor& x_BTHR, const torch::Tensor& positions, double theta) {
  DSV3_CHECK(x_BTHR.dim() == 4) << "RoPE expects B x T x H x R, got " << x_BTHR.sizes();
  const int64_t B = x_BTHR.size(0), T = x_BTHR.size(1), H = x_BTHR.size(2), R = x_BTHR.size(3);
  DSV3_CHECK(R % 2 == 0) << "RoPE needs an even rotary dim, got " << R;
  DSV3_CHECK(positions.size(-1) == T && (positions.dim() == 1 || (positions.dim() == 2 && positions.size(0) == B)))
      << "positions " << positions.sizes() << " for " << B << " x " << T << " tokens";
  const auto fopts = torch::TensorOptions().dtype(UpcastType(x_BTHR.scalar_type())).device(x_BTHR.device());
  // frequency_i = theta^(-2i/R), i = 0 .. R/2-1 (RoFormer; DeepSeek's reference code).
  const torch::Tensor inv_freq = torch::pow(theta, -torch::arange(0, R, 2, fopts) / static_cast<double>(R));
  const torch::Tensor angle = positions.to(fopts).unsqueeze(-1) * inv_freq;  // (B x) T x R/2
  const int64_t rows = positions.dim() == 2 ? B : 1;
  const torch::Tensor cos = angle.cos().view({rows, T, 1, R / 2});
  const torch::Tensor sin = angle.sin().view({rows, T, 1, R / 2});
  const torch::Tensor pairs = x_BTHR.to(fopts.dtype()).reshape({B, T, H, R / 2, 2});
  const torch::Tensor x0 = pairs.select(-1, 0), x1 = pairs.select(-1, 1);
  return torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1)
      .reshape({B, T, H, R})
      .to(x_BTHR.scalar_type());
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t hidden, bool fused) : fused_(fused) {
  const auto linear = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  gate_proj = register_module("gate_proj", linear(dim, hidden));
  up_proj = register_module("up_proj", linear(dim, hidden));
  down_proj = register_module("down_proj", linear(hidden, dim));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x_in) {
  const torch::Tensor x = EnterParallel(x_in, tp_.get());
  torch::Tensor y;
  if (UseFused(fused_, x)) {
    y = kernels::Linear(kernels::SwiGlu(kernels::Linear(x, gate_proj->weight), kernels::Linear(x, up_proj->weight)),
                        down_proj->weight);
  } else {
    y = down_proj(torch::silu(gate_proj(x)) * up_proj(x));
  }
  return LeaveParallel(y, tp_.get());
}

void FeedForwardImpl::ShardTensorParallel(std::shared_ptr<TensorParallelGroup> tp) {
  torch::NoGradGuard no_grad;
  for (const auto& split : TensorParallelPlan()) {
    torch::Tensor& w = (split.name == "down_proj.weight" ? down_proj : split.name == "up_proj.weight" ? up_proj : gate_proj)->weight;
    w.set_data(TensorParallelBlock(w, split.dim, *tp));
  }
  tp_ = std::move(tp);
}

std::vector<TensorParallelSplit> FeedForwardImpl::TensorParallelPlan() const {
  return {{"gate_proj.weight", 0}, {"up_proj.weight", 0}, {"down_proj.weight", 1}};
}

}  // namespace dsv3::model
