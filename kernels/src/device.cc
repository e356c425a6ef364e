#include "dsv3/kernels/kernels.h"

namespace dsv3::kernels {

bool Available(const torch::Device& device) {
  if (device.is_cpu()) return true;
#if DSV3_KERNELS_CUDA
  return device.is_cuda();
#else
  return false;
#endif
}

}  // namespace dsv3::kernels
