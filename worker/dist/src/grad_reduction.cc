#include "optimizer_layout.h"

#include <algorithm>
#include <cmath>

namespace dsv3::dist {

void DistributedOptimizer::BeginMicroStep(bool last) {
  last_micro_ = last;
  for (auto& g : groups_) {
    g->reducing = last || sh_.zero_stage >= 2;
    g->next_launch = 0;
    std::fill(g->seen.begin(), g->seen.end(), 0);
    for (auto& b : g->buckets) {
      b.pending = b.params.size();
      b.launched = false;
      b.work.reset();
    }
  }
}

void DistributedOptimizer::OnGradReady(size_t gi, size_t pi) {
  torch::NoGradGuard no_grad;
  Group& g = *groups_[gi];
  ParamEntry& e = g.spec.params[pi];
  if (g.seen[pi]) return;
  g.seen[pi] = 1;
  const bool mixed = !e.compute.is_same(e.master);
  if (mixed && sh_.zero_stage <= 1) {
    // Fold the low-precision gradient into the fp32 master gradient (a view of flat_grad).
    torch::Tensor& cg = e.compute.mutable_grad();
    if (cg.defined()) {
      e.master.mutable_grad().add_(cg.to(torch::kFloat));
      cg = torch::Tensor();
    }
  }
  if (!g.reducing) return;
  Bucket& b = g.buckets[g.bucket_of[pi]];
  if (--b.pending == 0 && sh_.overlap_grad_reduce) LaunchReady(g);
}

void DistributedOptimizer::LaunchReady(Group& g) {
  while (g.next_launch < g.buckets.size() && g.buckets[g.next_launch].pending == 0) Launch(g, g.next_launch++);
}

void DistributedOptimizer::Launch(Group& g, size_t bi) {
  Bucket& b = g.buckets[bi];
  if (b.launched) return;
  b.launched = true;
  if (g.size() == 1) return;  // nothing to reduce; FinishBackward still averages
  if (sh_.zero_stage == 0) {
    b.work = g.spec.comm->AllReduce(g.flat_grad.narrow(0, b.start, b.numel));
  } else if (sh_.zero_stage == 1) {
    b.work = g.spec.comm->ReduceScatter(g.shard_grad.narrow(0, b.shard_offset, b.chunk),
                                        g.flat_grad.narrow(0, b.start, b.numel));
  } else {
    b.staging = StageBucket(g, b);
    b.received = torch::empty({b.chunk}, b.staging.options());
    b.work = g.spec.comm->ReduceScatter(b.received, b.staging);
  }
}

torch::Tensor DistributedOptimizer::StageBucket(Group& g, Bucket& b) {
  // Stage 2: the bucket's gradients copied out of the parameters, which then drop theirs.
  torch::Tensor staging = torch::zeros({b.numel}, g.flat_master.options());
  for (size_t p : b.params) {
    ParamEntry& e = g.spec.params[p];
    torch::Tensor& grad = e.compute.mutable_grad();
    if (grad.defined()) {
      staging.narrow(0, g.offset[p] - b.start, g.numel[p]).copy_(grad.reshape({-1}));
      grad = torch::Tensor();
    }
  }
  return staging;
}

void DistributedOptimizer::FinishBackward() {
  torch::NoGradGuard no_grad;
  for (auto& gp : groups_) {
    Group& g = *gp;
    if (!g.reducing) continue;
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) Launch(g, bi);
    g.next_launch = g.buckets.size();
    const double scale = 1.0 / g.spec.grad_divisor;
    for (auto& b : g.buckets) {
      if (b.work) b.work->Wait();
      if (sh_.zero_stage == 0) {
        g.flat_grad.narrow(0, b.start, b.numel).mul_(scale);
      } else if (sh_.zero_stage == 1) {
        torch::Tensor shard = g.shard_grad.narrow(0, b.shard_offset, b.chunk);
        if (g.size() == 1) shard.copy_(g.flat_grad.narrow(0, b.start, b.numel));
        shard.mul_(scale);
      } else {
        if (g.size() == 1) b.received = StageBucket(g, b);
        g.shard_grad.narrow(0, b.shard_offset, b.chunk).add_(b.received, scale);
        b.staging = b.received = torch::Tensor();
      }
      b.work.reset();
    }
  }
}

double DistributedOptimizer::GradNorm() {
  torch::NoGradGuard no_grad;
  // Per-chunk norms (no copy of the gradients), squared and summed in double.
  std::vector<torch::Tensor> norms;
  for (auto& g : groups_) {
    for (auto& b : g->buckets) norms.push_back(g->OwnedGrad(b, sh_.zero_stage).norm());
  }
  if (norms.empty()) return 0;
  torch::Tensor sq = torch::stack(norms).to(torch::kDouble).square().sum().reshape({1});
  if (world_->size() > 1) world_->AllReduce(sq)->Wait();
  return std::sqrt(sq.item<double>());
}

void DistributedOptimizer::ScaleGrads(double factor) {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) (sh_.zero_stage == 0 ? g->flat_grad : g->shard_grad).mul_(factor);
}

void DistributedOptimizer::ZeroGrad() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    if (g->flat_grad.defined()) g->flat_grad.zero_();
    if (g->shard_grad.defined()) g->shard_grad.zero_();
    for (auto& e : g->spec.params) {
      if (!e.compute.is_same(e.master) || sh_.zero_stage >= 2) e.compute.mutable_grad() = torch::Tensor();
    }
  }
}

}  // namespace dsv3::dist
