// AdamW / Adam / SGD in one pass over flat fp32 shards.
#include "dsv3/kernels/fused_optimizer.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "device_route.h"
#include "optimizer_scalars.h"
#include "dsv3/common/check.h"
#if DSV3_KERNELS_CUDA
#include "cuda_ops.h"
#endif

namespace dsv3::kernels {
namespace {

OptimizerKind ParseKind(const std::string& type) {
  if (type == "adamw") return OptimizerKind::kAdamW;
  if (type == "adam") return OptimizerKind::kAdam;
  if (type == "sgd") return OptimizerKind::kSgd;
  throw std::invalid_argument("FusedUpdate: optimizer type '" + type + "' is not one of adamw, adam, sgd");
}

template <OptimizerKind K>
void UpdateRange(const OptimizerScalars& c, float* p, const float* g, const float* mask, float* m, float* v,
                 int64_t begin, int64_t end, c10::BFloat16* out_bf16, float* out_f32) {
  float unused_m = 0, unused_v = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float dm = mask != nullptr ? mask[i] : 1.0f;
    const float w = K == OptimizerKind::kSgd ? UpdateElement<K>(c, p[i], g[i], dm, &unused_m, &unused_v)
                                             : UpdateElement<K>(c, p[i], g[i], dm, m + i, v + i);
    p[i] = w;
    if (out_bf16 != nullptr) out_bf16[i] = static_cast<c10::BFloat16>(w);
    if (out_f32 != nullptr) out_f32[i] = w;
  }
}

}  // namespace

void FusedUpdate(const UpdateHyper& hp, torch::Tensor param, const torch::Tensor& grad, const torch::Tensor& decay_mask,
                 torch::Tensor exp_avg, torch::Tensor exp_avg_sq, torch::Tensor compute) {
  const OptimizerKind kind = ParseKind(hp.type);
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
  if (kind != OptimizerKind::kSgd) {
    check(exp_avg, "exp_avg");
    check(exp_avg_sq, "exp_avg_sq");
  }
  if (compute.defined()) {
    DSV3_CHECK(compute.numel() == n && compute.is_contiguous() &&
               (compute.scalar_type() == torch::kBFloat16 || compute.scalar_type() == torch::kFloat))
        << "FusedUpdate: compute copy must be contiguous bf16 or fp32 of " << n << " elements";
  }
  detail::CheckDevice(param, "FusedUpdate");
  const OptimizerScalars c =
      MakeOptimizerScalars(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, hp.step, hp.grad_scale);
#if DSV3_KERNELS_CUDA
  if (param.is_cuda()) {
    cuda_ops::FusedUpdate(kind, c, param, grad, decay_mask, exp_avg, exp_avg_sq, compute);
    return;
  }
#endif
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* mask = decay_mask.defined() ? decay_mask.data_ptr<float>() : nullptr;
  float* m = kind == OptimizerKind::kSgd ? nullptr : exp_avg.data_ptr<float>();
  float* v = kind == OptimizerKind::kSgd ? nullptr : exp_avg_sq.data_ptr<float>();
  c10::BFloat16* out_bf16 =
      compute.defined() && compute.scalar_type() == torch::kBFloat16 ? compute.data_ptr<c10::BFloat16>() : nullptr;
  float* out_f32 = compute.defined() && compute.scalar_type() == torch::kFloat && !compute.is_same(param)
                       ? compute.data_ptr<float>()
                       : nullptr;
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    switch (kind) {
      case OptimizerKind::kAdamW:
        UpdateRange<OptimizerKind::kAdamW>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
      case OptimizerKind::kAdam:
        UpdateRange<OptimizerKind::kAdam>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
      case OptimizerKind::kSgd:
        UpdateRange<OptimizerKind::kSgd>(c, p, g, mask, m, v, begin, end, out_bf16, out_f32);
        break;
    }
  });
}

}  // namespace dsv3::kernels
