// MoE on CUDA: capacity ranking, the dispatch plan (histogram, scan, scatter: deterministic,
// token order within each expert, no host synchronisation), gather and gate-weighted combine.
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

// Assignments per chunk of the plan: one thread walks a chunk in order, so slots keep the
// token order without atomics.
constexpr int64_t kPlanChunk = 64;

__host__ __device__ int64_t Chunks(int64_t n) { return (n + kPlanChunk - 1) / kPlanChunk; }

// keep[a]: fewer than `capacity` assignments of the same expert rank above a (higher gate,
// or equal gate and lower index). O(n^2 / threads) comparisons, fine for the X * k of a
// micro-batch.
__global__ void CapacityKeepKernel(const int64_t* expert, const float* gate, bool* keep, int64_t n, int64_t capacity) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= n) return;
  const int64_t e = expert[a];
  const float g = gate[a];
  int64_t above = 0;
  for (int64_t b = 0; b < n && above < capacity; ++b) {
    if (expert[b] == e && (gate[b] > g || (gate[b] == g && b < a))) ++above;
  }
  keep[a] = above < capacity;
}

// chunk_counts[c][e]: kept assignments of expert e in chunk c.
__global__ void ChunkHistogramKernel(const int64_t* expert, const bool* keep, int64_t n, int64_t E,
                                     int64_t* chunk_counts) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= Chunks(n)) return;
  int64_t* counts = chunk_counts + c * E;
  for (int64_t e = 0; e < E; ++e) counts[e] = 0;
  for (int64_t a = c * kPlanChunk; a < min(n, (c + 1) * kPlanChunk); ++a) {
    if (keep[a]) ++counts[expert[a]];
  }
}

// One thread per expert: counts[e], then (one thread) offsets, then each chunk's first slot
// for e: chunk_counts becomes chunk_base in place.
__global__ void ScanKernel(int64_t* chunk_counts, int64_t n, int64_t E, int64_t* counts, int64_t* offsets) {
  const int64_t chunks = Chunks(n);
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int64_t total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += chunk_counts[c * E + e];
    counts[e] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int64_t base = offsets[e];
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t here = chunk_counts[c * E + e];
      chunk_counts[c * E + e] = base;
      base += here;
    }
  }
}

__global__ void ScatterKernel(const int64_t* expert, const bool* keep, int64_t n, int64_t k, int64_t E,
                              int64_t* chunk_base, int64_t* slot, int64_t* token) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= Chunks(n)) return;
  int64_t* next = chunk_base + c * E;
  for (int64_t a = c * kPlanChunk; a < min(n, (c + 1) * kPlanChunk); ++a) {
    if (!keep[a]) {
      slot[a] = -1;
      continue;
    }
    const int64_t s = next[expert[a]]++;
    slot[a] = s;
    token[s] = a / k;
  }
}

template <class T> __global__ void GatherRowsKernel(const T* x, const int64_t* token, T* out, int64_t A, int64_t D) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= A * D) return;
  const int64_t a = i / D, d = i % D, src = token[a];
  out[i] = src < 0 ? FromFloat<T>(0.0f) : x[src * D + d];
}

template <class T>
__global__ void SumSlotsKernel(const T* g, const int64_t* slot, T* out, int64_t X, int64_t k, int64_t D) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= X * D) return;
  const int64_t x = i / D, d = i % D;
  float acc = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = slot[x * k + j];
    if (s >= 0) acc += ToFloat(g[s * D + d]);
  }
  out[i] = FromFloat<T>(acc);
}

template <class T>
__global__ void CombineForwardKernel(const T* y, const T* gate, const int64_t* slot, T* out, int64_t X, int64_t k,
                                     int64_t D) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= X * D) return;
  const int64_t x = i / D, d = i % D;
  float acc = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = slot[x * k + j];
    if (s >= 0) acc += Round<T>(ToFloat(gate[x * k + j]) * ToFloat(y[s * D + d]));
  }
  out[i] = FromFloat<T>(acc);
}

