// Linear without bias, with the forward and both backward GEMMs tiled over the threads.
#include "cpu_tiles.h"
#include "dsv3/kernels/kernels.h"

namespace dsv3::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LinearFunction : public torch::autograd::Function<LinearFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight) {
    const torch::Tensor x2 = x.reshape({-1, x.size(-1)});
    ctx->save_for_backward({x2, weight});
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return cpu::TiledMm(x2, weight.t()).view(shape);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x2 = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor g2 = grads[0].reshape({-1, weight.size(0)});
    torch::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) {
      std::vector<int64_t> shape = grads[0].sizes().vec();
      shape.back() = weight.size(1);
      gx = cpu::TiledMm(g2, weight).view(shape);
    }
    if (ctx->needs_input_grad(1)) gw = cpu::TiledMm(g2.t(), x2);
    return {gx, gw};
  }
};

}  // namespace

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& weight) {
  // cuBLAS already uses the whole GPU for one GEMM: nothing to tile there.
  if (!x.device().is_cpu()) return torch::matmul(x, weight.t());
  return LinearFunction::apply(x, weight);
}

}  // namespace dsv3::kernels
