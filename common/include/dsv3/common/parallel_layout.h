// How a job's ranks form a grid of pipeline x data x tensor parallelism, with expert
// parallelism carved out of the data-parallel dimension (Megatron-Core's order, tp innermost
// so that a tensor-parallel group's ranks are neighbours and share a host):
//
//   rank = (pp_index * dp + dp_index) * tp + tp_index
//   ep_index = dp_index % ep   (ep consecutive data-parallel ranks exchange tokens)
//
// Every process group of a job is a set of ranks that differ in some of these coordinates
// only; this header names each one and lists its members, so the worker (which builds the
// communicators in dist/parallel_groups) and the config tools (which print the grid) agree.
// LibTorch-free: the CLI and the server include it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::config {

struct GridCoord {
  int64_t pp = 0, dp = 0, tp = 0;
  int64_t ep = 0;  // the rank's position inside its expert-parallel group (dp % ep)
};

// The groups a rank belongs to, in the order every rank creates them (creation is collective
// within each group, and groups of one kind are disjoint, so this order cannot deadlock).
enum class GroupKind {
  kTensor,          // same pp, dp: the tensor-parallel group (activations all-reduced)
  kData,            // same pp, tp: replicas of a tensor-parallel shard (gradients averaged)
  kPipeline,        // same dp, tp: the stages one micro-batch flows through
  kExpert,          // same pp, tp, dp / ep: the ranks that exchange tokens (all-to-all)
  kExpertReplicas,  // same pp, ep index: replicas of one block of experts (all tp ranks too)
  kReplicated,      // same pp: replicas of a weight no tensor-parallel rank shards (dp x tp)
  kModel,           // same dp: one whole model replica (pp x tp), for losses and flags
  kEmbedding,       // same tp, first or last stage: the two copies of the embedding (MTP and
                    // tied heads use it on the last stage), reduced together
};
const std::vector<GroupKind>& AllGroupKinds();
std::string GroupKindName(GroupKind kind);  // "tp", "dp", "pp", "ep", "experts", "replicated", "model"

struct ParallelGrid {
  int64_t pp = 1, dp = 1, tp = 1, ep = 1;

  // From a validated config (data_parallel_size resolved).
  static ParallelGrid FromConfig(const Config& c);
  int64_t world() const { return pp * dp * tp; }
  GridCoord Coord(int64_t rank) const;
  int64_t RankOf(int64_t pp_index, int64_t dp_index, int64_t tp_index) const;
  // The members of `rank`'s group of `kind`, ascending; a tag unique to that group.
  std::vector<int64_t> Members(GroupKind kind, int64_t rank) const;
  std::string Tag(GroupKind kind, int64_t rank) const;
};

// Decoder layers per virtual pipeline stage (pp x virtual_pipeline_stages of them; virtual
// stage k runs on stage k % pp, as its (k / pp)-th model chunk): distributed.pipeline_layout
// when given, else an even split with the first num_layers % (pp x v) taking one more. The
// embedding is on the first; the final norm, head, loss and MTP modules are on the last.
std::vector<int64_t> StageLayers(const Config& c);
int64_t VirtualStages(const Config& c);  // pp x virtual_pipeline_stages
// The pipeline stage (0 .. pp - 1) that runs decoder layer `layer` under StageLayers'
// split `stage_layers`; the last stage for layers past the end (the MTP modules).
int64_t StageOfLayer(const std::vector<int64_t>& stage_layers, int64_t pp, int64_t layer);

// What rank `rank` holds of the model: its stage's layers, its heads and vocabulary rows,
// its routed experts. One line per rank, for `config show` and `submit --dry-run`.
std::vector<std::string> DescribeGrid(const Config& c);

}  // namespace dsv3::config
