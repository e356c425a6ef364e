#include "dsv3/kernels/kernels.h"
#if DSV3_KERNELS_CUDA
#include "cuda_ops.h"
#endif

namespace dsv3::kernels {

bool Available(const torch::Device& device) {
  if (device.is_cpu()) return true;
#if DSV3_KERNELS_CUDA
  return device.is_cuda();
#else
  return false;
#endif
}

std::optional<int64_t> PeakDeviceBytes(const torch::Device& device) {
#if DSV3_KERNELS_CUDA
  if (device.is_cuda()) return cuda_ops::PeakAllocatedBytes(device);
#endif
  (void)device;
  return std::nullopt;
}

void ResetPeakDeviceBytes(const torch::Device& device) {
#if DSV3_KERNELS_CUDA
  if (device.is_cuda()) cuda_ops::ResetPeakAllocatedBytes(device);
#endif
  (void)device;
}

}  // namespace dsv3::kernels
