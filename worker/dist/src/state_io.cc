#include "optimizer_layout.h"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3::dist {
namespace {

using nlohmann::json;

// A run of consecutive whole-parameter elements and where it sits on this side (a state
// offset when loading, a saved offset when saving).
struct Run {
  int64_t full, count, at;
};

// The runs of whole-parameter elements that elements [lo, lo + count) of a shard of
// `shape` cover (`at` counts from lo). A block of dim 0 is one run; a block of a later dim
// is one run per row of the dims before it.
std::vector<Run> FullRuns(const ParamEntry& e, const std::vector<int64_t>& shape, int64_t lo, int64_t count) {
  if (e.full_shape.empty()) return {{lo, count, 0}};
  const size_t d = static_cast<size_t>(e.shard_dim);
  int64_t rest = 1;
  for (size_t i = d + 1; i < shape.size(); ++i) rest *= shape[i];
  const int64_t local_block = shape[d] * rest, full_block = e.full_shape[d] * rest, base = e.shard_start * rest;
  std::vector<Run> out;
  for (int64_t j = lo; j < lo + count;) {
    const int64_t outer = j / local_block, within = j % local_block;
    const int64_t n = std::min(local_block - within, lo + count - j);
    out.push_back({outer * full_block + base + within, n, j - lo});
    j += n;
  }
  return out;
}

// Saved pieces: [name, full, count, at] for one run, or [name, full, count, at, repeat,
// full_stride] for `repeat` runs of `count` elements, `full_stride` apart in the parameter
// and consecutive in the saved state (a row-parallel block saves one run per row).
void AppendPieces(json& pieces, const std::string& name, const std::vector<Run>& runs, int64_t saved_at) {
  for (size_t i = 0; i < runs.size();) {
    size_t k = i + 1;
    const int64_t stride = k < runs.size() ? runs[k].full - runs[i].full : 0;
    while (k < runs.size() && runs[k].count == runs[i].count && runs[k].full - runs[k - 1].full == stride &&
           runs[k].at == runs[k - 1].at + runs[i].count) {
      ++k;
    }
    if (k - i > 1) {
      pieces.push_back({name, runs[i].full, runs[i].count, saved_at + runs[i].at, static_cast<int64_t>(k - i), stride});
    } else {
      pieces.push_back({name, runs[i].full, runs[i].count, saved_at + runs[i].at});
      k = i + 1;
    }
    i = k;
  }
}

std::vector<Run> ExpandPiece(const json& piece) {
  const int64_t full = piece[1].get<int64_t>(), count = piece[2].get<int64_t>(), at = piece[3].get<int64_t>();
  if (piece.size() < 6) return {{full, count, at}};
  const int64_t repeat = piece[4].get<int64_t>(), stride = piece[5].get<int64_t>();
  std::vector<Run> out;
  for (int64_t i = 0; i < repeat; ++i) out.push_back({full + i * stride, count, at + i * count});
  return out;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> DistributedOptimizer::StateTensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (opt_.type == "sgd") return out;
  for (const auto& g : groups_) {
    std::vector<torch::Tensor> m, v;
    for (const auto& b : g->buckets) {
      const Group::Range owned = g->OwnedRange(b);
      const int64_t at = sh_.zero_stage == 0 ? owned.flat : owned.state;
      m.push_back(g->exp_avg.narrow(0, at, owned.count));
      v.push_back(g->exp_avg_sq.narrow(0, at, owned.count));
    }
    out.emplace_back(g->spec.name + ".exp_avg", torch::cat(m).to(torch::kCPU));
    out.emplace_back(g->spec.name + ".exp_avg_sq", torch::cat(v).to(torch::kCPU));
  }
  return out;
}

std::map<std::string, std::string> DistributedOptimizer::StateMetadata() const {
  json meta = {{"optimizer", opt_.type}, {"step", step_}, {"zero_stage", sh_.zero_stage}, {"groups", json::object()}};
  for (const auto& g : groups_) {
    json pieces = json::array();
    int64_t saved = 0;
    for (const auto& b : g->buckets) {
      const Group::Range owned = g->OwnedRange(b);
      for (const auto& piece : g->PiecesIn(b, owned.flat, owned.count)) {
        const ParamEntry& e = g->spec.params[piece.param];
        AppendPieces(pieces, e.name, FullRuns(e, g->shape[piece.param], piece.in_param, piece.count),
                     saved + piece.at);
      }
      saved += owned.count;
    }
    meta["groups"][g->spec.name] = {{"pieces", pieces}, {"numel", saved}};
  }
  return {{"dsv3_optimizer", meta.dump()}};
}

void DistributedOptimizer::LoadState(int ranks, const ShardReader& read_rank) {
  torch::NoGradGuard no_grad;
  // What this rank needs: every piece of its update range, by parameter name.
  struct Need {
    Group* group;
    int64_t full_lo, count, state;  // full-parameter element range -> state offset
  };
  std::map<std::string, std::vector<Need>> needs;  // per parameter, sorted by full_lo
  int64_t needed = 0;
  for (auto& g : groups_) {
    for (const auto& b : g->buckets) {
      const Group::Range r = g->UpdateRange(b, sh_.zero_stage);
      for (const auto& piece : g->PiecesIn(b, r.flat, r.count)) {
        const ParamEntry& e = g->spec.params[piece.param];
        for (const Run& run : FullRuns(e, g->shape[piece.param], piece.in_param, piece.count)) {
          needs[e.name].push_back({g.get(), run.full, run.count, r.state + piece.at + run.at});
        }
        needed += piece.count;
      }
    }
  }
  for (auto& [name, list] : needs) {
    std::sort(list.begin(), list.end(), [](const Need& a, const Need& b) { return a.full_lo < b.full_lo; });
  }
  int64_t found = 0, step = 0;
  std::string type;
  for (int r = 0; r < ranks; ++r) {
    auto [tensors, metadata] = read_rank(r);
    const auto it = metadata.find("dsv3_optimizer");
    if (it == metadata.end()) throw std::runtime_error("optimizer shard of rank " + std::to_string(r) + " has no layout");
    const json meta = json::parse(it->second);
    type = meta.at("optimizer").get<std::string>();
    if (type != opt_.type) {
      throw std::runtime_error("/training/optimizer: the checkpoint's optimizer state is for \"" + type +
                               "\", the config asks for \"" + opt_.type + "\"");
    }
    step = std::max(step, meta.at("step").get<int64_t>());
    if (opt_.type == "sgd") continue;
    for (const auto& [group_name, gm] : meta.at("groups").items()) {
      const torch::Tensor m = tensors.at(group_name + ".exp_avg"), v = tensors.at(group_name + ".exp_avg_sq");
      for (const auto& piece : gm.at("pieces")) {
        const auto need = needs.find(piece[0].get<std::string>());
        if (need == needs.end()) continue;
        const std::vector<Need>& list = need->second;
        for (const Run& run : ExpandPiece(piece)) {
          const int64_t lo = run.full, count = run.count, at = run.at;
          // The first needed run that may overlap [lo, lo + count).
          auto it = std::upper_bound(list.begin(), list.end(), lo,
                                     [](int64_t x, const Need& n) { return x < n.full_lo; });
          if (it != list.begin()) --it;
          for (; it != list.end() && it->full_lo < lo + count; ++it) {
            const Need& n = *it;
            const int64_t a = std::max(lo, n.full_lo), z = std::min(lo + count, n.full_lo + n.count);
            if (a >= z) continue;
            n.group->exp_avg.narrow(0, n.state + (a - n.full_lo), z - a).copy_(m.narrow(0, at + (a - lo), z - a));
            n.group->exp_avg_sq.narrow(0, n.state + (a - n.full_lo), z - a).copy_(v.narrow(0, at + (a - lo), z - a));
            found += z - a;
          }
        }
      }
    }
  }
  if (opt_.type != "sgd" && found != needed) {
    throw std::runtime_error("the checkpoint's optimizer state covers " + std::to_string(found) + " of the " +
                             std::to_string(needed) + " parameter elements this rank updates (a different model?)");
  }
  step_ = step;
}

}  // namespace dsv3::dist
