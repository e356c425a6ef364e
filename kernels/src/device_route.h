// Routing of a kernel call to the CUDA implementation (kernels/cuda/bindings.cc, built only
// against a CUDA LibTorch with DSV3_WITH_CUDA) or the CPU one in this folder.
#pragma once

#include <stdexcept>
#include <string>

#include <torch/torch.h>

namespace dsv3::kernels::detail {

// Throws naming the kernel when a tensor is on a device this build has no kernels for.
inline void CheckDevice(const torch::Tensor& t, const char* kernel) {
#if DSV3_KERNELS_CUDA
  if (t.device().is_cpu() || t.device().is_cuda()) return;
#else
  if (t.device().is_cpu()) return;
#endif
  {
    throw std::invalid_argument(std::string("dsv3 kernel ") + kernel + ": no implementation for device " +
                                t.device().str() +
                                " in this build (build against a CUDA LibTorch with DSV3_WITH_CUDA=ON, or set "
                                "model.fused_kernels to false)");
  }
}

}  // namespace dsv3::kernels::detail
