#include "cpu_tiles.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace dsv3::kernels::cpu {

namespace {
// Below this many rows per tile the call overhead outweighs the second core.
constexpr int64_t kMinTileRows = 16;
}  // namespace

void TiledMmOut(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out) {
  const int64_t M = a.size(0);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t tiles = std::max<int64_t>(1, std::min<int64_t>(threads, M / kMinTileRows));
  if (tiles == 1 || M == 0) {
    at::mm_out(out, a, b);
    return;
  }
  const int64_t rows = (M + tiles - 1) / tiles;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    WorkerNoGrad no_grad;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = t * rows, n = std::min(rows, M - r0);
      if (n <= 0) continue;
      torch::Tensor tile = out.narrow(0, r0, n);
      at::mm_out(tile, a.narrow(0, r0, n), b);
    }
  });
}

torch::Tensor TiledMm(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor out = torch::empty({a.size(0), b.size(1)}, a.options());
  TiledMmOut(a, b, out);
  return out;
}

}  // namespace dsv3::kernels::cpu