// One warp per assignment (x, j).
template <class T>
__global__ void CombineBackwardKernel(const T* gy, const T* y, const T* gate, const int64_t* slot, T* gy_rows,
                                      float* ggate, int64_t X, int64_t k, int64_t D) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= X * k) return;
  const int64_t x = warp / k, s = slot[warp];
  if (s < 0) {
    if (lane == 0) ggate[warp] = 0;
    return;
  }
  const float g = ToFloat(gate[warp]);
  float dot = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const float dy = ToFloat(gy[x * D + d]);
    gy_rows[s * D + d] = FromFloat<T>(g * dy);
    dot += dy * ToFloat(y[s * D + d]);
  }
  dot = WarpSum(dot);
  if (lane == 0) ggate[warp] = dot;
}

}  // namespace

cudaError_t CapacityKeep(const int64_t* expert, const float* gate, bool* keep, int64_t n, int64_t capacity,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  CapacityKeepKernel<<<Blocks(n, 256), 256, 0, stream>>>(expert, gate, keep, n, capacity);
  return cudaGetLastError();
}

int64_t PlanWorkspaceElements(int64_t n, int64_t E) { return (Chunks(n) > 0 ? Chunks(n) : 1) * E; }

cudaError_t PlanDispatch(const int64_t* expert, const bool* keep, int64_t n, int64_t k, int64_t E, int64_t* counts,
                         int64_t* offsets, int64_t* slot, int64_t* token, int64_t* workspace, cudaStream_t stream) {
  // Padding rows (past offsets[E]) gather zeros: token -1 (all bits set).
  cudaError_t err = cudaMemsetAsync(token, 0xff, static_cast<size_t>(n) * sizeof(int64_t), stream);
  if (err != cudaSuccess) return err;
  const int64_t chunks = Chunks(n);
  if (chunks > 0) ChunkHistogramKernel<<<Blocks(chunks, 128), 128, 0, stream>>>(expert, keep, n, E, workspace);
  ScanKernel<<<1, 256, 0, stream>>>(workspace, n, E, counts, offsets);
  if (chunks > 0) ScatterKernel<<<Blocks(chunks, 128), 128, 0, stream>>>(expert, keep, n, k, E, workspace, slot, token);
  return cudaGetLastError();
}

cudaError_t GatherRows(DType t, const void* x, const int64_t* token, void* out, int64_t A, int64_t D,
                       cudaStream_t stream) {
  if (A * D == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    GatherRowsKernel<T><<<Blocks(A * D, 256), 256, 0, stream>>>(static_cast<const T*>(x), token, static_cast<T*>(out),
                                                                A, D);
  });
  return cudaGetLastError();
}

cudaError_t SumSlots(DType t, const void* g, const int64_t* slot, void* out, int64_t X, int64_t k, int64_t D,
                     cudaStream_t stream) {
  if (X * D == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    SumSlotsKernel<T><<<Blocks(X * D, 256), 256, 0, stream>>>(static_cast<const T*>(g), slot, static_cast<T*>(out), X,
                                                              k, D);
  });
  return cudaGetLastError();
}

cudaError_t CombineForward(DType t, const void* y, const void* gate, const int64_t* slot, void* out, int64_t X,
                           int64_t k, int64_t D, cudaStream_t stream) {
  if (X * D == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    CombineForwardKernel<T><<<Blocks(X * D, 256), 256, 0, stream>>>(
        static_cast<const T*>(y), static_cast<const T*>(gate), slot, static_cast<T*>(out), X, k, D);
  });
  return cudaGetLastError();
}

cudaError_t CombineBackward(DType t, const void* gy, const void* y, const void* gate, const int64_t* slot,
                            void* gy_rows, float* ggate, int64_t X, int64_t k, int64_t D, cudaStream_t stream) {
  if (X * k == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    CombineBackwardKernel<T><<<Blocks(X * k * 32, 256), 256, 0, stream>>>(
        static_cast<const T*>(gy), static_cast<const T*>(y), static_cast<const T*>(gate), slot,
        static_cast<T*>(gy_rows), ggate, X, k, D);
  });
  return cudaGetLastError();
}

}  // namespace dsv3::kernels::cuda
