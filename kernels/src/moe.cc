// MoE dispatch and combine (histogram, scan, scatter; no sort) and the grouped expert GEMM.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <numeric>
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

torch::Tensor CapacityKeepCpu(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t E,
                              int64_t capacity) {
  const torch::Tensor expert = expert_XK.contiguous().to(torch::kLong);
  const torch::Tensor gate = gate_XK.contiguous().to(torch::kDouble);
  const int64_t n = expert.numel();
  const int64_t* ep = expert.data_ptr<int64_t>();
  const double* gp = gate.data_ptr<double>();
  std::vector<std::vector<int64_t>> by_expert(static_cast<size_t>(E));
  for (int64_t a = 0; a < n; ++a) by_expert[static_cast<size_t>(ep[a])].push_back(a);
  torch::Tensor keep = torch::zeros(expert_XK.sizes(), expert.options().dtype(torch::kBool));
  bool* kp = keep.data_ptr<bool>();
  for (auto& list : by_expert) {
    // Highest gates first; equal gates keep their flat order (the reference's stable sort).
    std::stable_sort(list.begin(), list.end(), [&](int64_t a, int64_t b) { return gp[a] > gp[b]; });
    for (size_t i = 0; i < list.size() && static_cast<int64_t>(i) < capacity; ++i) kp[list[i]] = true;
  }
  return keep;
}

DispatchPlan PlanDispatchCpu(const torch::Tensor& expert_XK, const torch::Tensor& keep_XK, int64_t E) {
  const torch::Tensor expert = expert_XK.contiguous().to(torch::kLong);
  const torch::Tensor keep = keep_XK.contiguous().to(torch::kBool);
  const int64_t n = expert.numel(), k = expert_XK.dim() == 2 ? expert_XK.size(1) : 1;
  const int64_t* ep = expert.data_ptr<int64_t>();
  const bool* kp = keep.data_ptr<bool>();
  DispatchPlan plan;
  plan.counts_E = torch::zeros({E}, expert.options());
  plan.offsets_E1 = torch::zeros({E + 1}, expert.options());
  int64_t* counts = plan.counts_E.data_ptr<int64_t>();
  int64_t* offsets = plan.offsets_E1.data_ptr<int64_t>();
  for (int64_t a = 0; a < n; ++a) {  // histogram
    if (kp[a]) ++counts[ep[a]];
  }
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];  // scan
  plan.token_A = torch::empty({offsets[E]}, expert.options());
  plan.slot_XK = torch::empty(expert_XK.sizes(), expert.options());
  int64_t* token = plan.token_A.data_ptr<int64_t>();
  int64_t* slot = plan.slot_XK.data_ptr<int64_t>();
  std::vector<int64_t> fill(offsets, offsets + E);
  for (int64_t a = 0; a < n; ++a) {  // scatter, token order within each expert
    if (!kp[a]) {
      slot[a] = -1;
      continue;
    }
    const int64_t s = fill[ep[a]]++;
    slot[a] = s;
    token[s] = a / k;
  }
  return plan;
}

torch::Tensor GatherRowsCpu(const torch::Tensor& x_XD, const torch::Tensor& token_A) {
  const int64_t A = token_A.numel(), D = x_XD.size(1);
  torch::Tensor out = torch::empty({A, D}, x_XD.options());
  const int64_t* tp = token_A.data_ptr<int64_t>();
  const size_t row_bytes = static_cast<size_t>(D) * x_XD.element_size();
  const char* src = static_cast<const char*>(x_XD.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, A, 64, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) std::memcpy(dst + a * row_bytes, src + tp[a] * row_bytes, row_bytes);
  });
  return out;
}

