// The CUDA kernels at the tensor level (src/cuda_ops.h): checks shapes and dtypes, allocates
// outputs with LibTorch's caching allocator, and launches on the current stream. Linked into
// dsv3_kernels only against a CUDA LibTorch (DSV3_KERNELS_CUDA); CI compiles it against
// Debian's CPU LibTorch headers without linking it, and bench/gpu/run.sh runs it.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <sstream>

#include "../src/cuda_ops.h"
#include "launchers.h"

namespace dsv3::kernels::cuda_ops {
namespace {

using cuda::CheckLaunch;
using cuda::DType;

DType ToDType(const torch::Tensor& t, const char* kernel) {
  if (t.scalar_type() == torch::kFloat) return DType::kF32;
  if (t.scalar_type() == torch::kBFloat16) return DType::kBF16;
  std::ostringstream msg;
  msg << "CUDA kernel " << kernel << ": dtype " << t.scalar_type() << " is not supported (fp32 or bf16)";
  throw std::invalid_argument(msg.str());
}

cudaStream_t Stream(const torch::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

std::string Shape(std::initializer_list<std::pair<const char*, int64_t>> dims) {
  std::ostringstream out;
  bool first = true;
  for (const auto& [name, value] : dims) {
    out << (first ? "" : ", ") << name << "=" << value;
    first = false;
  }
  return out.str();
}

torch::Tensor F32(const torch::Tensor& like, at::IntArrayRef shape) {
  return torch::empty(shape, like.options().dtype(torch::kFloat));
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> RmsNormForward(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  torch::Tensor y = torch::empty_like(x), rstd = F32(x, {rows});
  CheckLaunch(cuda::RmsNormForward(ToDType(x, "rms_norm_forward"), x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                   rstd.data_ptr<float>(), rows, D, static_cast<float>(eps), Stream(x)),
              "rms_norm_forward", Shape({{"rows", rows}, {"D", D}}));
  return {y, rstd};
}

std::tuple<torch::Tensor, torch::Tensor> RmsNormBackward(const torch::Tensor& gy, const torch::Tensor& x,
                                                         const torch::Tensor& w, const torch::Tensor& rstd) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  const int64_t per_chunk = 64, chunks = std::max<int64_t>(1, (rows + per_chunk - 1) / per_chunk);
  torch::Tensor gx = torch::empty_like(x), partial = torch::zeros({chunks, D}, x.options().dtype(torch::kFloat));
  CheckLaunch(cuda::RmsNormBackward(ToDType(x, "rms_norm_backward"), gy.data_ptr(), x.data_ptr(), w.data_ptr(),
                                    rstd.data_ptr<float>(), gx.data_ptr(), partial.data_ptr<float>(), rows, D,
                                    per_chunk, Stream(x)),
              "rms_norm_backward", Shape({{"rows", rows}, {"D", D}, {"chunks", chunks}}));
  return {gx, partial.sum(0).to(w.scalar_type())};
}

torch::Tensor RopeApply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool per_row,
                        bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  torch::Tensor y = torch::empty_like(x);
  const torch::Tensor c = cos.to(torch::kFloat).contiguous(), s = sin.to(torch::kFloat).contiguous();
  CheckLaunch(cuda::RopeApply(ToDType(x, "rope"), x.data_ptr(), y.data_ptr(), c.data_ptr<float>(), s.data_ptr<float>(),
                              x.size(0), x.size(1), x.size(2), x.size(3), per_row, inverse, Stream(x)),
              "rope", Shape({{"B", x.size(0)}, {"T", x.size(1)}, {"H", x.size(2)}, {"R", x.size(3)}}));
  return y;
}

torch::Tensor SwiGluForward(const torch::Tensor& g, const torch::Tensor& u) {
  const c10::cuda::CUDAGuard guard(g.device());
  torch::Tensor y = torch::empty_like(g);
  CheckLaunch(cuda::SwiGluForward(ToDType(g, "swiglu_forward"), g.data_ptr(), u.data_ptr(), y.data_ptr(), g.numel(),
                                  Stream(g)),
              "swiglu_forward", Shape({{"n", g.numel()}}));
  return y;
}

std::tuple<torch::Tensor, torch::Tensor> SwiGluBackward(const torch::Tensor& gy, const torch::Tensor& g,
                                                        const torch::Tensor& u) {
  const c10::cuda::CUDAGuard guard(g.device());
  torch::Tensor gg = torch::empty_like(g), gu = torch::empty_like(u);
  CheckLaunch(cuda::SwiGluBackward(ToDType(g, "swiglu_backward"), gy.data_ptr(), g.data_ptr(), u.data_ptr(),
                                   gg.data_ptr(), gu.data_ptr(), g.numel(), Stream(g)),
              "swiglu_backward", Shape({{"n", g.numel()}}));
  return {gg, gu};
}

torch::Tensor CapacityKeep(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t E, int64_t capacity) {
  (void)E;
  const c10::cuda::CUDAGuard guard(expert_XK.device());
  const torch::Tensor expert = expert_XK.to(torch::kLong).contiguous(), gate = gate_XK.to(torch::kFloat).contiguous();
  torch::Tensor keep = torch::empty(expert_XK.sizes(), expert.options().dtype(torch::kBool));
  CheckLaunch(cuda::CapacityKeep(expert.data_ptr<int64_t>(), gate.data_ptr<float>(), keep.data_ptr<bool>(),
                                 expert.numel(), capacity, Stream(expert)),
              "capacity_keep", Shape({{"assignments", expert.numel()}, {"capacity", capacity}}));
  return keep;
}

DispatchPlan PlanDispatch(const torch::Tensor& expert_XK, const torch::Tensor& keep_XK, int64_t E) {
  const c10::cuda::CUDAGuard guard(expert_XK.device());
  const torch::Tensor expert = expert_XK.to(torch::kLong).contiguous(), keep = keep_XK.to(torch::kBool).contiguous();
  const int64_t n = expert.numel(), k = expert_XK.size(1);
  const auto iopts = expert.options();
  DispatchPlan plan;
  plan.counts_E = torch::empty({E}, iopts);
  plan.offsets_E1 = torch::empty({E + 1}, iopts);
  plan.slot_XK = torch::empty(expert_XK.sizes(), iopts);
  // Rows padded to X * k: the kept count stays on the device (no host synchronisation).
  plan.token_A = torch::empty({n}, iopts);
  torch::Tensor workspace = torch::empty({cuda::PlanWorkspaceElements(n, E)}, iopts);
  CheckLaunch(cuda::PlanDispatch(expert.data_ptr<int64_t>(), keep.data_ptr<bool>(), n, k, E,
                                 plan.counts_E.data_ptr<int64_t>(), plan.offsets_E1.data_ptr<int64_t>(),
                                 plan.slot_XK.data_ptr<int64_t>(), plan.token_A.data_ptr<int64_t>(),
                                 workspace.data_ptr<int64_t>(), Stream(expert)),
              "plan_dispatch", Shape({{"assignments", n}, {"experts", E}}));
  return plan;
}

torch::Tensor GatherRows(const torch::Tensor& x_XD, const torch::Tensor& token_A) {
  const c10::cuda::CUDAGuard guard(x_XD.device());
  const int64_t A = token_A.numel(), D = x_XD.size(1);
  torch::Tensor out = torch::empty({A, D}, x_XD.options());
  CheckLaunch(cuda::GatherRows(ToDType(x_XD, "gather_rows"), x_XD.data_ptr(), token_A.data_ptr<int64_t>(),
                               out.data_ptr(), A, D, Stream(x_XD)),
              "gather_rows", Shape({{"rows", A}, {"D", D}}));
  return out;
}

torch::Tensor SumSlots(const torch::Tensor& g_AD, const torch::Tensor& slot_XK, int64_t D) {
  const c10::cuda::CUDAGuard guard(g_AD.device());
  const int64_t X = slot_XK.size(0), k = slot_XK.size(1);
  torch::Tensor out = torch::empty({X, D}, g_AD.options());
  CheckLaunch(cuda::SumSlots(ToDType(g_AD, "sum_slots"), g_AD.data_ptr(), slot_XK.data_ptr<int64_t>(), out.data_ptr(),
                             X, k, D, Stream(g_AD)),
              "sum_slots", Shape({{"tokens", X}, {"k", k}, {"D", D}}));
  return out;
}

torch::Tensor CombineForward(const torch::Tensor& y_AD, const torch::Tensor& gate_XK, const torch::Tensor& slot_XK) {
  const c10::cuda::CUDAGuard guard(y_AD.device());
  const int64_t X = slot_XK.size(0), k = slot_XK.size(1), D = y_AD.size(1);
  const torch::Tensor gate = gate_XK.to(y_AD.scalar_type()).contiguous();
  torch::Tensor out = torch::empty({X, D}, y_AD.options());
  CheckLaunch(cuda::CombineForward(ToDType(y_AD, "combine_forward"), y_AD.data_ptr(), gate.data_ptr(),
                                   slot_XK.data_ptr<int64_t>(), out.data_ptr(), X, k, D, Stream(y_AD)),
              "combine_forward", Shape({{"tokens", X}, {"k", k}, {"D", D}}));
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> CombineBackward(const torch::Tensor& gy_XD, const torch::Tensor& y_AD,
                                                         const torch::Tensor& gate_XK, const torch::Tensor& slot_XK,
                                                         int64_t A) {
  const c10::cuda::CUDAGuard guard(y_AD.device());
  const int64_t X = slot_XK.size(0), k = slot_XK.size(1), D = gy_XD.size(1);
  const torch::Tensor gate = gate_XK.to(y_AD.scalar_type()).contiguous();
  // Padding rows get no gradient: zeros, then the kernel fills the kept slots.
  torch::Tensor gy_AD = torch::zeros({A, D}, y_AD.options()), ggate = F32(y_AD, {X, k});
  CheckLaunch(cuda::CombineBackward(ToDType(y_AD, "combine_backward"), gy_XD.data_ptr(), y_AD.data_ptr(),
                                    gate.data_ptr(), slot_XK.data_ptr<int64_t>(), gy_AD.data_ptr(),
                                    ggate.data_ptr<float>(), X, k, D, Stream(y_AD)),
              "combine_backward", Shape({{"tokens", X}, {"k", k}, {"D", D}}));
  return {gy_AD, ggate.to(gate_XK.scalar_type())};
}

torch::Tensor GroupedGemm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& offsets_E1,
                          bool transpose_w) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = w.size(0), N = transpose_w ? w.size(2) : w.size(1), K = x.size(1);
  // Rows past the experts' (padding) stay zero.
  torch::Tensor out = torch::zeros({x.size(0), N}, x.options());
  CheckLaunch(cuda::GroupedGemm(ToDType(x, "grouped_gemm"), x.data_ptr(), w.data_ptr(),
                                offsets_E1.data_ptr<int64_t>(), out.data_ptr(), x.size(0), E, N, K, transpose_w,
                                Stream(x)),
              "grouped_gemm", Shape({{"rows", x.size(0)}, {"experts", E}, {"N", N}, {"K", K}}));
  return out;
}

torch::Tensor GroupedWeightGrad(const torch::Tensor& g_AO, const torch::Tensor& x_AI, const torch::Tensor& offsets_E1,
                                int64_t E) {
  const c10::cuda::CUDAGuard guard(x_AI.device());
  const int64_t O = g_AO.size(1), I = x_AI.size(1);
  torch::Tensor gw = torch::empty({E, O, I}, x_AI.options());
  CheckLaunch(cuda::GroupedWeightGrad(ToDType(x_AI, "grouped_weight_grad"), g_AO.data_ptr(), x_AI.data_ptr(),
                                      offsets_E1.data_ptr<int64_t>(), gw.data_ptr(), x_AI.size(0), E, O, I,
                                      Stream(x_AI)),
              "grouped_weight_grad", Shape({{"rows", x_AI.size(0)}, {"experts", E}, {"O", O}, {"I", I}}));
  return gw;
}

torch::Tensor CrossEntropyChunk(torch::Tensor& logits_CV, const torch::Tensor& targets_C, int64_t ignore_index,
                                bool grad, double inv_count) {
  const c10::cuda::CUDAGuard guard(logits_CV.device());
  const int64_t rows = logits_CV.size(0), V = logits_CV.size(1);
  torch::Tensor loss_rows = F32(logits_CV, {rows});
  const torch::Tensor targets = targets_C.to(torch::kLong).contiguous();
  CheckLaunch(cuda::CrossEntropyRows(logits_CV.data_ptr<float>(), targets.data_ptr<int64_t>(),
                                     loss_rows.data_ptr<float>(), rows, V, ignore_index, grad,
                                     static_cast<float>(inv_count), Stream(logits_CV)),
              "cross_entropy_rows", Shape({{"rows", rows}, {"V", V}}));
  return loss_rows.sum();
}

std::tuple<torch::Tensor, torch::Tensor> AttentionForward(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, double scale,
                                                          const AttentionMask& mask) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dq = q.size(3), Dv = v.size(3);
  torch::Tensor o = torch::empty({B, T, H, Dv}, q.options()), lse = F32(q, {B, H, T});
  CheckLaunch(cuda::AttentionForward(ToDType(q, "attention_forward"), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                     o.data_ptr(), lse.data_ptr<float>(), B, T, H, Dq, Dv, static_cast<float>(scale),
                                     mask.window.value_or(0),
                                     mask.segments_BT.defined() ? mask.segments_BT.data_ptr<int64_t>() : nullptr,
                                     Stream(q)),
              "attention_forward", Shape({{"B", B}, {"T", T}, {"H", H}, {"Dq", Dq}, {"Dv", Dv}}));
  return {o, lse};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionBackward(
    const torch::Tensor& go, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& o, const torch::Tensor& lse, double scale, const AttentionMask& mask) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dq = q.size(3), Dv = v.size(3);
  const torch::Tensor g = go.to(q.scalar_type()).contiguous();
  torch::Tensor delta = F32(q, {B, H, T});
  const std::string shape = Shape({{"B", B}, {"T", T}, {"H", H}, {"Dq", Dq}, {"Dv", Dv}});
  CheckLaunch(cuda::AttentionDelta(ToDType(q, "attention_delta"), g.data_ptr(), o.data_ptr(),
                                   delta.data_ptr<float>(), B, T, H, Dv, Stream(q)),
              "attention_delta", shape);
  torch::Tensor gq = torch::empty_like(q), gk = torch::empty_like(k), gv = torch::empty_like(v);
  CheckLaunch(cuda::AttentionBackward(ToDType(q, "attention_backward"), g.data_ptr(), q.data_ptr(), k.data_ptr(),
                                      v.data_ptr(), lse.data_ptr<float>(), delta.data_ptr<float>(), gq.data_ptr(),
                                      gk.data_ptr(), gv.data_ptr(), B, T, H, Dq, Dv, static_cast<float>(scale),
                                      mask.window.value_or(0),
                                      mask.segments_BT.defined() ? mask.segments_BT.data_ptr<int64_t>() : nullptr,
                                      Stream(q)),
              "attention_backward", shape);
  return {gq, gk, gv};
}

