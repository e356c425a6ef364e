#include "precision.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "dsv3/kernels/kernels.h"

namespace dsv3::train {

void CopyMasterToCompute(model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute) {
  torch::NoGradGuard no_grad;
  auto src = master.named_parameters();
  for (auto& p : compute.named_parameters()) p.value().copy_(src[p.key()]);
  auto bufs = master.named_buffers();
  for (auto& b : compute.named_buffers()) b.value().copy_(bufs[b.key()]);
}

double MeasurePeakFlops(torch::Device device, torch::ScalarType dtype) {
  using Clock = std::chrono::steady_clock;
  torch::NoGradGuard no_grad;
  const int64_t n = device.is_cuda() ? 8192 : 512;
  const auto opts = torch::TensorOptions().dtype(dtype).device(device);
  const torch::Tensor a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    const auto start = Clock::now();
    // The GEMM the model's linears run: on the CPU tiled over the run's intra-op threads (a
    // plain matmul gets one OpenBLAS thread per rank, one core, and MFU would pass 100% with
    // more threads than one); cuBLAS on CUDA.
    torch::Tensor c = device.is_cpu() ? kernels::Linear(a, b) : torch::matmul(a, b);
    if (device.is_cuda()) c.cpu();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (i > 0) best = std::max(best, 2.0 * n * n * n / s);  // the first call warms up
  }
  return best;
}

bool LossScaler::Update(double grad_norm) {
  if (!std::isfinite(grad_norm)) {  // overflow: skip the update and halve the scale
    scale /= 2;
    good_steps = 0;
    return false;
  }
  if (++good_steps % 2000 == 0) scale *= 2;
  return true;
}

}  // namespace dsv3::train
