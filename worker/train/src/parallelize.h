// How the model is laid over the ranks (torchtitan's parallelize.py): which parameters are
// replicated where, the ZeRO-sharded optimizer over them, the expert-parallel split of the
// routed experts, and the adapters that let the model call into dist without knowing it
// (the model never knows how it is sharded; dist never knows the model).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "dsv3/common/config.h"
#include "dsv3/dist/communicator.h"
#include "dsv3/dist/distributed_optimizer.h"
#include "dsv3/model/model.h"

namespace dsv3::train {

// Where the parameters live: dense parameters are replicated over `world` (the data-parallel
// ranks); with expert parallelism (ep > 1) the routed experts are split over `ep_group` and
// replicated over `expert_replicas`.
struct ParallelLayout {
  dist::Communicator* world = nullptr;
  dist::Communicator* ep_group = nullptr;         // null when ep == 1
  dist::Communicator* expert_replicas = nullptr;  // null when ep == 1
  int dp = 1, ep = 1;
};

// Expert parallelism: each rank keeps its block of routed experts, exchanging tokens with
// the others of `layout.ep_group` in forward and backward. Call after the full weights are
// in place (init or resume); `compute` may be the master itself.
void ShardExperts(const ParallelLayout& layout, model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute);

// The parameters in replica groups (dense, expert) under the ZeRO-sharded optimizer of the
// config; with ZeRO-3 the compute model's decoder layers gather their parameters through it
// when they run. `device` decides whether optimizer offload applies (GPUs only).
std::unique_ptr<dist::DistributedOptimizer> BuildOptimizer(const config::Config& cfg, const ParallelLayout& layout,
                                                           model::DeepSeekV3Impl& master,
                                                           model::DeepSeekV3Impl& compute, torch::Device device);

// The master weights as HF tensors with every expert (gathered over the expert-parallel
// group: a collective there, every rank calls). The tensors may alias the master.
std::vector<std::pair<std::string, torch::Tensor>> GatherHfState(const ParallelLayout& layout,
                                                                 model::DeepSeekV3Impl& master);

}  // namespace dsv3::train
