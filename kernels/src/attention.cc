// Causal attention, flash-style on the CPU: per (batch, head), blocks of queries against
// blocks of keys with an online softmax; the backward pass recomputes each block's
// probabilities from the saved log-sum-exp. Nothing of size T x S outlives one block.
#include <ATen/Parallel.h>

#include <algorithm>
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

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Block edge: large enough that a block's GEMMs dominate its elementwise passes.
int64_t BlockSize(int64_t T) { return T <= 256 ? std::max<int64_t>(T, 1) : 128; }

// True where query i0 + r may see key j0 + c.
torch::Tensor VisibleBlock(int64_t i0, int64_t nq, int64_t j0, int64_t nk, const std::optional<int64_t>& window,
                           const int64_t* segments, bool& all_visible) {
  all_visible = (j0 + nk - 1 <= i0) && (!window || (i0 + nq - 1) - j0 < *window) && segments == nullptr;
  if (all_visible) return {};
  torch::Tensor mask = torch::empty({nq, nk}, torch::kBool);
  bool* mp = mask.data_ptr<bool>();
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t qpos = i0 + r;
    for (int64_t c = 0; c < nk; ++c) {
      const int64_t kpos = j0 + c;
      bool vis = kpos <= qpos && (!window || qpos - kpos < *window);
      if (vis && segments != nullptr) vis = segments[qpos] == segments[kpos];
      mp[r * nk + c] = !vis;  // true = hidden (masked_fill's convention)
    }
  }
  return mask;
}

// First key block that any query of [i0, i0 + nq) may see.
int64_t FirstKeyBlock(int64_t i0, int64_t block, const std::optional<int64_t>& window) {
  if (!window) return 0;
  const int64_t lo = std::max<int64_t>(0, i0 - *window + 1);
  return (lo / block) * block;
}

struct Inputs {
  torch::Tensor q, k, v;  // B x H x T x D in the accumulation dtype, q pre-scaled
};

std::tuple<torch::Tensor, torch::Tensor> AttentionForwardCpu(const Inputs& in, const AttentionMask& mask) {
  const int64_t B = in.q.size(0), H = in.q.size(1), T = in.q.size(2), Dv = in.v.size(3);
  torch::Tensor o = torch::zeros({B, H, T, Dv}, in.q.options());
  torch::Tensor lse = torch::empty({B, H, T}, in.q.options());
  const int64_t blk = BlockSize(T);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    cpu::WorkerNoGrad no_grad;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t* seg = mask.segments_BT.defined() ? mask.segments_BT.data_ptr<int64_t>() + b * T : nullptr;
      const torch::Tensor Q = in.q[b][h], K = in.k[b][h], V = in.v[b][h];
      torch::Tensor O = o[b][h], L = lse[b][h];
      for (int64_t i0 = 0; i0 < T; i0 += blk) {
        const int64_t nq = std::min(blk, T - i0);
        const torch::Tensor qi = Q.narrow(0, i0, nq);
        torch::Tensor oi = O.narrow(0, i0, nq);
        torch::Tensor m = torch::full({nq, 1}, kNegInf, Q.options());
        torch::Tensor l = torch::zeros({nq, 1}, Q.options());
        for (int64_t j0 = FirstKeyBlock(i0, blk, mask.window); j0 <= i0 + nq - 1; j0 += blk) {
          const int64_t nk = std::min(blk, T - j0);
          bool all_visible = false;
          const torch::Tensor hidden = VisibleBlock(i0, nq, j0, nk, mask.window, seg, all_visible);
          torch::Tensor s = torch::mm(qi, K.narrow(0, j0, nk).t());
          if (!all_visible) s.masked_fill_(hidden, kNegInf);
          const torch::Tensor m_new = torch::maximum(m, std::get<0>(s.max(1, /*keepdim=*/true)));
          // Rows with nothing visible yet keep m = -inf: subtract 0 there instead of -inf.
          const torch::Tensor m_safe = m_new.masked_fill(m_new == kNegInf, 0.0);
          s.sub_(m_safe).exp_();
          const torch::Tensor alpha = (m - m_safe).exp_();
          l.mul_(alpha).add_(s.sum(1, /*keepdim=*/true));
          oi.mul_(alpha).add_(torch::mm(s, V.narrow(0, j0, nk)));
          m = m_new;
        }
        oi.div_(l);
        L.narrow(0, i0, nq).copy_((m + l.log()).squeeze(1));
      }
    }
  });
  return {o, lse};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionBackwardCpu(const Inputs& in, const torch::Tensor& o,
                                                                             const torch::Tensor& lse,
                                                                             const torch::Tensor& go,
                                                                             const AttentionMask& mask) {
  const int64_t B = in.q.size(0), H = in.q.size(1), T = in.q.size(2);
  torch::Tensor gq = torch::zeros_like(in.q), gk = torch::zeros_like(in.k), gv = torch::zeros_like(in.v);
  const torch::Tensor delta = (go * o).sum(-1, /*keepdim=*/true);  // B x H x T x 1: rowsum(dO * O)
  const int64_t blk = BlockSize(T);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    cpu::WorkerNoGrad no_grad;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t* seg = mask.segments_BT.defined() ? mask.segments_BT.data_ptr<int64_t>() + b * T : nullptr;
      const torch::Tensor Q = in.q[b][h], K = in.k[b][h], V = in.v[b][h], dO = go[b][h];
      const torch::Tensor Lh = lse[b][h].unsqueeze(1), Dh = delta[b][h];
      torch::Tensor dQ = gq[b][h], dK = gk[b][h], dV = gv[b][h];
      for (int64_t i0 = 0; i0 < T; i0 += blk) {
        const int64_t nq = std::min(blk, T - i0);
        const torch::Tensor qi = Q.narrow(0, i0, nq), doi = dO.narrow(0, i0, nq);
        const torch::Tensor li = Lh.narrow(0, i0, nq), di = Dh.narrow(0, i0, nq);
        torch::Tensor dqi = dQ.narrow(0, i0, nq);
        for (int64_t j0 = FirstKeyBlock(i0, blk, mask.window); j0 <= i0 + nq - 1; j0 += blk) {
          const int64_t nk = std::min(blk, T - j0);
          bool all_visible = false;
          const torch::Tensor hidden = VisibleBlock(i0, nq, j0, nk, mask.window, seg, all_visible);
          const torch::Tensor kj = K.narrow(0, j0, nk), vj = V.narrow(0, j0, nk);
          torch::Tensor p = torch::mm(qi, kj.t());
          if (!all_visible) p.masked_fill_(hidden, kNegInf);
          p.sub_(li).exp_();
          torch::Tensor dvj = dV.narrow(0, j0, nk), dkj = dK.narrow(0, j0, nk);
          dvj.add_(torch::mm(p.t(), doi));
          torch::Tensor ds = torch::mm(doi, vj.t()).sub_(di).mul_(p);
          dqi.add_(torch::mm(ds, kj));
          dkj.add_(torch::mm(ds.t(), qi));
        }
      }
    }
  });
  return {gq, gk, gv};
}

