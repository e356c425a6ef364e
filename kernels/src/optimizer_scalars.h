// The optimizer update's scalars, rounded to fp32 as ATen rounds each op's double scalar, shared
// by the CPU update and the CUDA kernel (no LibTorch, no CUDA here).
#pragma once

#include <cmath>
#include <cstdint>

namespace dsv3::kernels {

enum class OptimizerKind { kAdamW, kAdam, kSgd };

struct OptimizerScalars {
  float lr, wd, b1, b2, one_minus_b1, one_minus_b2, decay_factor, sqrt_bc2, step_size, eps, grad_scale;
};

inline OptimizerScalars MakeOptimizerScalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                             int64_t step, double grad_scale) {
  const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
  OptimizerScalars c;
  c.lr = static_cast<float>(lr);
  c.wd = static_cast<float>(weight_decay);
  c.b1 = static_cast<float>(beta1);
  c.b2 = static_cast<float>(beta2);
  c.one_minus_b1 = static_cast<float>(1 - beta1);
  c.one_minus_b2 = static_cast<float>(1 - beta2);
  c.decay_factor = static_cast<float>(-lr * weight_decay);
  c.sqrt_bc2 = static_cast<float>(std::sqrt(bc2));
  c.step_size = static_cast<float>(-lr / bc1);
  c.eps = static_cast<float>(eps);
  c.grad_scale = static_cast<float>(grad_scale);
  return c;
}

// One element of the update, in torch::optim's op order (see fused_optimizer.h).
#if defined(__CUDACC__)
#define DSV3_HOST_DEVICE __host__ __device__
#else
#define DSV3_HOST_DEVICE
#endif
template <OptimizerKind K>
DSV3_HOST_DEVICE inline float UpdateElement(const OptimizerScalars& c, float w, float g, float dm, float* m,
                                            float* v) {
  float grad = g * c.grad_scale;
  if (K == OptimizerKind::kAdamW) {
    if (c.wd != 0) w = w + c.decay_factor * w * dm;  // p.addcmul_(p, mask, -lr * wd)
  } else {
    if (c.wd != 0) grad = grad + dm * w * c.wd;  // grad + mask * p * wd
  }
  if (K == OptimizerKind::kSgd) return w + (-c.lr) * grad;  // p.add_(grad, -lr)
  const float mi = *m * c.b1 + c.one_minus_b1 * grad;        // m.mul_(b1).add_(grad, 1 - b1)
  const float vi = *v * c.b2 + c.one_minus_b2 * grad * grad;  // v.mul_(b2).addcmul_(grad, grad, 1 - b2)
  *m = mi;
  *v = vi;
  const float denom = sqrtf(vi) / c.sqrt_bc2 + c.eps;  // (v.sqrt() / sqrt(bc2)).add_(eps)
  return w + c.step_size * mi / denom;                // p.addcdiv_(m, denom, -lr / bc1)
}

}  // namespace dsv3::kernels
