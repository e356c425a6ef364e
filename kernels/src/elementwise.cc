// RMSNorm, interleaved RoPE and SwiGLU: one pass over the data each way, no temporaries.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

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

// Rows per chunk of the weight-gradient reduction: a fixed split (independent of the thread
// count) summed in order, so the result is deterministic.
constexpr int64_t kNormGradChunks = 32;

std::tuple<torch::Tensor, torch::Tensor> RmsNormForwardCpu(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  torch::Tensor y = torch::empty_like(x);
  const auto acc_dtype = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor rstd = torch::empty({rows}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dsv3_rms_norm_fwd", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc* rp = rstd.data_ptr<acc>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * D;
        acc ss = 0;
        for (int64_t d = 0; d < D; ++d) ss += static_cast<acc>(xr[d]) * static_cast<acc>(xr[d]);
        const acc inv = acc(1) / std::sqrt(ss / static_cast<acc>(D) + static_cast<acc>(eps));
        rp[r] = inv;
        scalar_t* yr = yp + r * D;
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t normed = static_cast<scalar_t>(static_cast<acc>(xr[d]) * inv);
          yr[d] = static_cast<scalar_t>(static_cast<acc>(wp[d]) * static_cast<acc>(normed));
        }
      }
    });
  });
  return {y, rstd};
}

std::tuple<torch::Tensor, torch::Tensor> RmsNormBackwardCpu(const torch::Tensor& gy, const torch::Tensor& x,
                                                            const torch::Tensor& w, const torch::Tensor& rstd) {
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  torch::Tensor gx = torch::empty_like(x);
  const auto acc_dtype = rstd.scalar_type();
  const int64_t chunks = std::max<int64_t>(1, std::min(kNormGradChunks, rows));
  torch::Tensor partial = torch::zeros({chunks, D}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dsv3_rms_norm_bwd", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    const acc* rp = rstd.data_ptr<acc>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    acc* pp = partial.data_ptr<acc>();
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        acc* gw = pp + c * D;
        for (int64_t r = c * per_chunk; r < std::min(rows, (c + 1) * per_chunk); ++r) {
          const scalar_t* xr = xp + r * D;
          const scalar_t* gr = gp + r * D;
          const acc inv = rp[r];
          acc dot = 0;  // sum_d (g_d w_d) * xhat_d
          for (int64_t d = 0; d < D; ++d) {
            const acc xhat = static_cast<acc>(xr[d]) * inv;
            const acc gn = static_cast<acc>(gr[d]) * static_cast<acc>(wp[d]);
            dot += gn * xhat;
            gw[d] += static_cast<acc>(gr[d]) * static_cast<acc>(static_cast<scalar_t>(xhat));
          }
          const acc mean = dot / static_cast<acc>(D);
          scalar_t* gxr = gxp + r * D;
          for (int64_t d = 0; d < D; ++d) {
            const acc xhat = static_cast<acc>(xr[d]) * inv;
            const acc gn = static_cast<acc>(gr[d]) * static_cast<acc>(wp[d]);
            gxr[d] = static_cast<scalar_t>(inv * (gn - xhat * mean));
          }
        }
      }
    });
  });
  return {gx, partial.sum(0).to(w.scalar_type())};
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in, double eps) {
    const torch::Tensor x = x_in.contiguous(), w = w_in.contiguous();
    torch::Tensor y, rstd;
#if DSV3_KERNELS_CUDA
    if (x.is_cuda()) std::tie(y, rstd) = cuda_ops::RmsNormForward(x, w, eps);
    else
#endif
      std::tie(y, rstd) = RmsNormForwardCpu(x, w, eps);
    ctx->save_for_backward({x, w, rstd});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor gy = grads[0].contiguous();
    torch::Tensor gx, gw;
#if DSV3_KERNELS_CUDA
    if (gy.is_cuda()) std::tie(gx, gw) = cuda_ops::RmsNormBackward(gy, s[0], s[1], s[2]);
    else
#endif
      std::tie(gx, gw) = RmsNormBackwardCpu(gy, s[0], s[1], s[2]);
    return {gx, gw, torch::Tensor()};
  }
};

// cos and sin of position x frequency, (rows x) T x R/2, computed with the same tensor ops
// as model::ApplyRope so both paths rotate by bit-identical angles.
std::pair<torch::Tensor, torch::Tensor> RopeTables(const torch::Tensor& positions, int64_t R, double theta,
                                                   const torch::TensorOptions& fopts) {
  const torch::Tensor inv_freq = torch::pow(theta, -torch::arange(0, R, 2, fopts) / static_cast<double>(R));
  const torch::Tensor angle = positions.to(fopts).unsqueeze(-1) * inv_freq;
  return {angle.cos().contiguous(), angle.sin().contiguous()};
}