Inputs ToBlocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  const auto acc = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  return {(q.to(acc) * scale).permute({0, 2, 1, 3}).contiguous(), k.to(acc).permute({0, 2, 1, 3}).contiguous(),
          v.to(acc).permute({0, 2, 1, 3}).contiguous()};
}

struct AttentionFunction : public torch::autograd::Function<AttentionFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale, int64_t window, const torch::Tensor& segments) {
    AttentionMask mask;
    if (window > 0) mask.window = window;
    if (segments.numel() > 0) mask.segments_BT = segments;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["window"] = window;
#if DSV3_KERNELS_CUDA
    if (q.is_cuda()) {
      auto [o, lse] = cuda_ops::AttentionForward(q.contiguous(), k.contiguous(), v.contiguous(), scale, mask);
      ctx->save_for_backward({q, k, v, o, lse, segments});
      return o;
    }
#endif
    const Inputs in = ToBlocks(q, k, v, scale);
    auto [o, lse] = AttentionForwardCpu(in, mask);
    ctx->save_for_backward({in.q, in.k, in.v, o, lse, segments});
    return o.permute({0, 2, 1, 3}).to(q.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t window = ctx->saved_data["window"].toInt();
    AttentionMask mask;
    if (window > 0) mask.window = window;
    if (s[5].numel() > 0) mask.segments_BT = s[5];
#if DSV3_KERNELS_CUDA
    if (s[0].is_cuda()) {
      auto [gq, gk, gv] = cuda_ops::AttentionBackward(grads[0].contiguous(), s[0].contiguous(), s[1].contiguous(),
                                                      s[2].contiguous(), s[3], s[4], scale, mask);
      return {gq, gk, gv, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
#endif
    const Inputs in{s[0], s[1], s[2]};
    const torch::Tensor go = grads[0].to(in.q.scalar_type()).permute({0, 2, 1, 3}).contiguous();
    auto [gq, gk, gv] = AttentionBackwardCpu(in, s[3], s[4], go, mask);
    const auto dtype = grads[0].scalar_type();
    // q entered pre-scaled: d/dq = scale * d/d(q * scale).
    return {(gq * scale).permute({0, 2, 1, 3}).to(dtype), gk.permute({0, 2, 1, 3}).to(dtype),
            gv.permute({0, 2, 1, 3}).to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Attention(const torch::Tensor& q_BTHQ, const torch::Tensor& k_BTHQ, const torch::Tensor& v_BTHV,
                        double scale, const AttentionMask& mask) {
  detail::CheckDevice(q_BTHQ, "Attention");
  DSV3_CHECK(q_BTHQ.dim() == 4 && k_BTHQ.sizes() == q_BTHQ.sizes() && v_BTHV.dim() == 4 &&
             v_BTHV.sizes().slice(0, 3) == q_BTHQ.sizes().slice(0, 3))
      << "Attention: q " << q_BTHQ.sizes() << ", k " << k_BTHQ.sizes() << ", v " << v_BTHV.sizes()
      << " (expected B x T x H x D with equal B, T, H and q, k of one width)";
  DSV3_CHECK(!mask.window || *mask.window > 0) << "Attention: window must be positive, got " << *mask.window;
  torch::Tensor segments = torch::empty({0}, torch::TensorOptions().dtype(torch::kLong).device(q_BTHQ.device()));
  if (mask.segments_BT.defined()) {
    DSV3_CHECK(mask.segments_BT.dim() == 2 && mask.segments_BT.size(0) == q_BTHQ.size(0) &&
               mask.segments_BT.size(1) == q_BTHQ.size(1))
        << "Attention: segments " << mask.segments_BT.sizes() << " for q " << q_BTHQ.sizes();
    segments = mask.segments_BT.to(torch::kLong).contiguous();
  }
  return AttentionFunction::apply(q_BTHQ, k_BTHQ, v_BTHV, scale, mask.window.value_or(0), segments);
}

}  // namespace dsv3::kernels
