// Causal attention on CUDA without a T x T matrix: one warp per query row runs an online
// softmax over its visible keys (forward), one warp per query row accumulates dq and one warp
// per key row accumulates dk and dv (backward, recomputing the probabilities from the saved
// log-sum-exp): deterministic, no atomics. Lanes split the head dims (up to 256 = 8 per lane).
// A correctness-first kernel: it keeps memory at O(T) per head; tensor-core tiling is the
// next step once it has been measured on a GPU.
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

constexpr int kPerLane = static_cast<int>(kMaxAttentionHeadDim / 32);
constexpr int kWarpsPerBlock = 8;

struct Shape {
  int64_t B, T, H, Dq, Dv, window;
  float scale;
  const int64_t* segments;
  __device__ int64_t Row(int64_t b, int64_t t, int64_t h) const { return (b * T + t) * H + h; }
  __device__ bool Visible(int64_t b, int64_t i, int64_t j) const {
    if (j > i || (window > 0 && i - j >= window)) return false;
    return segments == nullptr || segments[b * T + i] == segments[b * T + j];
  }
};

template <class T> __device__ void LoadRow(const T* src, int64_t D, float scale, float (&dst)[kPerLane]) {
  const int lane = threadIdx.x % 32;
  for (int u = 0; u < kPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    dst[u] = d < D ? ToFloat(src[d]) * scale : 0.0f;
  }
}

template <class T> __device__ float Dot(const float (&a)[kPerLane], const T* row, int64_t D) {
  const int lane = threadIdx.x % 32;
  float s = 0;
  for (int u = 0; u < kPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < D) s += a[u] * ToFloat(row[d]);
  }
  return WarpSum(s);
}

template <class T>
__global__ void ForwardKernel(const T* q, const T* k, const T* v, T* o, float* lse, Shape s) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (warp >= s.B * s.H * s.T) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = warp % s.T, h = (warp / s.T) % s.H, b = warp / (s.T * s.H);
  float qr[kPerLane], acc[kPerLane] = {};
  LoadRow(q + s.Row(b, i, h) * s.Dq, s.Dq, s.scale, qr);
  float m = -INFINITY, l = 0;
  const int64_t j0 = s.window > 0 ? max(int64_t{0}, i - s.window + 1) : 0;
  for (int64_t j = j0; j <= i; ++j) {
    if (!s.Visible(b, i, j)) continue;
    const float score = Dot(qr, k + s.Row(b, j, h) * s.Dq, s.Dq);
    const float m_new = fmaxf(m, score);
    const float alpha = expf(m - m_new), p = expf(score - m_new);
    l = l * alpha + p;
    const T* vr = v + s.Row(b, j, h) * s.Dv;
    for (int u = 0; u < kPerLane; ++u) {
      const int64_t d = lane + 32 * u;
      acc[u] = acc[u] * alpha + (d < s.Dv ? p * ToFloat(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  T* orow = o + s.Row(b, i, h) * s.Dv;
  for (int u = 0; u < kPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < s.Dv) orow[d] = FromFloat<T>(acc[u] / l);
  }
  if (lane == 0) lse[(b * s.H + h) * s.T + i] = m + logf(l);
}

template <class T> __global__ void DeltaKernel(const T* go, const T* o, float* delta, Shape s) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (warp >= s.B * s.H * s.T) return;
  const int64_t i = warp % s.T, h = (warp / s.T) % s.H, b = warp / (s.T * s.H);
  float g[kPerLane];
  LoadRow(go + s.Row(b, i, h) * s.Dv, s.Dv, 1.0f, g);
  const float d = Dot(g, o + s.Row(b, i, h) * s.Dv, s.Dv);
  if (threadIdx.x % 32 == 0) delta[(b * s.H + h) * s.T + i] = d;
}

// dq_i = scale * sum_j p_ij (dp_ij - delta_i) k_j.
template <class T>
__global__ void QueryGradKernel(const T* go, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                                T* gq, Shape s) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (warp >= s.B * s.H * s.T) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = warp % s.T, h = (warp / s.T) % s.H, b = warp / (s.T * s.H);
  float qr[kPerLane], g[kPerLane], acc[kPerLane] = {};
  LoadRow(q + s.Row(b, i, h) * s.Dq, s.Dq, s.scale, qr);
  LoadRow(go + s.Row(b, i, h) * s.Dv, s.Dv, 1.0f, g);
  const float L = lse[(b * s.H + h) * s.T + i], Di = delta[(b * s.H + h) * s.T + i];
  const int64_t j0 = s.window > 0 ? max(int64_t{0}, i - s.window + 1) : 0;
  for (int64_t j = j0; j <= i; ++j) {
    if (!s.Visible(b, i, j)) continue;
    const T* kr = k + s.Row(b, j, h) * s.Dq;
    const float p = expf(Dot(qr, kr, s.Dq) - L);
    const float ds = p * (Dot(g, v + s.Row(b, j, h) * s.Dv, s.Dv) - Di);
    for (int u = 0; u < kPerLane; ++u) {
      const int64_t d = lane + 32 * u;
      if (d < s.Dq) acc[u] += ds * ToFloat(kr[d]);
    }
  }
  T* out = gq + s.Row(b, i, h) * s.Dq;
  for (int u = 0; u < kPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < s.Dq) out[d] = FromFloat<T>(acc[u] * s.scale);
  }
}

