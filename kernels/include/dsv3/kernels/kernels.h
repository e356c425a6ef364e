// dsv3_kernels: fused kernels for the hot paths of DeepSeek-V3 training, as differentiable
// LibTorch operations. Each one equals the plain LibTorch composition it replaces (the
// model's `fused_kernels: false` path) within rounding; tests/kernels holds them to it.
//
// CPU tensors (fp32, fp64, bf16) run the CPU implementations in this library, which split
// their work over LibTorch's intra-op threads with single-threaded OpenBLAS calls per tile
// (ranks give OpenBLAS one thread, see common/threads.h, so a plain at::mm uses one core).
// CUDA tensors run the CUDA implementations (kernels/cuda) when this build has them
// (Available(device)); otherwise the caller keeps to the reference path.
//
// Shape legend as in dsv3/model/layers.h: X tokens, D model width, V vocabulary, E experts,
// k experts per token, A kept assignments, B batch, T query tokens, S keys, H heads.
#pragma once

#include <cstdint>
#include <optional>

#include <torch/torch.h>

namespace dsv3::kernels {

// Whether the fused kernels run on `device` in this build: always on the CPU; on CUDA only
// when the engine was built against a CUDA LibTorch with DSV3_WITH_CUDA.
bool Available(const torch::Device& device);

// y = x @ weight^T (no bias), x_XI of any leading shape, weight_OI. Forward and both
// backward GEMMs are split in row tiles over the intra-op threads.
torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& weight);

// Peak bytes LibTorch's caching allocator has held on a CUDA device since the process started
// or the last reset; nullopt on the CPU and in builds without CUDA kernels.
std::optional<int64_t> PeakDeviceBytes(const torch::Device& device);
void ResetPeakDeviceBytes(const torch::Device& device);

// RMSNorm over the last dim: weight * (x * rsqrt(mean(x^2) + eps)), statistics in fp32 (fp64
// for double) whatever the dtype of x; the normalized value is cast to x's dtype before the
// weight multiplies it, as the reference does.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Interleaved RoPE (pairs 2i, 2i+1) on x_BTHR at `positions` (T, or B x T when positions
// restart per document), frequency_i = theta^(-2i/R). Angles are computed exactly as the
// reference (model::ApplyRope) computes them, in x's upcast precision.
torch::Tensor Rope(const torch::Tensor& x_BTHR, const torch::Tensor& positions, double theta);

// silu(gate) * up, elementwise.
torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up);

// ------------------------------------------------------------------ MoE
// For each expert, keeps the `capacity` assignments with the highest gates (ties: lower flat
// index first) and drops the rest: expert_XK, gate_XK -> keep_XK (bool). Not differentiable.
torch::Tensor CapacityKeep(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t num_experts,
                           int64_t capacity);

// Where each kept assignment goes: assignments in expert order, token order within an
// expert (histogram, exclusive scan, scatter; no sort, no host synchronisation on CUDA).
struct DispatchPlan {
  torch::Tensor token_A;   // int64: the token of each dispatched row
  torch::Tensor slot_XK;   // int64: the row of assignment (x, j), -1 where dropped
  torch::Tensor counts_E;  // int64: rows per expert (on the device of the inputs)
  torch::Tensor offsets_E1;  // int64, E + 1: exclusive scan of counts_E
};
DispatchPlan PlanDispatch(const torch::Tensor& expert_XK, const torch::Tensor& keep_XK, int64_t num_experts);

// x_XD -> x_AD, the rows of the plan's tokens (backward: sum over each token's slots).
torch::Tensor Dispatch(const torch::Tensor& x_XD, const DispatchPlan& plan);
// y_XD[x] = sum_j gate_XK[x, j] * y_AD[slot_XK[x, j]] over kept j (gradients to y_AD and
// gate_XK; deterministic: every slot belongs to exactly one assignment).
torch::Tensor Combine(const torch::Tensor& y_AD, const torch::Tensor& gate_XK, const DispatchPlan& plan);

// Grouped GEMM over experts: rows offsets_E1[e] .. offsets_E1[e+1] of x_AI times
// weight_EOI[e]^T (offsets: int64, E + 1, on the device of x; rows past offsets_E1[E] are
// zero). One parallel loop over (expert, row tile) on the CPU; one launch on CUDA, which
// reads the offsets on the device (no host synchronisation).
torch::Tensor GroupedLinear(const torch::Tensor& x_AI, const torch::Tensor& weight_EOI, const torch::Tensor& offsets_E1);

// ------------------------------------------------------------------ loss
// Mean cross entropy of softmax(h_XD @ weight_VD^T) against targets_X (int64; ignore_index
// rows excluded; NaN when no row counts, as torch::nn::functional::cross_entropy), computed
// in chunks of `chunk_tokens` rows so the [X, V] logits never exist at once. With grad on,
// the gradients of h and weight are computed chunk by chunk in the forward pass (the
// backward only scales them), so the logits are not recomputed either.
torch::Tensor LinearCrossEntropy(const torch::Tensor& h_XD, const torch::Tensor& weight_VD,
                                 const torch::Tensor& targets_X, int64_t ignore_index = -100,
                                 int64_t chunk_tokens = 1024);

// ------------------------------------------------------------------ attention
struct AttentionMask {
  std::optional<int64_t> window;  // key visible when 0 <= query - key < window
  torch::Tensor segments_BT;      // int64 document ids: same document only (undefined: none)
};

// Causal softmax(q k^T * scale) v, flash-style: blocks of queries against blocks of keys
// with an online softmax, so no [T, S] matrix is kept; blocks entirely above the diagonal
// (or outside the window) are skipped. The backward pass recomputes the blocks from q, k, v,
// the output and the per-row log-sum-exp. q_BTHQ, k_BTHQ, v_BTHV: qk and v head dims may
// differ (MLA: 192 and 128 in V3). Returns o_BTHV.
torch::Tensor Attention(const torch::Tensor& q_BTHQ, const torch::Tensor& k_BTHQ, const torch::Tensor& v_BTHV,
                        double scale, const AttentionMask& mask = {});

}  // namespace dsv3::kernels
