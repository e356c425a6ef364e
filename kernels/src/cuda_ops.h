// The CUDA implementations of the kernels at the tensor level: kernels/cuda/bindings.cc,
// compiled only when the engine builds against a CUDA LibTorch with DSV3_WITH_CUDA
// (DSV3_KERNELS_CUDA=1). They take and return CUDA tensors and launch on the current stream;
// the raw launchers they call are in kernels/cuda/launchers.h.
#pragma once

#include <tuple>

#include <torch/torch.h>

#include "dsv3/kernels/fused_optimizer.h"
#include "dsv3/kernels/kernels.h"
#include "optimizer_scalars.h"

namespace dsv3::kernels::cuda_ops {

std::tuple<torch::Tensor, torch::Tensor> RmsNormForward(const torch::Tensor& x, const torch::Tensor& w, double eps);
std::tuple<torch::Tensor, torch::Tensor> RmsNormBackward(const torch::Tensor& gy, const torch::Tensor& x,
                                                         const torch::Tensor& w, const torch::Tensor& rstd);
torch::Tensor RopeApply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool per_row,
                        bool inverse);
torch::Tensor SwiGluForward(const torch::Tensor& g, const torch::Tensor& u);
std::tuple<torch::Tensor, torch::Tensor> SwiGluBackward(const torch::Tensor& gy, const torch::Tensor& g,
                                                        const torch::Tensor& u);
torch::Tensor CapacityKeep(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t E, int64_t capacity);
DispatchPlan PlanDispatch(const torch::Tensor& expert_XK, const torch::Tensor& keep_XK, int64_t E);
torch::Tensor GatherRows(const torch::Tensor& x_XD, const torch::Tensor& token_A);
torch::Tensor SumSlots(const torch::Tensor& g_AD, const torch::Tensor& slot_XK, int64_t D);
torch::Tensor CombineForward(const torch::Tensor& y_AD, const torch::Tensor& gate_XK, const torch::Tensor& slot_XK);
std::tuple<torch::Tensor, torch::Tensor> CombineBackward(const torch::Tensor& gy_XD, const torch::Tensor& y_AD,
                                                         const torch::Tensor& gate_XK, const torch::Tensor& slot_XK,
                                                         int64_t A);
// out_AO = x_AI @ w_EOI[e]^T per expert; with `transpose_w`, x_AO @ w_EOI[e] (the input grad).
torch::Tensor GroupedGemm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& offsets_E1,
                          bool transpose_w);
// gw_EOI[e] = g_AO[rows of e]^T @ x_AI[rows of e].
torch::Tensor GroupedWeightGrad(const torch::Tensor& g_AO, const torch::Tensor& x_AI, const torch::Tensor& offsets_E1,
                                int64_t E);
// Over fp32 logits_CV: the sum of the counted rows' losses and, with `grad`,
// (softmax - onehot) * inv_count written over the logits (0 on ignored rows).
torch::Tensor CrossEntropyChunk(torch::Tensor& logits_CV, const torch::Tensor& targets_C, int64_t ignore_index,
                                bool grad, double inv_count);
std::tuple<torch::Tensor, torch::Tensor> AttentionForward(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, double scale,
                                                          const AttentionMask& mask);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionBackward(
    const torch::Tensor& go, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& o, const torch::Tensor& lse, double scale, const AttentionMask& mask);

void FusedUpdate(OptimizerKind kind, const OptimizerScalars& scalars, torch::Tensor& param, const torch::Tensor& grad,
                 const torch::Tensor& decay_mask, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                 torch::Tensor& compute);

// The caching allocator's peak of allocated bytes on `device`, and its reset.
int64_t PeakAllocatedBytes(const torch::Device& device);
void ResetPeakAllocatedBytes(const torch::Device& device);

}  // namespace dsv3::kernels::cuda_ops
