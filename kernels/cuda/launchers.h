// Raw-pointer CUDA launchers of dsv3_kernels: no LibTorch, so they compile wherever nvcc is
// (CI compiles them for sm_90 on machines without a GPU). Every launcher enqueues on `stream`
// and returns the launch's cudaError_t; bindings.cc turns a failure into an exception naming
// the kernel and the launch shape (CheckLaunch below). Activations are fp32 or bf16 (DType);
// statistics, softmax and accumulations are fp32.
//
// Not run in CI (no GPU there): bench/gpu/run.sh runs the `gpu` tests against the LibTorch
// reference on a CUDA machine.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../src/optimizer_scalars.h"

namespace dsv3::kernels::cuda {

enum class DType { kF32, kBF16 };

// Throws std::runtime_error("CUDA kernel <name> (<shape>) failed: <reason>") on an error.
inline void CheckLaunch(cudaError_t err, const char* kernel, const std::string& shape) {
  if (err == cudaSuccess) return;
  std::ostringstream msg;
  msg << "CUDA kernel " << kernel << " (" << shape << ") failed: " << cudaGetErrorName(err) << ": "
      << cudaGetErrorString(err);
  throw std::runtime_error(msg.str());
}

// ---------------------------------------------------------------- elementwise
// y = w * (x * rsqrt(mean(x^2) + eps)) per row of D; rstd[row] saved for the backward.
cudaError_t RmsNormForward(DType t, const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t D,
                           float eps, cudaStream_t stream);
// gx per row; gw_partial[chunk][D] (fp32) the weight gradient of each chunk of
// `rows_per_chunk` rows, summed by the caller (deterministic).
cudaError_t RmsNormBackward(DType t, const void* gy, const void* x, const void* w, const float* rstd, void* gx,
                            float* gw_partial, int64_t rows, int64_t D, int64_t rows_per_chunk, cudaStream_t stream);
// Interleaved RoPE on x (B x T x H x R): cos/sin tables (rows x T x R/2, rows = B when
// per_row else 1), rotation by minus the angle when `inverse`.
cudaError_t RopeApply(DType t, const void* x, void* y, const float* cos, const float* sin, int64_t B, int64_t T,
                      int64_t H, int64_t R, bool per_row, bool inverse, cudaStream_t stream);
cudaError_t SwiGluForward(DType t, const void* gate, const void* up, void* y, int64_t n, cudaStream_t stream);
cudaError_t SwiGluBackward(DType t, const void* gy, const void* gate, const void* up, void* ggate, void* gup, int64_t n,
                           cudaStream_t stream);

// ---------------------------------------------------------------- MoE
// keep[a] = the assignment is among the `capacity` highest gates of its expert (ties: lower
// index first). n = X * k assignments.
cudaError_t CapacityKeep(const int64_t* expert, const float* gate, bool* keep, int64_t n, int64_t capacity,
                         cudaStream_t stream);
// Histogram, scan and scatter: counts[E], offsets[E+1], slot[n] (-1 when dropped), token[n]
// (rows past offsets[E] are -1). `workspace` holds chunk_count(n) * E int64.
int64_t PlanWorkspaceElements(int64_t n, int64_t E);
cudaError_t PlanDispatch(const int64_t* expert, const bool* keep, int64_t n, int64_t k, int64_t E, int64_t* counts,
                         int64_t* offsets, int64_t* slot, int64_t* token, int64_t* workspace, cudaStream_t stream);
// out[a] = x[token[a]] (zeros where token < 0).
cudaError_t GatherRows(DType t, const void* x, const int64_t* token, void* out, int64_t A, int64_t D,
                       cudaStream_t stream);
// out[x] = sum over kept j of g[slot[x, j]].
cudaError_t SumSlots(DType t, const void* g, const int64_t* slot, void* out, int64_t X, int64_t k, int64_t D,
                     cudaStream_t stream);
// out[x] = sum over kept j of gate[x, j] * y[slot[x, j]] (gate in the activation dtype).
cudaError_t CombineForward(DType t, const void* y, const void* gate, const int64_t* slot, void* out, int64_t X,
                           int64_t k, int64_t D, cudaStream_t stream);
// gy_rows[slot] = gate * gy[x]; ggate[x, j] = <y[slot], gy[x]> (fp32).
cudaError_t CombineBackward(DType t, const void* gy, const void* y, const void* gate, const int64_t* slot,
                            void* gy_rows, float* ggate, int64_t X, int64_t k, int64_t D, cudaStream_t stream);

// ---------------------------------------------------------------- grouped GEMM
// out[r] = x[r] @ W_e^T (W: E x N x K), or x[r] @ W_e with transpose_w (W: E x K x N), for the
// rows r of expert e (offsets on the device; no host synchronisation). Rows past offsets[E]
// are left untouched. fp32 accumulation.
cudaError_t GroupedGemm(DType t, const void* x, const void* w, const int64_t* offsets, void* out, int64_t rows,
                        int64_t E, int64_t N, int64_t K, bool transpose_w, cudaStream_t stream);
// gw[e] = g[rows of e]^T @ x[rows of e]: g rows x O, x rows x I, gw E x O x I.
cudaError_t GroupedWeightGrad(DType t, const void* g, const void* x, const int64_t* offsets, void* gw, int64_t rows,
                              int64_t E, int64_t O, int64_t I, cudaStream_t stream);

// ---------------------------------------------------------------- loss
// Per row of fp32 logits (rows x V): loss_rows[r] = logsumexp - logit[target] (0 when the
// target is ignore_index); with `grad`, logits become (softmax - onehot) * inv_count (0 on
// ignored rows).
cudaError_t CrossEntropyRows(float* logits, const int64_t* targets, float* loss_rows, int64_t rows, int64_t V,
                             int64_t ignore_index, bool grad, float inv_count, cudaStream_t stream);

// ---------------------------------------------------------------- attention
// Causal attention without a T x T matrix: q, k (B x T x H x Dq), v (B x T x H x Dv) ->
// o (B x T x H x Dv), lse (B x H x T, fp32). window 0: none; segments (B x T) or null.
// Head dims up to 256.
constexpr int64_t kMaxAttentionHeadDim = 256;
cudaError_t AttentionForward(DType t, const void* q, const void* k, const void* v, void* o, float* lse, int64_t B,
                             int64_t T, int64_t H, int64_t Dq, int64_t Dv, float scale, int64_t window,
                             const int64_t* segments, cudaStream_t stream);
// delta (B x H x T, fp32) = rowsum(go * o); gq, gk, gv in the activation dtype. One kernel
// per query row for gq, one per key row for gk and gv: no atomics, deterministic.
cudaError_t AttentionBackward(DType t, const void* go, const void* q, const void* k, const void* v, const float* lse,
                              const float* delta, void* gq, void* gk, void* gv, int64_t B, int64_t T, int64_t H,
                              int64_t Dq, int64_t Dv, float scale, int64_t window, const int64_t* segments,
                              cudaStream_t stream);
cudaError_t AttentionDelta(DType t, const void* go, const void* o, float* delta, int64_t B, int64_t T, int64_t H,
                           int64_t Dv, cudaStream_t stream);

// ---------------------------------------------------------------- optimizer
// One pass over n elements: param, exp_avg, exp_avg_sq in place (fp32), optional decay mask,
// optional compute copy (bf16 or fp32, null for none).
cudaError_t FusedOptimizerUpdate(OptimizerKind kind, const OptimizerScalars& s, float* param, const float* grad,
                                 const float* mask, float* exp_avg, float* exp_avg_sq, void* compute,
                                 DType compute_type, int64_t n, cudaStream_t stream);

}  // namespace dsv3::kernels::cuda
