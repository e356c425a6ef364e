// AdamW / Adam / SGD in one pass over flat fp32 shards.
#include "dsv3/kernels/fused_optimizer.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "device_route.h"
#include "dsv3/common/check.h"
#if DSV3_KERNELS_CUDA
#include "cuda_ops.h"
#endif

namespace dsv3::kernels {
namespace {

enum class Kind { kAdamW, kAdam, kSgd };

Kind ParseKind(const std::string& type) {
  if (type == "adamw") return Kind::kAdamW;
  if (type == "adam") return Kind::kAdam;
  if (type == "sgd") return Kind::kSgd;
  throw std::invalid_argument("FusedUpdate: optimizer type '" + type + "' is not one of adamw, adam, sgd");
}

// The per-element arithmetic, in the order torch::optim's ops apply it (so fp32 results
// match the unfused ops bit for bit where no reassociation happens): AdamW decays the
// weight first; Adam and SGD fold the decay into the gradient.
// Scalars as ATen rounds them: each op's double scalar becomes one float.
struct Scalars {
  float lr, wd, b1, b2, one_minus_b1, one_minus_b2, decay_factor, sqrt_bc2, step_size, eps, grad_scale;
};

template <Kind K>
void UpdateRange(const Scalars& c, float* p, const float* g, const float* mask, float* m, float* v, int64_t begin,
                 int64_t end, c10::BFloat16* out_bf16, float* out_f32) {
  for (int64_t i = begin; i < end; ++i) {
    float grad = g[i] * c.grad_scale;
    float w = p[i];
    const float dm = mask != nullptr ? mask[i] : 1.0f;
    if constexpr (K == Kind::kAdamW) {
      if (c.wd != 0) w = w + c.decay_factor * w * dm;  // addcmul_(p, mask, -lr * wd)
    } else {
      if (c.wd != 0) grad = grad + dm * w * c.wd;  // grad + mask * p * wd
    }
    if constexpr (K == Kind::kSgd) {
      w = w + (-c.lr) * grad;  // add_(grad, -lr)
    } else {
      const float mi = m[i] * c.b1 + c.one_minus_b1 * grad;        // mul_(b1).add_(grad, 1 - b1)
      const float vi = v[i] * c.b2 + c.one_minus_b2 * grad * grad;  // mul_(b2).addcmul_(grad, grad, 1 - b2)
      m[i] = mi;
      v[i] = vi;
      const float denom = std::sqrt(vi) / c.sqrt_bc2 + c.eps;      // (v.sqrt() / sqrt(bc2)).add_(eps)
      w = w + c.step_size * mi / denom;                            // addcdiv_(m, denom, -lr / bc1)
    }
    p[i] = w;
    if (out_bf16 != nullptr) out_bf16[i] = static_cast<c10::BFloat16>(w);
    if (out_f32 != nullptr) out_f32[i] = w;
  }
}

}  // namespace

void FusedUpdate(const UpdateHyper& hp, torch::Tensor param, const torch::Tensor& grad, const torch::Tensor& decay_mask,
                 torch::Tensor exp_avg, torch::Tensor exp_avg_sq, torch::Tensor compute) {
  const Kind kind = ParseKind(hp.type);
  const int64_t n = param.numel();
  const auto check = [&](const torch::Tensor& t, const char* name) {
    DSV3_CHECK(t.numel() == n && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
               t.device() == param.device())
        << "FusedUpdate: " << name << " must be a contiguous fp32 tensor of " << n << " elements on "
        << param.device() << ", got " << t.sizes() << " " << t.scalar_type() << " on " << t.device();
  };
  check(param, "param");
  check(grad, "grad");
  if (decay_mask.defined()) check(decay_mask, "decay_mask");
  if (kind != Kind::kSgd) {
    check(exp_avg, "exp_avg");
    check(exp_avg_sq, "exp_avg_sq");
  }
  if (compute.defined()) {
    DSV3_CHECK(compute.numel() == n && compute.is_contiguous() &&
               (compute.scalar_type() == torch::kBFloat16 || compute.scalar_type() == torch::kFloat))
        << "FusedUpdate: compute copy must be contiguous bf16 or fp32 of " << n << " elements";
  }
  detail::CheckDevice(param, "FusedUpdate");
  const double bc1 = 1 - std::pow(hp.beta1, static_cast<double>(hp.step));
  const double bc2 = 1 - std::pow(hp.beta2, static_cast<double>(hp.step));
#if DSV3_KERNELS_CUDA
  if (param.is_cuda()) {
    cuda_ops::FusedUpdate(hp, param, grad, decay_mask, exp_avg, exp_avg_sq, compute, bc1, std::sqrt(bc2));
    return;
  }
#endif
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* mask = decay_mask.defined() ? decay_mask.data_ptr<float>() : nullptr;
  float* m = kind == Kind::kSgd ? nullptr : exp_avg.data_ptr<float>();
  float* v = kind == Kind::kSgd ? nullptr : exp_avg_sq.data_ptr<float>();
  c10::BFloat16* out_bf16 =
      compute.defined() && compute.scalar_type() == torch::kBFloat16 ? compute.data_ptr<c10::BFloat16>() : nullptr;
  float* out_f32 = compute.defined() && compute.scalar_type() == torch::kFloat && !compute.is_same(param)
                       ? compute.data_ptr<float>()
                       : nullptr;
  Scalars c;
  c.lr = static_cast<float>(hp.lr);
  c.wd = static_cast<float>(hp.weight_decay);
  c.b1 = static_cast<float>(hp.beta1);
  c.b2 = static_cast<float>(hp.beta2);
  c.one_minus_b1 = static_cast<float>(1 - hp.beta1);
  c.one_minus_b2 = static_cast<float>(1 - hp.beta2);
  c.decay_factor = static_cast<float>(-hp.lr * hp.weight_decay);
  c.sqrt_bc2 = static_cast<float>(std::sqrt(bc2));
  c.step_size = static_cast<float>(-hp.lr / bc1);
  c.eps = static_cast<float>(hp.eps);
  c.grad_scale = static_cast<float>(hp.grad_scale);
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    switch (kind) {
      case Kind::kAdamW:
        UpdateRange<Kind::kAdamW>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
      case Kind::kAdam:
        UpdateRange<Kind::kAdam>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
      case Kind::kSgd:
        UpdateRange<Kind::kSgd>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
    }
  });
}

}  // namespace dsv3::kernels
