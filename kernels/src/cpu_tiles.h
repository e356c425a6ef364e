// CPU work splitting shared by the kernels: GEMMs in row tiles over LibTorch's intra-op
// threads, each tile one single-threaded OpenBLAS call (ranks give OpenBLAS one thread, so
// an untiled at::mm uses one core however many the rank owns).
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace dsv3::kernels::cpu {

// out = a @ b for 2-D a (M x K) and b (K x N); `out` (M x N, rows contiguous) is written in
// row tiles in parallel. a and b may be transposed views.
void TiledMmOut(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out);
torch::Tensor TiledMm(const torch::Tensor& a, const torch::Tensor& b);

// at::parallel_for's worker threads start with grad mode on (it is thread-local): every
// parallel body that calls ATen ops on tensors that may require grad opens one of these.
using WorkerNoGrad = at::NoGradGuard;

// The accumulation type of a kernel's arithmetic: fp64 for double, fp32 otherwise.
template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <class T> using acc_t = typename Acc<T>::type;

}  // namespace dsv3::kernels::cpu
