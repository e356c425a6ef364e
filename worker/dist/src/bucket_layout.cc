#include "optimizer_layout.h"

#include <algorithm>
#include <stdexcept>

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace dsv3::dist {

DistributedOptimizer::DistributedOptimizer(std::vector<ParamGroup> groups, OptimizerOptions optimizer,
                                           ShardingOptions sharding, Communicator* world)
    : opt_(std::move(optimizer)), sh_(sharding), world_(world) {
  if (sh_.zero_stage < 0 || sh_.zero_stage > 3) {
    throw std::runtime_error("/distributed/zero_stage: " + std::to_string(sh_.zero_stage) + " is not 0, 1, 2 or 3");
  }
  torch::NoGradGuard no_grad;
  for (auto& spec : groups) {
    auto g = std::make_unique<Group>();
    g->spec = std::move(spec);
    const size_t P = g->spec.params.size();
    g->offset.assign(P, 0);
    g->bucket_of.assign(P, 0);
    g->seen.assign(P, 0);
    for (const auto& e : g->spec.params) {
      g->numel.push_back(e.master.numel());
      g->shape.push_back(e.master.sizes().vec());
    }
    LayOutBuckets(*g);
    AllocateParameters(*g);
    AllocateOptimizerState(*g);
    groups_.push_back(std::move(g));
  }
  RegisterGradHooks();
  // After the hooks: a gradient accumulator records its parameter's shape when created.
  if (sh_.zero_stage == 3) ReleaseZero3Layers();
}

// Buckets in backward order (the last registered parameters get their gradients first),
// each padded to a multiple of the ranks; under ZeRO-3 a bucket never spans two layers.
void DistributedOptimizer::LayOutBuckets(Group& g) const {
  const int64_t n = g.size();
  const size_t P = g.spec.params.size();
  Bucket current;
  int64_t used = 0;
  const auto close = [&] {
    if (current.params.empty()) return;
    current.start = g.total;
    current.numel = RoundUp(std::max<int64_t>(used, 1), n);
    current.chunk = current.numel / n;
    int64_t at = current.start;
    for (size_t p : current.params) {
      g.offset[p] = at;
      g.bucket_of[p] = g.buckets.size();
      at += g.numel[p];
    }
    g.total += current.numel;
    g.buckets.push_back(current);
    current = Bucket();
    used = 0;
  };
  for (size_t i = P; i-- > 0;) {
    const int64_t numel = g.numel[i];
    const int unit = sh_.zero_stage == 3 ? g.spec.params[i].unit : -1;  // a bucket never spans two layers
    if (!current.params.empty() && (used + numel > sh_.bucket_elements || unit != current.unit)) close();
    current.unit = unit;
    current.params.push_back(i);
    used += numel;
  }
  close();
  int64_t shard = 0;
  for (auto& b : g.buckets) {
    b.shard_offset = shard;
    shard += b.chunk;
  }
}

// The flat fp32 master (its parameters become views into it; under ZeRO-3 only this rank's
// chunks, the parameters released) and the flat gradient buffer of ZeRO 0/1.
void DistributedOptimizer::AllocateParameters(Group& g) const {
  const size_t P = g.spec.params.size();
  const int64_t shard = g.ShardNumel();
  const torch::Device device = P > 0 ? g.spec.params[0].master.device() : torch::Device(torch::kCPU);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  if (sh_.zero_stage == 3) {
    // Only this rank's chunks of the master; the layers' parameters go in ReleaseZero3Layers.
    g.flat_master = torch::zeros({shard}, f32);
    for (auto& b : g.buckets) {
      const Group::Range owned = g.OwnedRange(b);
      for (const auto& piece : g.PiecesIn(b, owned.flat, owned.count)) {
        g.flat_master.narrow(0, b.shard_offset + piece.at, piece.count)
            .copy_(g.spec.params[piece.param].master.reshape({-1}).narrow(0, piece.in_param, piece.count));
      }
    }
    const bool mixed = P > 0 && !g.spec.params[0].compute.is_same(g.spec.params[0].master);
    g.compute_shard = mixed ? g.flat_master.to(g.spec.params[0].compute.scalar_type()) : g.flat_master;
    for (auto& e : g.spec.params) {
      if (mixed) e.master.set_data(torch::empty({0}, e.master.options()));
    }
  } else {
    // The flat master, its parameters as views into it.
    g.flat_master = torch::zeros({g.total}, f32);
    for (size_t p = 0; p < P; ++p) {
      auto& e = g.spec.params[p];
      torch::Tensor view = g.flat_master.narrow(0, g.offset[p], g.numel[p]).view(g.shape[p]);
      view.copy_(e.master);
      const bool same = e.compute.is_same(e.master);
      e.master.set_data(view);
      if (same) e.compute = e.master;
    }
  }
  if (sh_.zero_stage <= 1) {
    g.flat_grad = torch::zeros({g.total}, f32);
    for (size_t p = 0; p < P; ++p) {
      auto& e = g.spec.params[p];
      e.master.mutable_grad() = g.flat_grad.narrow(0, g.offset[p], g.numel[p]).view(g.shape[p]);
    }
  }
  if (sh_.zero_stage >= 1) g.shard_grad = torch::zeros({shard}, f32);
}

// Adam's moments and the weight-decay mask over the elements this rank updates.
void DistributedOptimizer::AllocateOptimizerState(Group& g) const {
  const int64_t shard = g.ShardNumel();
  const torch::Device device = g.spec.params.empty() ? torch::Device(torch::kCPU) : g.spec.params[0].master.device();
  g.update_numel = sh_.zero_stage == 0 ? g.total : shard;
  g.state_device = sh_.offload ? torch::Device(torch::kCPU) : device;
  const auto state_opts = torch::TensorOptions().dtype(torch::kFloat).device(g.state_device);
  if (opt_.type != "sgd") {
    g.exp_avg = torch::zeros({g.update_numel}, state_opts);
    g.exp_avg_sq = torch::zeros({g.update_numel}, state_opts);
  }
  g.decay = torch::zeros({g.update_numel}, state_opts);
  for (auto& b : g.buckets) {
    const Group::Range r = g.UpdateRange(b, sh_.zero_stage);
    for (const auto& piece : g.PiecesIn(b, r.flat, r.count)) {
      if (g.spec.params[piece.param].decay) g.decay.narrow(0, r.state + piece.at, piece.count).fill_(1.0);
    }
  }
}

// Gradient-ready hooks on the tensors backward fills.
void DistributedOptimizer::RegisterGradHooks() {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t pi = 0; pi < groups_[gi]->spec.params.size(); ++pi) {
      const torch::Tensor& compute = groups_[gi]->spec.params[pi].compute;
      auto acc = torch::autograd::impl::grad_accumulator(compute);
      if (!acc) throw std::runtime_error("parameter " + groups_[gi]->spec.params[pi].name + " does not require grad");
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [this, gi, pi](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
            OnGradReady(gi, pi);
            return outputs;
          }));
      accumulators_.push_back(std::move(acc));
    }
  }
}

