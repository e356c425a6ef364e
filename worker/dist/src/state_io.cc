#include "optimizer_layout.h"

#include <map>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3::dist {

using nlohmann::json;

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
        pieces.push_back({e.name, e.full_offset + piece.in_param, piece.count, saved + piece.at});
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
  std::map<std::string, std::vector<Need>> needs;
  int64_t needed = 0;
  for (auto& g : groups_) {
    for (const auto& b : g->buckets) {
      const Group::Range r = g->UpdateRange(b, sh_.zero_stage);
      for (const auto& piece : g->PiecesIn(b, r.flat, r.count)) {
        const ParamEntry& e = g->spec.params[piece.param];
        needs[e.name].push_back({g.get(), e.full_offset + piece.in_param, piece.count, r.state + piece.at});
        needed += piece.count;
      }
    }
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
        const std::string name = piece[0].get<std::string>();
        const int64_t lo = piece[1].get<int64_t>(), count = piece[2].get<int64_t>(), at = piece[3].get<int64_t>();
        const auto need = needs.find(name);
        if (need == needs.end()) continue;
        for (const Need& n : need->second) {
          const int64_t a = std::max(lo, n.full_lo), z = std::min(lo + count, n.full_lo + n.count);
          if (a >= z) continue;
          n.group->exp_avg.narrow(0, n.state + (a - n.full_lo), z - a).copy_(m.narrow(0, at + (a - lo), z - a));
          n.group->exp_avg_sq.narrow(0, n.state + (a - n.full_lo), z - a).copy_(v.narrow(0, at + (a - lo), z - a));
          found += z - a;
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
