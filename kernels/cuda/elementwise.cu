// RMSNorm, interleaved RoPE and SwiGLU on CUDA.
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

// One block per row.
template <class T>
__global__ void RmsNormForwardKernel(const T* x, const T* w, T* y, float* rstd, int64_t D, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  float ss = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = ToFloat(xr[d]);
    ss += v * v;
  }
  const float inv = rsqrtf(BlockReduce<false>(ss) / static_cast<float>(D) + eps);
  if (threadIdx.x == 0) rstd[row] = inv;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    y[row * D + d] = FromFloat<T>(ToFloat(w[d]) * Round<T>(ToFloat(xr[d]) * inv));
  }
}

// One block per chunk of rows: gx for each row, and the chunk's weight-gradient partial.
template <class T>
__global__ void RmsNormBackwardKernel(const T* gy, const T* x, const T* w, const float* rstd, T* gx, float* gw_partial,
                                      int64_t rows, int64_t D, int64_t rows_per_chunk) {
  const int64_t chunk = blockIdx.x;
  float* gw = gw_partial + chunk * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) gw[d] = 0;
  const int64_t end = min(rows, (chunk + 1) * rows_per_chunk);
  for (int64_t row = chunk * rows_per_chunk; row < end; ++row) {
    const float inv = rstd[row];
    float dot = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float xhat = ToFloat(x[row * D + d]) * inv;
      const float g = ToFloat(gy[row * D + d]);
      dot += g * ToFloat(w[d]) * xhat;
      gw[d] += g * Round<T>(xhat);
    }
    const float mean = BlockReduce<false>(dot) / static_cast<float>(D);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float xhat = ToFloat(x[row * D + d]) * inv;
      gx[row * D + d] = FromFloat<T>(inv * (ToFloat(gy[row * D + d]) * ToFloat(w[d]) - xhat * mean));
    }
  }
}

template <class T>
__global__ void RopeKernel(const T* x, T* y, const float* cos, const float* sin, int64_t B, int64_t T_, int64_t H,
                           int64_t R, bool per_row, float sign) {
  const int64_t P = R / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // one pair
  if (i >= B * T_ * H * P) return;
  const int64_t pair = i % P, bth = i / P, bt = bth / H;
  const int64_t table = (per_row ? bt : bt % T_) * P + pair;
  const float c = cos[table], s = sign * sin[table];
  const float x0 = ToFloat(x[bth * R + 2 * pair]), x1 = ToFloat(x[bth * R + 2 * pair + 1]);
  y[bth * R + 2 * pair] = FromFloat<T>(x0 * c - x1 * s);
  y[bth * R + 2 * pair + 1] = FromFloat<T>(x0 * s + x1 * c);
}

template <class T> __global__ void SwiGluForwardKernel(const T* g, const T* u, T* y, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float x = ToFloat(g[i]);
  y[i] = FromFloat<T>(Round<T>(x / (1.0f + expf(-x))) * ToFloat(u[i]));
}

template <class T>
__global__ void SwiGluBackwardKernel(const T* gy, const T* g, const T* u, T* gg, T* gu, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float x = ToFloat(g[i]), dy = ToFloat(gy[i]);
  const float sig = 1.0f / (1.0f + expf(-x));
  gu[i] = FromFloat<T>(dy * Round<T>(x * sig));
  gg[i] = FromFloat<T>(dy * ToFloat(u[i]) * sig * (1.0f + x * (1.0f - sig)));
}

int RowThreads(int64_t D) { return D >= 1024 ? 1024 : D >= 256 ? 256 : 128; }

}  // namespace

cudaError_t RmsNormForward(DType t, const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t D,
                           float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    RmsNormForwardKernel<T><<<static_cast<unsigned>(rows), RowThreads(D), 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), rstd, D, eps);
  });
  return cudaGetLastError();
}

cudaError_t RmsNormBackward(DType t, const void* gy, const void* x, const void* w, const float* rstd, void* gx,
                            float* gw_partial, int64_t rows, int64_t D, int64_t rows_per_chunk, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const unsigned chunks = Blocks(rows, static_cast<int>(rows_per_chunk));
  DSV3_DISPATCH_DTYPE(t, [&] {
    RmsNormBackwardKernel<T><<<chunks, RowThreads(D), 0, stream>>>(
        static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<const T*>(w), rstd, static_cast<T*>(gx),
        gw_partial, rows, D, rows_per_chunk);
  });
  return cudaGetLastError();
}

cudaError_t RopeApply(DType t, const void* x, void* y, const float* cos, const float* sin, int64_t B, int64_t T_,
                      int64_t H, int64_t R, bool per_row, bool inverse, cudaStream_t stream) {
  const int64_t pairs = B * T_ * H * (R / 2);
  if (pairs == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    RopeKernel<T><<<Blocks(pairs, 256), 256, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), cos, sin, B,
                                                          T_, H, R, per_row, inverse ? -1.0f : 1.0f);
  });
  return cudaGetLastError();
}

cudaError_t SwiGluForward(DType t, const void* gate, const void* up, void* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    SwiGluForwardKernel<T><<<Blocks(n, 256), 256, 0, stream>>>(static_cast<const T*>(gate), static_cast<const T*>(up),
                                                               static_cast<T*>(y), n);
  });
  return cudaGetLastError();
}

cudaError_t SwiGluBackward(DType t, const void* gy, const void* gate, const void* up, void* ggate, void* gup, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  DSV3_DISPATCH_DTYPE(t, [&] {
    SwiGluBackwardKernel<T><<<Blocks(n, 256), 256, 0, stream>>>(
        static_cast<const T*>(gy), static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(ggate),
        static_cast<T*>(gup), n);
  });
  return cudaGetLastError();
}

}  // namespace dsv3::kernels::cuda
