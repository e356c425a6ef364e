#include "dsv3/dist/optimizer_update.h"

#include <cmath>

#include "dsv3/kernels/fused_optimizer.h"
#include "dsv3/kernels/kernels.h"

namespace dsv3::dist {

void ApplyUpdate(const OptimizerOptions& o, double lr, int64_t step, torch::Tensor p, torch::Tensor grad,
                 const torch::Tensor& decay, torch::Tensor m, torch::Tensor v, double grad_scale) {
  if (!o.fused || !kernels::Available(p.device())) {
    ReferenceUpdate(o, lr, step, p, grad_scale == 1.0 ? grad : grad * grad_scale, decay, m, v);
    return;
  }
  kernels::UpdateHyper hp;
  hp.type = o.type;
  hp.lr = lr;
  hp.beta1 = o.beta1;
  hp.beta2 = o.beta2;
  hp.eps = o.eps;
  hp.weight_decay = o.weight_decay;
  hp.step = step;
  hp.grad_scale = grad_scale;
  kernels::FusedUpdate(hp, p, grad.contiguous(), decay.contiguous(), m, v);
}

void ReferenceUpdate(const OptimizerOptions& o, double lr, int64_t step, torch::Tensor p, torch::Tensor grad,
                     const torch::Tensor& decay, torch::Tensor m, torch::Tensor v) {
  torch::NoGradGuard no_grad;
  const double wd = o.weight_decay;
  // The same arithmetic as torch::optim's AdamW / Adam / SGD (without momentum).
  if (o.type == "adamw") {
    if (wd != 0) p.addcmul_(p, decay, -lr * wd);
  } else if (wd != 0) {
    grad = grad + decay * p * wd;
  }
  if (o.type == "sgd") {
    p.add_(grad, -lr);
    return;
  }
  const double b1 = o.beta1, b2 = o.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(step));
  m.mul_(b1).add_(grad, 1 - b1);
  v.mul_(b2).addcmul_(grad, grad, 1 - b2);
  const torch::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(o.eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

}  // namespace dsv3::dist