// Layer parameters exist only between Acquire and Release; the rest stays gathered.
void DistributedOptimizer::ReleaseZero3Layers() {
  for (auto& g : groups_) {
    for (auto& b : g->buckets) {
      if (b.unit < 0) {
        GatherBucket(*g, b, true);
      } else {
        for (size_t p : b.params) g->spec.params[p].compute.set_data(torch::empty({0}, g->compute_shard.options()));
      }
    }
  }
}

DistributedOptimizer::~DistributedOptimizer() {
  for (auto& acc : accumulators_) acc->post_hooks().clear();
}

int64_t DistributedOptimizer::param_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    n += g->flat_master.numel() * 4;
    if (g->compute_shard.defined() && !g->compute_shard.is_same(g->flat_master)) {
      n += g->compute_shard.numel() * g->compute_shard.element_size();
    }
    for (const auto& b : g->buckets) {
      if (b.full.defined()) n += b.full.numel() * b.full.element_size();
    }
  }
  return n;
}

int64_t DistributedOptimizer::state_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    if (g->exp_avg.defined()) n += 2 * g->exp_avg.numel() * 4;
  }
  return n;
}

int64_t DistributedOptimizer::grad_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    if (g->flat_grad.defined()) n += g->flat_grad.numel() * 4;
    if (g->shard_grad.defined()) n += g->shard_grad.numel() * 4;
  }
  return n;
}

}  // namespace dsv3::dist