// out_XD[x] = sum over x's kept slots j of gate[x, j] * rows_AD[slot], in slot-column order
// (deterministic). Without a gate the plain sum: the gradient of Dispatch. With one, Combine;
// each product is rounded to the dtype first, as the reference's out * gate is.
torch::Tensor SumSlotRowsCpu(const torch::Tensor& rows_AD, const torch::Tensor& slot_XK, int64_t D,
                             const torch::Tensor& gate_XK = {}) {
  const int64_t X = slot_XK.size(0), k = slot_XK.size(1);
  torch::Tensor out = torch::empty({X, D}, rows_AD.options());
  const int64_t* sp = slot_XK.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, rows_AD.scalar_type(), "dsv3_sum_slot_rows", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const torch::Tensor gate =
        gate_XK.defined() ? gate_XK.to(rows_AD.scalar_type()).contiguous() : torch::Tensor();  // as the reference rounds it
    const scalar_t* gp = gate.defined() ? gate.data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = rows_AD.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, X, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc> row(static_cast<size_t>(D));
      for (int64_t x = begin; x < end; ++x) {
        std::fill(row.begin(), row.end(), acc(0));
        for (int64_t j = 0; j < k; ++j) {
          const int64_t s = sp[x * k + j];
          if (s < 0) continue;
          const scalar_t* r = rp + s * D;
          if (gp == nullptr) {
            for (int64_t d = 0; d < D; ++d) row[d] += static_cast<acc>(r[d]);
          } else {
            const acc g = static_cast<acc>(gp[x * k + j]);
            for (int64_t d = 0; d < D; ++d) row[d] += static_cast<acc>(static_cast<scalar_t>(g * static_cast<acc>(r[d])));
          }
        }
        for (int64_t d = 0; d < D; ++d) op[x * D + d] = static_cast<scalar_t>(row[d]);
      }
    });
  });
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> CombineBackwardCpu(const torch::Tensor& gy_XD, const torch::Tensor& y_AD,
                                                            const torch::Tensor& gate_XK, const torch::Tensor& slot_XK,
                                                            int64_t A) {
  const int64_t X = slot_XK.size(0), k = slot_XK.size(1), D = gy_XD.size(1);
  torch::Tensor gy_AD = torch::empty({A, D}, y_AD.options());
  torch::Tensor ggate = torch::zeros({X, k}, gate_XK.options().dtype(torch::kDouble));
  const int64_t* sp = slot_XK.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y_AD.scalar_type(), "dsv3_combine_bwd", [&] {
    using acc = cpu::acc_t<scalar_t>;
    const torch::Tensor gate = gate_XK.to(y_AD.scalar_type()).contiguous();
    const scalar_t* yp = y_AD.data_ptr<scalar_t>();
    const scalar_t* gp = gate.data_ptr<scalar_t>();
    const scalar_t* gyp = gy_XD.data_ptr<scalar_t>();
    scalar_t* gap = gy_AD.data_ptr<scalar_t>();
    double* ggp = ggate.data_ptr<double>();
    at::parallel_for(0, X, 16, [&](int64_t begin, int64_t end) {
      for (int64_t x = begin; x < end; ++x) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t s = sp[x * k + j];
          if (s < 0) continue;
          const acc g = static_cast<acc>(gp[x * k + j]);
          acc dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            const acc dy = static_cast<acc>(gyp[x * D + d]);
            gap[s * D + d] = static_cast<scalar_t>(g * dy);
            dot += dy * static_cast<acc>(yp[s * D + d]);
          }
          ggp[x * k + j] = static_cast<double>(dot);
        }
      }
    });
  });
  return {gy_AD, ggate.to(gate_XK.scalar_type())};
}

struct DispatchFunction : public torch::autograd::Function<DispatchFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_XD, const torch::Tensor& token_A,
                               const torch::Tensor& slot_XK) {
    ctx->save_for_backward({slot_XK});
    ctx->saved_data["D"] = x_XD.size(1);
    const torch::Tensor x = x_XD.contiguous();
#if DSV3_KERNELS_CUDA
    if (x.is_cuda()) return cuda_ops::GatherRows(x, token_A);
#endif
    return GatherRowsCpu(x, token_A);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor slot = ctx->get_saved_variables()[0];
    const int64_t D = ctx->saved_data["D"].toInt();
    const torch::Tensor g = grads[0].contiguous();
#if DSV3_KERNELS_CUDA
    if (g.is_cuda()) return {cuda_ops::SumSlots(g, slot, D), torch::Tensor(), torch::Tensor()};
#endif
    return {SumSlotRowsCpu(g, slot, D), torch::Tensor(), torch::Tensor()};
  }
};

