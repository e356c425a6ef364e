#include "optimizer_layout.h"

#include "dsv3/dist/optimizer_update.h"

namespace dsv3::dist {

void DistributedOptimizer::Step(double lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  ++step_;
  for (auto& gp : groups_) {
    Group& g = *gp;
    std::vector<WorkHandle> gathers(g.buckets.size());
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) {
      Bucket& b = g.buckets[bi];
      const Group::Range r = g.UpdateRange(b, sh_.zero_stage);
      torch::Tensor master = g.MasterChunk(b, sh_.zero_stage);
      torch::Tensor p = master, grad = g.GradOf(b, sh_.zero_stage);
      if (g.state_device != master.device()) {  // offload: the update runs in host memory
        p = master.to(g.state_device);
        grad = grad.to(g.state_device);
      }
      const auto state = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, r.state, r.count) : t; };
      ApplyUpdate(opt_, lr, step_, p, grad, g.decay.narrow(0, r.state, r.count), state(g.exp_avg), state(g.exp_avg_sq),
                  grad_scale);
      if (!p.is_same(master)) master.copy_(p);
      if (sh_.zero_stage == 3) {
        // Layers gather their new weights when they next run; the always-gathered buckets
        // are refreshed now.
        if (!g.compute_shard.is_same(g.flat_master)) g.compute_shard.narrow(0, b.shard_offset, b.chunk).copy_(master);
        if (b.unit < 0) GatherBucket(g, b, !sh_.overlap_param_gather);
        gathers[bi] = b.work;
        b.work.reset();
      } else if (sh_.zero_stage >= 1 && g.size() > 1) {
        // Every rank's updated chunk back into everyone's flat master; the next bucket's
        // update overlaps this gather unless overlap_param_gather is off.
        const torch::Tensor mine = master.clone();
        gathers[bi] = g.spec.comm->AllGather(g.flat_master.narrow(0, b.start, b.numel), mine);
        if (!sh_.overlap_param_gather) gathers[bi]->Wait();
      }
    }
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) {
      if (gathers[bi]) gathers[bi]->Wait();
      if (sh_.zero_stage == 3) continue;
      for (size_t p : g.buckets[bi].params) {
        ParamEntry& e = g.spec.params[p];
        if (!e.compute.is_same(e.master)) e.compute.copy_(e.master);
      }
    }
  }
  ZeroGrad();
}

}  // namespace dsv3::dist
