// The communicators of one rank's place in the parallel grid (config::ParallelGrid:
// pp x dp x tp, ep carved out of dp). Built in one place, in the same order on every rank,
// from the same grid the config tools print. A group of one rank is a self communicator.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dsv3/common/parallel_layout.h"
#include "dsv3/dist/communicator.h"

namespace dsv3::dist {

struct ParallelGroups {
  config::ParallelGrid grid;
  config::GridCoord coord;
  Communicator* world = nullptr;
  std::unique_ptr<Communicator> tp;               // same stage and data-parallel index
  std::unique_ptr<Communicator> dp;               // replicas of this rank's tensor-parallel shards
  std::unique_ptr<Communicator> pp;               // the stages of one model replica
  std::unique_ptr<Communicator> ep;               // exchange tokens with these ranks
  std::unique_ptr<Communicator> expert_replicas;  // hold the same routed experts
  std::unique_ptr<Communicator> replicated;       // hold the same weights not split by tp
  std::unique_ptr<Communicator> model;            // one whole model replica (pp x tp)
  std::unique_ptr<Communicator> embedding;        // the first and last stages' embedding copies

  Communicator& Get(config::GroupKind kind) const;
  // Seconds blocked in communication over every group (each counted once).
  double BlockedSeconds() const;
  // Bytes sent so far per group, by name ("world", "tp", "dp", ...; see Communicator::bytes_sent).
  std::vector<std::pair<std::string, double>> BytesSent() const;
};

// Collective over `world` (every rank calls). world->size() must equal grid.world().
ParallelGroups MakeParallelGroups(Communicator& world, const config::ParallelGrid& grid);

}  // namespace dsv3::dist