struct CombineFunction : public torch::autograd::Function<CombineFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y_AD, const torch::Tensor& gate_XK,
                               const torch::Tensor& slot_XK) {
    const torch::Tensor y = y_AD.contiguous(), gate = gate_XK.contiguous();
    ctx->save_for_backward({y, gate, slot_XK});
#if DSV3_KERNELS_CUDA
    if (y.is_cuda()) return cuda_ops::CombineForward(y, gate, slot_XK);
#endif
    return SumSlotRowsCpu(y, slot_XK, y.size(1), gate);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor gy = grads[0].contiguous();
    torch::Tensor gy_AD, ggate;
#if DSV3_KERNELS_CUDA
    if (gy.is_cuda()) std::tie(gy_AD, ggate) = cuda_ops::CombineBackward(gy, s[0], s[1], s[2], s[0].size(0));
    else
#endif
      std::tie(gy_AD, ggate) = CombineBackwardCpu(gy, s[0], s[1], s[2], s[0].size(0));
    return {gy_AD, ggate, torch::Tensor()};
  }
};

// Row tiles of the experts' row ranges: (expert, first row, rows) work items, sized so that
// every thread gets a few and no tile is tiny.
struct GemmTile {
  int64_t expert, row, rows;
};

std::vector<GemmTile> ExpertTiles(const int64_t* offsets, int64_t E, int64_t total_rows) {
  const int64_t threads = at::get_num_threads();
  const int64_t tile = std::max<int64_t>(32, (total_rows + 4 * threads - 1) / (4 * threads));
  std::vector<GemmTile> tiles;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; r += tile) tiles.push_back({e, r, std::min(tile, offsets[e + 1] - r)});
  }
  return tiles;
}

// out[rows of e] = x[rows of e] @ (transpose_w ? w[e] : w[e]^T), one parallel loop.
torch::Tensor GroupedGemmCpu(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& offsets_E1,
                             bool transpose_w) {
  const int64_t E = w.size(0), cols = transpose_w ? w.size(2) : w.size(1);
  const int64_t* off = offsets_E1.data_ptr<int64_t>();
  torch::Tensor out = torch::empty({x.size(0), cols}, x.options());
  if (off[E] < x.size(0)) out.narrow(0, off[E], x.size(0) - off[E]).zero_();
  const std::vector<GemmTile> tiles = ExpertTiles(off, E, off[E]);
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    cpu::WorkerNoGrad no_grad;
    for (int64_t i = begin; i < end; ++i) {
      const GemmTile& t = tiles[static_cast<size_t>(i)];
      torch::Tensor dst = out.narrow(0, t.row, t.rows);
      const torch::Tensor we = w[t.expert];
      at::mm_out(dst, x.narrow(0, t.row, t.rows), transpose_w ? we : we.t());
    }
  });
  return out;
}

// gw[e] = g[rows of e]^T @ x[rows of e], split over (expert, output-row tile); experts with
// no rows get zeros.
torch::Tensor GroupedWeightGradCpu(const torch::Tensor& g, const torch::Tensor& x, const torch::Tensor& offsets_E1,
                                   int64_t E) {
  const int64_t O = g.size(1), I = x.size(1);
  const int64_t* off = offsets_E1.data_ptr<int64_t>();
  torch::Tensor gw = torch::empty({E, O, I}, x.options());
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(O / 32, (2 * threads + E - 1) / E));
  const int64_t rows = (O + splits - 1) / splits;
  at::parallel_for(0, E * splits, 1, [&](int64_t begin, int64_t end) {
    cpu::WorkerNoGrad no_grad;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e = i / splits, o0 = (i % splits) * rows, on = std::min(rows, O - o0);
      if (on <= 0) continue;
      torch::Tensor dst = gw[e].narrow(0, o0, on);
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) {
        dst.zero_();
        continue;
      }
      at::mm_out(dst, g.narrow(0, off[e], n).narrow(1, o0, on).t(), x.narrow(0, off[e], n));
    }
  });
  return gw;
}

