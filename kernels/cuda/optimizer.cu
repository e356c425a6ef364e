// The optimizer update on CUDA: one kernel over the flat fp32 shard (multi-tensor by
// construction: the distributed optimizer keeps every parameter in one flat buffer).
#include "common.cuh"

namespace dsv3::kernels::cuda {
namespace {

template <OptimizerKind K, class C>
__global__ void UpdateKernel(OptimizerScalars s, float* p, const float* g, const float* mask, float* m, float* v,
                             C* compute, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    float unused_m = 0, unused_v = 0;
    const float dm = mask != nullptr ? mask[i] : 1.0f;
    const float w = K == OptimizerKind::kSgd ? UpdateElement<K>(s, p[i], g[i], dm, &unused_m, &unused_v)
                                             : UpdateElement<K>(s, p[i], g[i], dm, m + i, v + i);
    p[i] = w;
    if (compute != nullptr) compute[i] = FromFloat<C>(w);
  }
}

template <OptimizerKind K>
cudaError_t Launch(const OptimizerScalars& s, float* p, const float* g, const float* mask, float* m, float* v,
                   void* compute, DType compute_type, int64_t n, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(Blocks(n, 256), 132 * 16));
  if (compute_type == DType::kBF16) {
    UpdateKernel<K, __nv_bfloat16><<<blocks, 256, 0, stream>>>(s, p, g, mask, m, v,
                                                               static_cast<__nv_bfloat16*>(compute), n);
  } else {
    UpdateKernel<K, float><<<blocks, 256, 0, stream>>>(s, p, g, mask, m, v, static_cast<float*>(compute), n);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t FusedOptimizerUpdate(OptimizerKind kind, const OptimizerScalars& s, float* param, const float* grad,
                                 const float* mask, float* exp_avg, float* exp_avg_sq, void* compute,
                                 DType compute_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (kind) {
    case OptimizerKind::kAdamW:
      return Launch<OptimizerKind::kAdamW>(s, param, grad, mask, exp_avg, exp_avg_sq, compute, compute_type, n, stream);
    case OptimizerKind::kAdam:
      return Launch<OptimizerKind::kAdam>(s, param, grad, mask, exp_avg, exp_avg_sq, compute, compute_type, n, stream);
    case OptimizerKind::kSgd:
      return Launch<OptimizerKind::kSgd>(s, param, grad, mask, exp_avg, exp_avg_sq, compute, compute_type, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dsv3::kernels::cuda
