#include "dsv3/common/parallel_layout.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace dsv3::config {

const std::vector<GroupKind>& AllGroupKinds() {
  static const std::vector<GroupKind> kinds = {GroupKind::kTensor,          GroupKind::kData,
                                               GroupKind::kPipeline,        GroupKind::kExpert,
                                               GroupKind::kExpertReplicas,  GroupKind::kReplicated,
                                               GroupKind::kModel,           GroupKind::kEmbedding};
  return kinds;
}

std::string GroupKindName(GroupKind kind) {
  switch (kind) {
    case GroupKind::kTensor: return "tp";
    case GroupKind::kData: return "dp";
    case GroupKind::kPipeline: return "pp";
    case GroupKind::kExpert: return "ep";
    case GroupKind::kExpertReplicas: return "experts";
    case GroupKind::kReplicated: return "replicated";
    case GroupKind::kModel: return "model";
    case GroupKind::kEmbedding: return "embedding";
  }
  return "?";
}

ParallelGrid ParallelGrid::FromConfig(const Config& c) {
  const DistributedConfig& d = c.distributed;
  ParallelGrid g;
  g.pp = d.pipeline_parallel_size;
  g.tp = d.tensor_parallel_size;
  g.dp = d.data_parallel_size;
  g.ep = d.expert_parallel_size;
  if (g.pp < 1 || g.tp < 1 || g.dp < 1 || g.ep < 1 || g.dp % g.ep != 0) {
    throw std::invalid_argument("the parallel layout of an unvalidated config: pp " + std::to_string(g.pp) + ", dp " +
                                std::to_string(g.dp) + ", tp " + std::to_string(g.tp) + ", ep " +
                                std::to_string(g.ep) + " (load it with config::LoadConfigFile)");
  }
  return g;
}

GridCoord ParallelGrid::Coord(int64_t rank) const {
  GridCoord c;
  c.tp = rank % tp;
  c.dp = (rank / tp) % dp;
  c.pp = rank / (tp * dp);
  c.ep = c.dp % ep;
  return c;
}

int64_t ParallelGrid::RankOf(int64_t pp_index, int64_t dp_index, int64_t tp_index) const {
  return (pp_index * dp + dp_index) * tp + tp_index;
}

std::vector<int64_t> ParallelGrid::Members(GroupKind kind, int64_t rank) const {
  const GridCoord me = Coord(rank);
  std::vector<int64_t> out;
  // Ranks in ascending order: pp outermost, then dp, then tp.
  for (int64_t p = 0; p < pp; ++p) {
    for (int64_t d = 0; d < dp; ++d) {
      for (int64_t t = 0; t < tp; ++t) {
        bool member = false;
        switch (kind) {
          case GroupKind::kTensor: member = p == me.pp && d == me.dp; break;
          case GroupKind::kData: member = p == me.pp && t == me.tp; break;
          case GroupKind::kPipeline: member = d == me.dp && t == me.tp; break;
          case GroupKind::kExpert: member = p == me.pp && t == me.tp && d / ep == me.dp / ep; break;
          case GroupKind::kExpertReplicas: member = p == me.pp && d % ep == me.ep; break;
          case GroupKind::kReplicated: member = p == me.pp; break;
          case GroupKind::kModel: member = d == me.dp; break;
          case GroupKind::kEmbedding: {
            // Only first- and last-stage ranks have one; a middle stage's rank is alone.
            const bool ends = me.pp == 0 || me.pp == pp - 1;
            member = ends ? t == me.tp && (p == 0 || p == pp - 1) : p == me.pp && d == me.dp && t == me.tp;
            break;
          }
        }
        if (member) out.push_back(RankOf(p, d, t));
      }
    }
  }
  return out;
}

std::string ParallelGrid::Tag(GroupKind kind, int64_t rank) const {
  // The group's first member names it: unique among the groups of one kind.
  return GroupKindName(kind) + std::to_string(Members(kind, rank).front());
}

int64_t VirtualStages(const Config& c) {
  return std::max<int64_t>(1, c.distributed.pipeline_parallel_size) *
         std::max<int64_t>(1, c.distributed.virtual_pipeline_stages);
}

int64_t StageOfLayer(const std::vector<int64_t>& stage_layers, int64_t pp, int64_t layer) {
  int64_t end = 0;
  for (size_t k = 0; k < stage_layers.size(); ++k) {
    end += stage_layers[k];
    if (layer < end) return static_cast<int64_t>(k) % pp;
  }
  return pp - 1;
}

std::vector<int64_t> StageLayers(const Config& c) {
  const int64_t n = VirtualStages(c), L = c.model.num_layers;
  if (!c.distributed.pipeline_layout.empty()) return c.distributed.pipeline_layout;
  std::vector<int64_t> out(static_cast<size_t>(n), L / n);
  for (int64_t s = 0; s < L % n; ++s) ++out[static_cast<size_t>(s)];
  return out;
}

std::vector<std::string> DescribeGrid(const Config& c) {
  const ParallelGrid g = ParallelGrid::FromConfig(c);
  const ModelConfig& m = c.model;
  const int64_t heads = m.mla.num_heads / g.tp, vocab = m.vocab_size / g.tp, experts = m.moe.num_experts / g.ep;
  const std::vector<int64_t> stage_layers = StageLayers(c);
  std::vector<std::string> out;
  for (int64_t r = 0; r < g.world(); ++r) {
    const GridCoord at = g.Coord(r);
    std::ostringstream line;
    line << "rank " << r << ": pp " << at.pp << " dp " << at.dp << " tp " << at.tp << " ep " << at.ep << " | ";
    if (at.pp == 0) line << "embedding, ";
    line << "layers ";
    int64_t first = 0;
    bool listed = false;
    for (size_t k = 0; k < stage_layers.size(); ++k) {  // this stage's model chunks
      if (static_cast<int64_t>(k) % g.pp == at.pp) {
        line << (listed ? ", " : "") << first << "-" << first + stage_layers[k] - 1;
        listed = true;
      }
      first += stage_layers[k];
    }
    if (g.pp > 1 && at.pp == g.pp - 1) line << ", norm, head" << (c.training.use_mtp ? ", MTP" : "");
    if (g.tp > 1) {
      line << ", heads " << at.tp * heads << "-" << (at.tp + 1) * heads - 1 << " of " << m.mla.num_heads
           << ", vocabulary rows " << at.tp * vocab << "-" << (at.tp + 1) * vocab - 1;
    }
    if (g.ep > 1) line << ", routed experts " << at.ep * experts << "-" << (at.ep + 1) * experts - 1;
    out.push_back(line.str());
  }
  return out;
}

}  // namespace dsv3::config
