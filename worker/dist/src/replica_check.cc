// Replica checks: every rank of a parameter group's communicator must hold the same master
// weights (they took the same reduced gradients and the same update). A drift there (a
// replicated weight updated from a different gradient on one tensor-parallel rank, a known
// bug class of other trainers) is silent in training; a fingerprint per group finds it.
#include "optimizer_layout.h"

namespace dsv3::dist {

int64_t DistributedOptimizer::replica_groups() const {
  int64_t n = 0;
  for (const auto& g : groups_) n += g->size() > 1 ? 1 : 0;
  return n;
}

std::vector<std::string> DistributedOptimizer::DivergedReplicaGroups() {
  torch::NoGradGuard no_grad;
  std::vector<std::string> out;
  if (sh_.zero_stage == 3) return out;
  constexpr int64_t kBlock = 4096;
  for (auto& g : groups_) {
    if (g->size() == 1) continue;
    // Sum, sum of squares, and the block sums weighted by position, in double: equal bits
    // give equal fingerprints, and any flipped element moves at least one of them.
    const torch::Tensor flat = g->flat_master;
    const int64_t n = flat.numel(), padded = (n + kBlock - 1) / kBlock * kBlock;
    const torch::Tensor blocks =
        torch::constant_pad_nd(flat, {0, padded - n}).view({-1, kBlock}).sum(1, false, torch::kDouble);
    const torch::Tensor positions = torch::arange(1, blocks.numel() + 1, blocks.options());
    torch::Tensor print = torch::stack({blocks.sum(), flat.square().sum(torch::kDouble), (blocks * positions).sum()});
    torch::Tensor high = print.clone(), low = print.clone();
    g->spec.comm->AllReduce(high, ReduceOp::kMax)->Wait();
    g->spec.comm->AllReduce(low, ReduceOp::kMin)->Wait();
    if (!torch::equal(high, low)) out.push_back(g->spec.name);
  }
  return out;
}

}  // namespace dsv3::dist
