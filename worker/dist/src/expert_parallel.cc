#include <stdexcept>

#include "dsv3/dist/expert_parallel.h"

namespace dsv3::dist {

ExpertParallelGroups MakeExpertParallelGroups(Communicator& world, int ep) {
  const int n = world.size(), r = world.rank();
  if (ep < 1 || n % ep != 0) {
    throw std::runtime_error("/distributed/expert_parallel_size: " + std::to_string(ep) +
                             " does not divide the data-parallel size " + std::to_string(n));
  }
  ExpertParallelGroups g;
  std::vector<int> same_group, same_experts;
  for (int i = (r / ep) * ep; i < (r / ep + 1) * ep; ++i) same_group.push_back(i);
  for (int i = r % ep; i < n; i += ep) same_experts.push_back(i);
  g.ep = world.Subgroup(same_group, "ep" + std::to_string(r / ep));
  g.replicas = world.Subgroup(same_experts, "experts" + std::to_string(r % ep));
  return g;
}

}  // namespace dsv3::dist
