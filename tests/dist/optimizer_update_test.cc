// The distributed optimizer's update arithmetic (ApplyUpdate) against torch::optim's AdamW,
// Adam and SGD on the same parameters and gradients, over several steps: this is what every
// rank applies to the elements it owns, whatever the sharding.
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/dist/optimizer_update.h"

namespace dsv3 {
namespace {

// Runs `steps` updates of two parameters (a matrix that decays, a vector that does not) with
// torch::optim and with ApplyUpdate over their flat concatenation; returns the largest
// relative difference of the parameters.
double Compare(const std::string& type, int steps) {
  torch::manual_seed(7);
  const torch::Tensor w0 = torch::randn({5, 3}), b0 = torch::randn({4});
  std::vector<torch::Tensor> grads;
  for (int s = 0; s < steps; ++s) grads.push_back(torch::randn({19}));
  const double lr = 0.05, wd = 0.1;

  torch::Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  std::unique_ptr<torch::optim::Optimizer> ref;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (type == "adamw") {
    auto o = std::make_unique<torch::optim::AdamWOptions>(lr);
    o->betas({0.9, 0.95}).eps(1e-8).weight_decay(wd);
    auto o0 = std::make_unique<torch::optim::AdamWOptions>(*o);
    o0->weight_decay(0);
    groups.emplace_back(std::vector<torch::Tensor>{w}, std::move(o));
    groups.emplace_back(std::vector<torch::Tensor>{b}, std::move(o0));
    ref = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(lr));
  } else if (type == "adam") {
    auto o = std::make_unique<torch::optim::AdamOptions>(lr);
    o->betas({0.9, 0.95}).eps(1e-8).weight_decay(wd);
    auto o0 = std::make_unique<torch::optim::AdamOptions>(*o);
    o0->weight_decay(0);
    groups.emplace_back(std::vector<torch::Tensor>{w}, std::move(o));
    groups.emplace_back(std::vector<torch::Tensor>{b}, std::move(o0));
    ref = std::make_unique<torch::optim::Adam>(groups, torch::optim::AdamOptions(lr));
  } else {
    auto o = std::make_unique<torch::optim::SGDOptions>(lr);
    o->weight_decay(wd);
    auto o0 = std::make_unique<torch::optim::SGDOptions>(*o);
    o0->weight_decay(0);
    groups.emplace_back(std::vector<torch::Tensor>{w}, std::move(o));
    groups.emplace_back(std::vector<torch::Tensor>{b}, std::move(o0));
    ref = std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(lr));
  }

  dist::OptimizerOptions o;
  o.type = type;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = wd;
  torch::Tensor flat = torch::cat({w0.reshape({-1}), b0});
  const torch::Tensor decay = torch::cat({torch::ones({15}), torch::zeros({4})});
  torch::Tensor m, v;
  if (type != "sgd") {
    m = torch::zeros({19});
    v = torch::zeros({19});
  }
  for (int s = 0; s < steps; ++s) {
    w.mutable_grad() = grads[static_cast<size_t>(s)].narrow(0, 0, 15).view({5, 3}).clone();
    b.mutable_grad() = grads[static_cast<size_t>(s)].narrow(0, 15, 4).clone();
    ref->step();
    dist::ApplyUpdate(o, lr, s + 1, flat, grads[static_cast<size_t>(s)], decay, m, v);
  }
  const torch::Tensor want = torch::cat({w.detach().reshape({-1}), b.detach()});
  return ((flat - want).abs() / want.abs().clamp_min(1e-6)).max().item<double>();
}

// fp32 arithmetic in the same order as torch::optim: equal to rounding (1e-5 relative).
TEST(OptimizerUpdate, AdamWMatchesTorchOptim) { EXPECT_LT(Compare("adamw", 5), 1e-5); }
TEST(OptimizerUpdate, AdamMatchesTorchOptim) { EXPECT_LT(Compare("adam", 5), 1e-5); }
TEST(OptimizerUpdate, SgdMatchesTorchOptim) { EXPECT_LT(Compare("sgd", 5), 1e-5); }

}  // namespace
}  // namespace dsv3
