// Routing of a kernel call to the CUDA implementation (kernels/cuda/bindings.cc, built only
// against a CUDA LibTorch with DSV3_WITH_CUDA) or the CPU one in this folder.
#pragma once

#include <stdexcept>
#include <string>

#include <torch/torch.h>

#ifndef DSV3_KERNELS_CUDA
#define DSV3_KERNELS_CUDA 0
#endif

namespace dsv3::kernels::detail {

// Throws naming the kernel when a tensor is on a device this build has no kernels for.
inline void CheckDevice(const torch::Tensor& t, const char* kernel) {
  const bool supported = t.device().is_cpu() || (DSV3_KERNELS_CUDA && t.device().is_cuda());
  if (supported) return;
  throw std::invalid_argument(std::string("dsv3 kernel ") + kernel + ": no implementation for device " +
                              t.device().str() +
                              " in this build (build against a CUDA LibTorch with DSV3_WITH_CUDA=ON, or set "
                              "model.fused_kernels to false)");
}

}  // namespace dsv3::kernels::detail
