#include "optimizer_layout.h"

#include <functional>

namespace dsv3::dist {

void DistributedOptimizer::GatherBucket(Group& g, Bucket& b, bool wait) {
  // The bucket's parameters (compute dtype) from every rank's chunk; the parameters become
  // views into it.
  if (!b.full.defined()) {
    b.full = torch::empty({b.numel}, g.compute_shard.options());
    for (size_t p : b.params) {
      g.spec.params[p].compute.set_data(b.full.narrow(0, g.offset[p] - b.start, g.numel[p]).view(g.shape[p]));
    }
  }
  b.work = g.spec.comm->AllGather(b.full, g.compute_shard.narrow(0, b.shard_offset, b.chunk));
  if (wait) {
    b.work->Wait();
    b.work.reset();
  }
}

void DistributedOptimizer::Acquire(int unit) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<Group*, Bucket*>> gathering;
  for (auto& g : groups_) {
    for (auto& b : g->buckets) {
      if (b.unit != unit) continue;
      GatherBucket(*g, b, false);
      gathering.push_back({g.get(), &b});
    }
  }
  for (auto& [g, b] : gathering) {
    b->work->Wait();
    b->work.reset();
  }
}

void DistributedOptimizer::Release(int unit) {
  for (auto& g : groups_) {
    for (auto& b : g->buckets) {
      if (b.unit != unit || !b.full.defined()) continue;
      for (size_t p : b.params) g->spec.params[p].compute.set_data(torch::empty({0}, b.full.options()));
      b.full = torch::Tensor();
    }
  }
}

void DistributedOptimizer::WithFullMaster(const std::function<void()>& fn) {
  if (sh_.zero_stage != 3) return fn();
  torch::NoGradGuard no_grad;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> restore;  // parameter, its data before
  std::vector<torch::Tensor> fulls;
  for (auto& g : groups_) {
    torch::Tensor full = torch::empty({g->total}, g->flat_master.options());
    std::vector<WorkHandle> works;
    for (auto& b : g->buckets) {
      works.push_back(g->spec.comm->AllGather(full.narrow(0, b.start, b.numel),
                                              g->flat_master.narrow(0, b.shard_offset, b.chunk)));
    }
    for (auto& w : works) w->Wait();
    for (size_t p = 0; p < g->spec.params.size(); ++p) {
      torch::Tensor& master = g->spec.params[p].master;
      restore.push_back({master, master.data()});
      master.set_data(full.narrow(0, g->offset[p], g->numel[p]).view(g->shape[p]));
    }
    fulls.push_back(full);
  }
  std::exception_ptr error;
  try {
    fn();
  } catch (...) {
    error = std::current_exception();
  }
  for (auto& [param, data] : restore) param.set_data(data);
  if (error) std::rethrow_exception(error);
}

}  // namespace dsv3::dist
