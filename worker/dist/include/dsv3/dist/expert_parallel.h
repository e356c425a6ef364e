// Expert parallelism over data-parallel ranks: the world's ranks form groups of
// `expert_parallel_size` consecutive ranks; each member holds num_experts / ep experts and
// tokens travel to them by all-to-all inside the group. The ranks holding the same experts
// (one per group) form the expert data-parallel group that reduces those experts' gradients.
#pragma once

#include <memory>

#include "dsv3/dist/communicator.h"

namespace dsv3::dist {

struct ExpertParallelGroups {
  std::unique_ptr<Communicator> ep;        // the ranks that exchange tokens
  std::unique_ptr<Communicator> replicas;  // the ranks holding the same experts
};

// Collective over `world` (every rank calls). ep must divide world->size().
ExpertParallelGroups MakeExpertParallelGroups(Communicator& world, int ep);

}  // namespace dsv3::dist