void FusedUpdate(OptimizerKind kind, const OptimizerScalars& scalars, torch::Tensor& param, const torch::Tensor& grad,
                 const torch::Tensor& decay_mask, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                 torch::Tensor& compute) {
  const c10::cuda::CUDAGuard guard(param.device());
  const bool sgd = kind == OptimizerKind::kSgd;
  const bool copy = compute.defined() && !compute.is_same(param);
  CheckLaunch(cuda::FusedOptimizerUpdate(
                  kind, scalars, param.data_ptr<float>(), grad.data_ptr<float>(),
                  decay_mask.defined() ? decay_mask.data_ptr<float>() : nullptr,
                  sgd ? nullptr : exp_avg.data_ptr<float>(), sgd ? nullptr : exp_avg_sq.data_ptr<float>(),
                  copy ? compute.data_ptr() : nullptr,
                  copy && compute.scalar_type() == torch::kBFloat16 ? DType::kBF16 : DType::kF32, param.numel(),
                  Stream(param)),
              "fused_optimizer_update", Shape({{"n", param.numel()}}));
}

int64_t PeakAllocatedBytes(const torch::Device& device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
  return stats.allocated_bytes[static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE)].peak;
}

void ResetPeakAllocatedBytes(const torch::Device& device) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
}

}  // namespace dsv3::kernels::cuda_ops