// Rotates every pair of x_BTHR by the table's angle (by minus the angle with `inverse`, the
// backward pass: the transpose of a rotation is its inverse).
torch::Tensor RopeApplyCpu(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool per_row,
                           bool inverse) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), R = x.size(3), P = R / 2;
  torch::Tensor y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dsv3_rope", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const acc* cp = cos.data_ptr<acc>();
    const acc* sp = sin.data_ptr<acc>();
    const acc sign = inverse ? acc(-1) : acc(1);
    at::parallel_for(0, B * T, 8, [&](int64_t begin, int64_t end) {
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t table_row = per_row ? bt : bt % T;
        const acc* c = cp + table_row * P;
        const acc* s = sp + table_row * P;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xr = xp + (bt * H + h) * R;
          scalar_t* yr = yp + (bt * H + h) * R;
          for (int64_t i = 0; i < P; ++i) {
            const acc x0 = static_cast<acc>(xr[2 * i]), x1 = static_cast<acc>(xr[2 * i + 1]);
            const acc si = sign * s[i];
            yr[2 * i] = static_cast<scalar_t>(x0 * c[i] - x1 * si);
            yr[2 * i + 1] = static_cast<scalar_t>(x0 * si + x1 * c[i]);
          }
        }
      }
    });
  });
  return y;
}

torch::Tensor RopeApply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool per_row,
                        bool inverse) {
#if DSV3_KERNELS_CUDA
  if (x.is_cuda()) return cuda_ops::RopeApply(x, cos, sin, per_row, inverse);
#endif
  return RopeApplyCpu(x, cos, sin, per_row, inverse);
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, bool per_row) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["per_row"] = per_row;
    return RopeApply(x.contiguous(), cos, sin, per_row, /*inverse=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor gx =
        RopeApply(grads[0].contiguous(), s[0], s[1], ctx->saved_data["per_row"].toBool(), /*inverse=*/true);
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor SwiGluForwardCpu(const torch::Tensor& g, const torch::Tensor& u) {
  torch::Tensor y = torch::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "dsv3_swiglu_fwd", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, g.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc x = static_cast<acc>(gp[i]);
        // silu rounded to the dtype first, as torch::silu(gate) * up computes it.
        const scalar_t silu = static_cast<scalar_t>(x / (acc(1) + std::exp(-x)));
        yp[i] = static_cast<scalar_t>(static_cast<acc>(silu) * static_cast<acc>(up[i]));
      }
    });
  });
  return y;
}

std::tuple<torch::Tensor, torch::Tensor> SwiGluBackwardCpu(const torch::Tensor& gy, const torch::Tensor& g,
                                                           const torch::Tensor& u) {
  torch::Tensor gg = torch::empty_like(g), gu = torch::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "dsv3_swiglu_bwd", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* ggp = gg.data_ptr<scalar_t>();
    scalar_t* gup = gu.data_ptr<scalar_t>();
    at::parallel_for(0, g.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc x = static_cast<acc>(gp[i]), dy = static_cast<acc>(gyp[i]);
        const acc sig = acc(1) / (acc(1) + std::exp(-x));
        gup[i] = static_cast<scalar_t>(dy * static_cast<acc>(static_cast<scalar_t>(x * sig)));
        ggp[i] = static_cast<scalar_t>(dy * static_cast<acc>(up[i]) * sig * (acc(1) + x * (acc(1) - sig)));
      }
    });
  });
  return {gg, gu};
}

struct SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    const torch::Tensor g = gate.contiguous(), u = up.contiguous();
    ctx->save_for_backward({g, u});
#if DSV3_KERNELS_CUDA
    if (g.is_cuda()) return cuda_ops::SwiGluForward(g, u);
#endif
    return SwiGluForwardCpu(g, u);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor gy = grads[0].contiguous();
#if DSV3_KERNELS_CUDA
    if (gy.is_cuda()) {
      auto [gg, gu] = cuda_ops::SwiGluBackward(gy, s[0], s[1]);
      return {gg, gu};
    }
#endif
    auto [gg, gu] = SwiGluBackwardCpu(gy, s[0], s[1]);
    return {gg, gu};
  }
};

}  // namespace

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  DSV3_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1))
      << "RmsNorm: weight " << weight.sizes() << " for input " << x.sizes();
  DSV3_CHECK(weight.scalar_type() == x.scalar_type())
      << "RmsNorm: weight dtype " << weight.scalar_type() << " differs from input dtype " << x.scalar_type();
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor Rope(const torch::Tensor& x_BTHR, const torch::Tensor& positions, double theta) {
  DSV3_CHECK(x_BTHR.dim() == 4 && x_BTHR.size(3) % 2 == 0) << "Rope expects B x T x H x R (R even), got "
                                                           << x_BTHR.sizes();
  const int64_t B = x_BTHR.size(0), T = x_BTHR.size(1), R = x_BTHR.size(3);
  DSV3_CHECK(positions.size(-1) == T && (positions.dim() == 1 || (positions.dim() == 2 && positions.size(0) == B)))
      << "Rope: positions " << positions.sizes() << " for " << B << " x " << T << " tokens";
  const auto fopts = torch::TensorOptions()
                         .dtype(x_BTHR.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat)
                         .device(x_BTHR.device());
  auto [cos, sin] = RopeTables(positions, R, theta, fopts);
  return RopeFunction::apply(x_BTHR, cos, sin, positions.dim() == 2);
}

torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
  DSV3_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type())
      << "SwiGlu: gate " << gate.sizes() << " " << gate.scalar_type() << " vs up " << up.sizes() << " "
      << up.scalar_type();
  return SwiGluFunction::apply(gate, up);
}

}  // namespace dsv3::kernels
