// The one place where LibTorch 1.13 (Debian, CPU) and LibTorch 2.x (GPU machines) differ
// for the model code. Everything version-dependent goes through these helpers.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

namespace dsv3::model::compat {

// float8 types arrived in LibTorch 2.1.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define DSV3_HAS_FLOAT8 1
inline constexpr bool kHasFloat8 = true;
inline c10::ScalarType Float8E4M3() { return at::kFloat8_e4m3fn; }
#else
#define DSV3_HAS_FLOAT8 0
inline constexpr bool kHasFloat8 = false;
// Never called: callers check kHasFloat8 first and report a clear error.
inline c10::ScalarType Float8E4M3() { return at::kFloat; }
#endif

inline std::string TorchVersion() { return TORCH_VERSION; }

// State of the default random generator of `device` (CPU or CUDA), for replaying dropout and
// router noise exactly when a checkpointed block is recomputed.
inline torch::Tensor GetRngState(const torch::Device& device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
inline void SetRngState(const torch::Device& device, const torch::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace dsv3::model::compat