struct GroupedLinearFunction : public torch::autograd::Function<GroupedLinearFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_AI, const torch::Tensor& w_EOI,
                               const torch::Tensor& offsets_E1) {
    const torch::Tensor x = x_AI.contiguous();
    ctx->save_for_backward({x, w_EOI, offsets_E1});
#if DSV3_KERNELS_CUDA
    if (x.is_cuda()) return cuda_ops::GroupedGemm(x, w_EOI.contiguous(), offsets_E1, /*transpose_w=*/false);
#endif
    return GroupedGemmCpu(x, w_EOI, offsets_E1, /*transpose_w=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const torch::Tensor g = grads[0].contiguous();
    const int64_t E = s[1].size(0);
    torch::Tensor gx, gw;
#if DSV3_KERNELS_CUDA
    if (g.is_cuda()) {
      if (ctx->needs_input_grad(0)) gx = cuda_ops::GroupedGemm(g, s[1].contiguous(), s[2], /*transpose_w=*/true);
      if (ctx->needs_input_grad(1)) gw = cuda_ops::GroupedWeightGrad(g, s[0], s[2], E);
      return {gx, gw, torch::Tensor()};
    }
#endif
    if (ctx->needs_input_grad(0)) gx = GroupedGemmCpu(g, s[1], s[2], /*transpose_w=*/true);
    if (ctx->needs_input_grad(1)) gw = GroupedWeightGradCpu(g, s[0], s[2], E);
    return {gx, gw, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CapacityKeep(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t num_experts,
                           int64_t capacity) {
  detail::CheckDevice(expert_XK, "CapacityKeep");
  DSV3_CHECK(expert_XK.sizes() == gate_XK.sizes()) << "CapacityKeep: experts " << expert_XK.sizes() << " vs gates "
                                                   << gate_XK.sizes();
#if DSV3_KERNELS_CUDA
  if (expert_XK.is_cuda()) return cuda_ops::CapacityKeep(expert_XK, gate_XK, num_experts, capacity);
#endif
  return CapacityKeepCpu(expert_XK, gate_XK, num_experts, capacity);
}

DispatchPlan PlanDispatch(const torch::Tensor& expert_XK, const torch::Tensor& keep_XK, int64_t num_experts) {
  detail::CheckDevice(expert_XK, "PlanDispatch");
  DSV3_CHECK(expert_XK.dim() == 2 && expert_XK.sizes() == keep_XK.sizes())
      << "PlanDispatch: experts " << expert_XK.sizes() << " and keep " << keep_XK.sizes() << " must be X x k";
#if DSV3_KERNELS_CUDA
  if (expert_XK.is_cuda()) return cuda_ops::PlanDispatch(expert_XK, keep_XK, num_experts);
#endif
  return PlanDispatchCpu(expert_XK, keep_XK, num_experts);
}

torch::Tensor Dispatch(const torch::Tensor& x_XD, const DispatchPlan& plan) {
  detail::CheckDevice(x_XD, "Dispatch");
  DSV3_CHECK(x_XD.dim() == 2 && x_XD.size(0) == plan.slot_XK.size(0))
      << "Dispatch: " << x_XD.sizes() << " rows for a plan of " << plan.slot_XK.size(0) << " tokens";
  return DispatchFunction::apply(x_XD, plan.token_A, plan.slot_XK);
}

torch::Tensor Combine(const torch::Tensor& y_AD, const torch::Tensor& gate_XK, const DispatchPlan& plan) {
  detail::CheckDevice(y_AD, "Combine");
  DSV3_CHECK(y_AD.dim() == 2 && y_AD.size(0) == plan.token_A.size(0) && gate_XK.sizes() == plan.slot_XK.sizes())
      << "Combine: rows " << y_AD.sizes() << " and gates " << gate_XK.sizes() << " for a plan of "
      << plan.token_A.size(0) << " rows";
  return CombineFunction::apply(y_AD, gate_XK, plan.slot_XK);
}

torch::Tensor GroupedLinear(const torch::Tensor& x_AI, const torch::Tensor& weight_EOI,
                            const torch::Tensor& offsets_E1) {
  detail::CheckDevice(x_AI, "GroupedLinear");
  DSV3_CHECK(x_AI.dim() == 2 && weight_EOI.dim() == 3 && weight_EOI.size(2) == x_AI.size(1) &&
             offsets_E1.numel() == weight_EOI.size(0) + 1)
      << "GroupedLinear: rows " << x_AI.sizes() << ", weights " << weight_EOI.sizes() << ", offsets "
      << offsets_E1.sizes();
  return GroupedLinearFunction::apply(x_AI, weight_EOI, offsets_E1.to(torch::kLong).contiguous());
}

}  // namespace dsv3::kernels
