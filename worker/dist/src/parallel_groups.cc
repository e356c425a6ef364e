#include "dsv3/dist/parallel_groups.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace dsv3::dist {

Communicator& ParallelGroups::Get(config::GroupKind kind) const {
  using config::GroupKind;
  switch (kind) {
    case GroupKind::kTensor: return *tp;
    case GroupKind::kData: return *dp;
    case GroupKind::kPipeline: return *pp;
    case GroupKind::kExpert: return *ep;
    case GroupKind::kExpertReplicas: return *expert_replicas;
    case GroupKind::kReplicated: return *replicated;
    case GroupKind::kModel: return *model;
    case GroupKind::kEmbedding: return *embedding;
  }
  throw std::logic_error("unknown group kind");
}

double ParallelGroups::BlockedSeconds() const {
  double total = world->blocked_seconds();
  for (config::GroupKind kind : config::AllGroupKinds()) total += Get(kind).blocked_seconds();
  return total;
}

std::vector<std::pair<std::string, double>> ParallelGroups::BytesSent() const {
  std::vector<std::pair<std::string, double>> out = {{"world", world->bytes_sent()}};
  for (config::GroupKind kind : config::AllGroupKinds()) {
    out.emplace_back(config::GroupKindName(kind), Get(kind).bytes_sent());
  }
  return out;
}

ParallelGroups MakeParallelGroups(Communicator& world, const config::ParallelGrid& grid) {
  if (grid.world() != world.size()) {
    throw std::runtime_error("/distributed/data_parallel_size: pp " + std::to_string(grid.pp) + " x dp " +
                             std::to_string(grid.dp) + " x tp " + std::to_string(grid.tp) + " = " +
                             std::to_string(grid.world()) + " ranks, but the world has " +
                             std::to_string(world.size()));
  }
  ParallelGroups g;
  g.grid = grid;
  g.coord = grid.Coord(world.rank());
  g.world = &world;
  for (config::GroupKind kind : config::AllGroupKinds()) {
    const std::vector<int64_t> members64 = grid.Members(kind, world.rank());
    std::unique_ptr<Communicator> comm;
    if (members64.size() == 1) {
      comm = MakeSelfCommunicator();
    } else {
      const std::vector<int> members(members64.begin(), members64.end());
      comm = world.Subgroup(members, grid.Tag(kind, world.rank()));
    }
    switch (kind) {
      case config::GroupKind::kTensor: g.tp = std::move(comm); break;
      case config::GroupKind::kData: g.dp = std::move(comm); break;
      case config::GroupKind::kPipeline: g.pp = std::move(comm); break;
      case config::GroupKind::kExpert: g.ep = std::move(comm); break;
      case config::GroupKind::kExpertReplicas: g.expert_replicas = std::move(comm); break;
      case config::GroupKind::kReplicated: g.replicated = std::move(comm); break;
      case config::GroupKind::kModel: g.model = std::move(comm); break;
      case config::GroupKind::kEmbedding: g.embedding = std::move(comm); break;
    }
  }
  return g;
}

}  // namespace dsv3::dist
