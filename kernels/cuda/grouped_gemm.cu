// Grouped expert GEMMs on CUDA without host synchronisation: the grid covers every expert
// with as many row tiles as the whole batch could need, and each block reads its expert's row
// range from the device-side offsets (blocks past an expert's rows exit at once). A plain
// shared-memory tiled GEMM with fp32 accumulation (no CUTLASS): 64 x 64 tiles, 4 x 4 per thread.
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

constexpr int kTile = 64, kDepth = 16, kThreads = 256;

// out[r, n] = sum_k x[r, k] * W_e(n, k) for the rows of expert blockIdx.z.
template <class T>
__global__ void GroupedGemmKernel(const T* x, const T* w, const int64_t* offsets, T* out, int64_t N, int64_t K,
                                  bool transpose_w) {
  const int64_t e = blockIdx.z, start = offsets[e], count = offsets[e + 1] - start;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (row0 >= count) return;
  __shared__ float xs[kDepth][kTile + 1];
  __shared__ float ws[kDepth][kTile + 1];
  const T* we = w + e * N * K;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    for (int i = threadIdx.x; i < kDepth * kTile; i += kThreads) {
      const int kk = i % kDepth, rr = i / kDepth;
      const int64_t r = row0 + rr, k = k0 + kk, n = col0 + rr;
      xs[kk][rr] = (r < count && k < K) ? ToFloat(x[(start + r) * K + k]) : 0.0f;
      float wv = 0.0f;
      if (n < N && k < K) wv = ToFloat(transpose_w ? we[k * N + n] : we[n * K + k]);
      ws[kk][rr] = wv;
    }
    __syncthreads();
    for (int kk = 0; kk < kDepth; ++kk) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][tr * 4 + i];
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tc * 4 + j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + tr * 4 + i;
    if (r >= count) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t n = col0 + tc * 4 + j;
      if (n < N) out[(start + r) * N + n] = FromFloat<T>(acc[i][j]);
    }
  }
}

// gw[e, o, i] = sum over the rows r of expert e of g[r, o] * x[r, i].
template <class T>
__global__ void GroupedWeightGradKernel(const T* g, const T* x, const int64_t* offsets, T* gw, int64_t O, int64_t I) {
  const int64_t e = blockIdx.z, start = offsets[e], count = offsets[e + 1] - start;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTile, i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  __shared__ float gs[kDepth][kTile + 1];
  __shared__ float xs[kDepth][kTile + 1];
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int64_t r0 = 0; r0 < count; r0 += kDepth) {
    for (int idx = threadIdx.x; idx < kDepth * kTile; idx += kThreads) {
      const int rr = idx / kTile, cc = idx % kTile;
      const int64_t r = r0 + rr;
      gs[rr][cc] = (r < count && o0 + cc < O) ? ToFloat(g[(start + r) * O + o0 + cc]) : 0.0f;
      xs[rr][cc] = (r < count && i0 + cc < I) ? ToFloat(x[(start + r) * I + i0 + cc]) : 0.0f;
    }
    __syncthreads();
    for (int rr = 0; rr < kDepth; ++rr) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = gs[rr][tr * 4 + i];
      for (int j = 0; j < 4; ++j) b[j] = xs[rr][tc * 4 + j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t o = o0 + tr * 4 + i;
    if (o >= O) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t in = i0 + tc * 4 + j;
      if (in < I) gw[(e * O + o) * I + in] = FromFloat<T>(acc[i][j]);
    }
  }
}

}  // namespace

cudaError_t GroupedGemm(DType t, const void* x, const void* w, const int64_t* offsets, void* out, int64_t rows,
                        int64_t E, int64_t N, int64_t K, bool transpose_w, cudaStream_t stream) {
  if (rows == 0 || E == 0 || N == 0) return cudaSuccess;
  const dim3 grid(Blocks(N, kTile), Blocks(rows, kTile), static_cast<unsigned>(E));
  DSV3_DISPATCH_DTYPE(t, [&] {
    GroupedGemmKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w), offsets,
                                                        static_cast<T*>(out), N, K, transpose_w);
  });
  return cudaGetLastError();
}

cudaError_t GroupedWeightGrad(DType t, const void* g, const void* x, const int64_t* offsets, void* gw, int64_t rows,
                              int64_t E, int64_t O, int64_t I, cudaStream_t stream) {
  (void)rows;  // every expert's rows come from the offsets
  if (E == 0 || O == 0 || I == 0) return cudaSuccess;
  const dim3 grid(Blocks(I, kTile), Blocks(O, kTile), static_cast<unsigned>(E));
  DSV3_DISPATCH_DTYPE(t, [&] {
    GroupedWeightGradKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(g), static_cast<const T*>(x),
                                                              offsets, static_cast<T*>(gw), O, I);
  });
  return cudaGetLastError();
}

}  // namespace dsv3::kernels::cuda
