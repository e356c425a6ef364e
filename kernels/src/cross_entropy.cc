// Linear + cross-entropy, chunked over tokens: the [X, V] logits never exist at once, and
// their gradients are consumed chunk by chunk in the forward pass (Liger-Kernel's scheme).
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "cpu_tiles.h"
#include "device_route.h"
#include "dsv3/common/check.h"
#include "dsv3/kernels/kernels.h"
#if DSV3_KERNELS_CUDA
#include "cuda_ops.h"
#endif

namespace dsv3::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor ChunkMm(const torch::Tensor& a, const torch::Tensor& b) {
  return a.is_cpu() ? cpu::TiledMm(a, b) : torch::mm(a, b);
}

// Over one chunk of fp32 logits (C x V, modified in place when `grad`): the sum of the
// counted rows' losses, and with `grad` the loss gradient (softmax - onehot) * inv_count
// written over the logits, zero on ignored rows.
torch::Tensor ChunkLoss(torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index, bool grad,
                        double inv_count) {
#if DSV3_KERNELS_CUDA
  if (logits.is_cuda()) {
    return cuda_ops::CrossEntropyChunk(logits, targets, ignore_index, grad, inv_count);
  }
#endif
  // ATen's reductions and exp are vectorized for this CPU at run time.
  const torch::Tensor counted = targets != ignore_index;
  const torch::Tensor safe = targets.masked_fill(counted.logical_not(), 0).unsqueeze(1);
  const torch::Tensor lse = logits.logsumexp(1, /*keepdim=*/true);
  const torch::Tensor target_logit = logits.gather(1, safe);
  const torch::Tensor loss_sum = ((lse - target_logit).squeeze(1) * counted).sum();
  if (grad) {
    logits.sub_(lse).exp_();                        // softmax
    logits.scatter_add_(1, safe, -torch::ones_like(safe, logits.options()));  // - onehot
    logits.mul_((counted.to(logits.scalar_type()) * inv_count).unsqueeze(1));
  }
  return loss_sum;
}

struct LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h_in, const torch::Tensor& w,
                               const torch::Tensor& targets_in, int64_t ignore_index, int64_t chunk, bool need_h,
                               bool need_w) {
    const torch::Tensor h = h_in.contiguous();
    const torch::Tensor targets = targets_in.reshape({-1}).to(torch::kLong);
    const int64_t X = h.size(0);
    const auto acc = h.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    const int64_t count = (targets != ignore_index).sum().item<int64_t>();
    const double inv_count = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    const bool grad = need_h || need_w;
    torch::Tensor gh = need_h ? torch::empty_like(h) : torch::Tensor();
    torch::Tensor gw = need_w ? torch::zeros(w.sizes(), w.options().dtype(acc)) : torch::Tensor();
    torch::Tensor loss_sum = torch::zeros({}, h.options().dtype(acc));
    const torch::Tensor wt = w.t();
    for (int64_t start = 0; start < X; start += chunk) {
      const int64_t n = std::min(chunk, X - start);
      const torch::Tensor hc = h.narrow(0, start, n);
      torch::Tensor logits = ChunkMm(hc, wt).to(acc);
      loss_sum += ChunkLoss(logits, targets.narrow(0, start, n), ignore_index, grad, inv_count);
      if (!grad) continue;
      const torch::Tensor g = logits.to(h.scalar_type());
      if (need_h) {
        torch::Tensor dst = gh.narrow(0, start, n);
        if (h.is_cpu()) cpu::TiledMmOut(g, w, dst);
        else dst.copy_(torch::mm(g, w));
      }
      if (need_w) gw += ChunkMm(g.t(), hc).to(acc);
    }
    ctx->save_for_backward({gh, gw});
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    // Mean over counted rows: 0 / 0 = NaN when none count, as torch's cross_entropy.
    return (loss_sum / static_cast<double>(count)).to(acc);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor go = grads[0];
    torch::Tensor gh, gw;
    if (s[0].defined()) gh = s[0] * go.to(s[0].scalar_type());
    if (s[1].defined()) gw = (s[1] * go.to(s[1].scalar_type())).to(static_cast<c10::ScalarType>(ctx->saved_data["w_dtype"].toInt()));
    return {gh, gw, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor LinearCrossEntropy(const torch::Tensor& h_XD, const torch::Tensor& weight_VD,
                                 const torch::Tensor& targets_X, int64_t ignore_index, int64_t chunk_tokens) {
  detail::CheckDevice(h_XD, "LinearCrossEntropy");
  DSV3_CHECK(h_XD.dim() == 2 && weight_VD.dim() == 2 && weight_VD.size(1) == h_XD.size(1) &&
             targets_X.numel() == h_XD.size(0))
      << "LinearCrossEntropy: hidden " << h_XD.sizes() << ", head " << weight_VD.sizes() << ", targets "
      << targets_X.sizes();
  DSV3_CHECK(chunk_tokens > 0) << "LinearCrossEntropy: chunk_tokens must be positive, got " << chunk_tokens;
  const bool grad_on = torch::GradMode::is_enabled();
  return LinearCrossEntropyFunction::apply(h_XD, weight_VD, targets_X, ignore_index, chunk_tokens,
                                           grad_on && h_XD.requires_grad(), grad_on && weight_VD.requires_grad());
}

}  // namespace dsv3::kernels
