// How the model is laid over the ranks (torchtitan's parallelize.py): the tensor-parallel
// split of heads, FFN columns and vocabulary, the expert-parallel split of the routed
// experts, which parameters are replicated where, the ZeRO-sharded optimizer over them, and
// the adapters that let the model call into dist without knowing it (the model never knows
// how it is sharded; dist never knows the model).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "dsv3/common/config.h"
#include "dsv3/dist/communicator.h"
#include "dsv3/dist/distributed_optimizer.h"
#include "dsv3/dist/parallel_groups.h"
#include "dsv3/model/model.h"

namespace dsv3::train {

// Expert parallelism: each rank keeps its block of routed experts, exchanging tokens with
// the others of its expert-parallel group in forward and backward. Call after the full
// weights are in place (init or resume); `compute` may be the master itself.
void ShardExperts(const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute);

// Tensor parallelism: each rank keeps its block of heads, FFN columns and vocabulary rows
// (model::DeepSeekV3Impl::TensorParallelPlan), with activations all-reduced over its
// tensor-parallel group. Call after the full weights are in place, before ShardExperts.
void ShardTensorParallel(const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master,
                         model::DeepSeekV3Impl& compute);

// Pipeline parallelism: this rank keeps its stage's layers (config::StageLayers; the
// embedding on the first stage, the norm, head, loss and MTP on the last, which keeps a copy
// of the embedding when MTP or a tied head uses it). Call after the other splits.
void ShardPipeline(const config::Config& cfg, const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master,
                   model::DeepSeekV3Impl& compute);

// The parameters in replica groups under the ZeRO-sharded optimizer of the config:
//   "dense"       tensor-parallel blocks (every parameter when tp = 1), over the dp group;
//   "replicated"  (tp > 1) weights every tensor-parallel rank holds whole (norms, MLA's
//                 down-projections, routers, experts without ep), over dp x tp, so the
//                 replicas get the same update and can never drift;
//   "expert"      (ep > 1) routed experts, over the ranks holding the same block;
//   "embedding"   (pp > 1, with MTP or a tied head) the embedding's two copies, over the
//                 first and last stages' ranks: their gradients are summed, as one rank's.
// With ZeRO-3 the compute model's decoder layers gather their parameters through it when
// they run. `device` decides whether optimizer offload applies (GPUs only).
std::unique_ptr<dist::DistributedOptimizer> BuildOptimizer(const config::Config& cfg,
                                                           const dist::ParallelGroups& groups,
                                                           model::DeepSeekV3Impl& master,
                                                           model::DeepSeekV3Impl& compute, torch::Device device);

// The master weights as HF tensors, whole on rank 0: experts gathered over the
// expert-parallel group, tensor-parallel blocks over the tensor-parallel group, and the other
// stages' parameters sent to rank 0 (collectives: every rank calls; other ranks get a partial
// list). The tensors may alias the master.
std::vector<std::pair<std::string, torch::Tensor>> GatherHfState(const dist::ParallelGroups& groups,
                                                                 model::DeepSeekV3Impl& master);

}  // namespace dsv3::train