// dv_j = sum_i p_ij do_i;  dk_j = scale * sum_i p_ij (dp_ij - delta_i) q_i.
template <class T>
__global__ void KeyValueGradKernel(const T* go, const T* q, const T* k, const T* v, const float* lse,
                                   const float* delta, T* gk, T* gv, Shape s) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (warp >= s.B * s.H * s.T) return;
  const int lane = threadIdx.x % 32;
  const int64_t j = warp % s.T, h = (warp / s.T) % s.H, b = warp / (s.T * s.H);
  float kr[kPerLane], vr[kPerLane], dk[kPerLane] = {}, dv[kPerLane] = {};
  LoadRow(k + s.Row(b, j, h) * s.Dq, s.Dq, 1.0f, kr);
  LoadRow(v + s.Row(b, j, h) * s.Dv, s.Dv, 1.0f, vr);
  const int64_t i1 = s.window > 0 ? min(s.T - 1, j + s.window - 1) : s.T - 1;
  for (int64_t i = j; i <= i1; ++i) {
    if (!s.Visible(b, i, j)) continue;
    const T* qrow = q + s.Row(b, i, h) * s.Dq;
    const T* grow = go + s.Row(b, i, h) * s.Dv;
    const float L = lse[(b * s.H + h) * s.T + i], Di = delta[(b * s.H + h) * s.T + i];
    const float p = expf(Dot(kr, qrow, s.Dq) * s.scale - L);
    const float ds = p * (Dot(vr, grow, s.Dv) - Di);
    for (int u = 0; u < kPerLane; ++u) {
      const int64_t d = lane + 32 * u;
      if (d < s.Dv) dv[u] += p * ToFloat(grow[d]);
      if (d < s.Dq) dk[u] += ds * ToFloat(qrow[d]) * s.scale;
    }
  }
  for (int u = 0; u < kPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < s.Dq) gk[s.Row(b, j, h) * s.Dq + d] = FromFloat<T>(dk[u]);
    if (d < s.Dv) gv[s.Row(b, j, h) * s.Dv + d] = FromFloat<T>(dv[u]);
  }
}

unsigned WarpBlocks(int64_t rows) { return Blocks(rows, kWarpsPerBlock); }

}  // namespace

cudaError_t AttentionForward(DType t, const void* q, const void* k, const void* v, void* o, float* lse, int64_t B,
                             int64_t T_, int64_t H, int64_t Dq, int64_t Dv, float scale, int64_t window,
                             const int64_t* segments, cudaStream_t stream) {
  if (Dq > kMaxAttentionHeadDim || Dv > kMaxAttentionHeadDim) return cudaErrorInvalidValue;
  const int64_t rows = B * H * T_;
  if (rows == 0) return cudaSuccess;
  const Shape s{B, T_, H, Dq, Dv, window, scale, segments};
  DSV3_DISPATCH_DTYPE(t, [&] {
    ForwardKernel<T><<<WarpBlocks(rows), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), lse, s);
  });
  return cudaGetLastError();
}

cudaError_t AttentionDelta(DType t, const void* go, const void* o, float* delta, int64_t B, int64_t T_, int64_t H,
                           int64_t Dv, cudaStream_t stream) {
  const int64_t rows = B * H * T_;
  if (rows == 0) return cudaSuccess;
  const Shape s{B, T_, H, 0, Dv, 0, 1.0f, nullptr};
  DSV3_DISPATCH_DTYPE(t, [&] {
    DeltaKernel<T><<<WarpBlocks(rows), kWarpsPerBlock * 32, 0, stream>>>(static_cast<const T*>(go),
                                                                         static_cast<const T*>(o), delta, s);
  });
  return cudaGetLastError();
}

cudaError_t AttentionBackward(DType t, const void* go, const void* q, const void* k, const void* v, const float* lse,
                              const float* delta, void* gq, void* gk, void* gv, int64_t B, int64_t T_, int64_t H,
                              int64_t Dq, int64_t Dv, float scale, int64_t window, const int64_t* segments,
                              cudaStream_t stream) {
  if (Dq > kMaxAttentionHeadDim || Dv > kMaxAttentionHeadDim) return cudaErrorInvalidValue;
  const int64_t rows = B * H * T_;
  if (rows == 0) return cudaSuccess;
  const Shape s{B, T_, H, Dq, Dv, window, scale, segments};
  DSV3_DISPATCH_DTYPE(t, [&] {
    QueryGradKernel<T><<<WarpBlocks(rows), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const T*>(go), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
        delta, static_cast<T*>(gq), s);
    KeyValueGradKernel<T><<<WarpBlocks(rows), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const T*>(go), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
        delta, static_cast<T*>(gk), static_cast<T*>(gv), s);
  });
  return cudaGetLastError();
}

}  // namespace dsv3::kernels::cuda
