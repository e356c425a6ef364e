// Cross entropy over a chunk of fp32 logits on CUDA: one block per row reads the row for its
// max, again for the sum of exponentials, and once more to write the gradient in place.
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

__global__ void CrossEntropyRowsKernel(float* logits, const int64_t* targets, float* loss_rows, int64_t V,
                                       int64_t ignore_index, bool grad, float inv_count) {
  const int64_t row = blockIdx.x;
  float* l = logits + row * V;
  const int64_t target = targets[row];
  const bool counted = target != ignore_index;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, l[v]);
  m = BlockReduce<true>(m);
  float s = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf(l[v] - m);
  s = BlockReduce<false>(s);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) loss_rows[row] = counted ? lse - l[target] : 0.0f;
  __syncthreads();  // l[target] is read before any thread overwrites it
  if (!grad) return;
  const float scale = counted ? inv_count : 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    l[v] = (expf(l[v] - lse) - (v == target ? 1.0f : 0.0f)) * scale;
  }
}

}  // namespace

cudaError_t CrossEntropyRows(float* logits, const int64_t* targets, float* loss_rows, int64_t rows, int64_t V,
                             int64_t ignore_index, bool grad, float inv_count, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  CrossEntropyRowsKernel<<<static_cast<unsigned>(rows), 512, 0, stream>>>(logits, targets, loss_rows, V, ignore_index,
                                                                          grad, inv_count);
  return cudaGetLastError();
}

}  // namespace dsv3::kernels::cuda
