// Shared device helpers of the CUDA kernels: dtype dispatch, fp32 loads and stores, warp and
// block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace dsv3::kernels::cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T FromFloat(float v);
template <> __device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// Rounds v to T and back: where the reference rounds an intermediate to the activation dtype.
template <class T> __device__ __forceinline__ float Round(float v) { return ToFloat(FromFloat<T>(v)); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. blockDim.x a multiple of 32,
// at most 1024.
template <bool kMax> __device__ float BlockReduce(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = kMax ? WarpMax(v) : WarpSum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float r = lane < warps ? partial[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? WarpMax(r) : WarpSum(r);
  return r;
}

inline unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Calls f with T = float or __nv_bfloat16.
#define DSV3_DISPATCH_DTYPE(t, ...)     \
  do {                                  \
    if ((t) == DType::kF32) {           \
      using T = float;                  \
      __VA_ARGS__();                    \
    } else {                            \
      using T = __nv_bfloat16;          \
      __VA_ARGS__();                    \
    }                                   \
  } while (0)

}  // namespace dsv3::kernels::cuda
