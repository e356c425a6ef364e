#include "dsv3/model/hf_state_dict.h"

#include <set>
#include <sstream>

namespace dsv3::model {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Our parameter/buffer name -> HF name(s) with the tensor each maps to.
void Map(const std::string& ours, const torch::Tensor& t, int64_t num_layers,
         std::vector<std::pair<std::string, torch::Tensor>>& out) {
  std::string hf;
  if (ours.rfind("mtp.", 0) == 0) {
    // mtp.<k>.<rest>: depth k+1 is HF layer num_layers + k.
    const size_t dot = ours.find('.', 4);
    const int64_t k = std::stoll(ours.substr(4, dot - 4));
    std::string rest = ours.substr(dot + 1);
    if (rest.rfind("block.", 0) == 0) rest = rest.substr(6);
    else if (rest.rfind("norm.", 0) == 0) rest = "shared_head." + rest;
    hf = "model.layers." + std::to_string(num_layers + k) + "." + rest;
  } else if (ours.rfind("lm_head.", 0) == 0) {
    hf = ours;
  } else {
    hf = "model." + ours;
  }
  // Stacked experts: .mlp.experts.gate_proj (E x F x D) -> .mlp.experts.<e>.gate_proj.weight
  for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
    const std::string suffix = std::string("mlp.experts.") + proj;
    if (EndsWith(hf, suffix)) {
      const std::string prefix = hf.substr(0, hf.size() - std::string(proj).size());
      for (int64_t e = 0; e < t.size(0); ++e) {
        out.emplace_back(prefix + std::to_string(e) + "." + proj + ".weight", t[e]);
      }
      return;
    }
  }
  out.emplace_back(hf, t);
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> ToHfStateDict(DeepSeekV3Impl& model,
                                                                const std::map<std::string, torch::Tensor>& replace) {
  const config::Config& cfg = model.config();
  const int64_t L = cfg.model.num_layers;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters()) {
    const auto r = replace.find(p.key());
    Map(p.key(), r != replace.end() ? r->second : p.value(), L, out);
  }
  if (cfg.model.moe.use_aux_loss_free) {  // HF has the bias only with topk_method noaux_tc
    for (const auto& b : model.named_buffers()) {
      if (EndsWith(b.key(), "e_score_correction_bias")) Map(b.key(), b.value(), L, out);
    }
  }
  // The MTP layers' copies of the embedding and the head, whole like the originals.
  const auto whole = [&](const std::string& name, const torch::Tensor& t) {
    const auto r = replace.find(name);
    return r != replace.end() ? r->second : t;
  };
  const torch::Tensor embedding = whole("embed_tokens.weight", model.embed_tokens->weight);
  const torch::Tensor head = model.lm_head.is_empty() ? embedding : whole("lm_head.weight", model.lm_head->weight);
  for (size_t k = 0; k < model.mtp->size(); ++k) {
    const std::string prefix = "model.layers." + std::to_string(L + static_cast<int64_t>(k)) + ".";
    out.emplace_back(prefix + "embed_tokens.weight", embedding);
    out.emplace_back(prefix + "shared_head.head.weight", head);
  }
  return out;
}

void LoadHfStateDict(DeepSeekV3Impl& model, const std::map<std::string, torch::Tensor>& tensors) {
  const auto expected = ToHfStateDict(model);
  std::ostringstream problems;
  std::set<std::string> names;
  for (const auto& [name, target] : expected) {
    names.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      problems << "\n  missing: " << name;
    } else if (it->second.sizes() != target.sizes()) {
      problems << "\n  shape of " << name << ": " << it->second.sizes() << ", expected " << target.sizes();
    }
  }
  for (const auto& [name, tensor] : tensors) {
    if (names.count(name) == 0) problems << "\n  unexpected: " << name;
  }
  if (!problems.str().empty()) {
    throw std::runtime_error("HF state dict does not match the model:" + problems.str());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : expected) {
    // The MTP copies of the embedding and head alias the originals: copying them again is
    // harmless when the checkpoint is consistent.
    target.copy_(tensors.at(name));
  }
}

}  // namespace dsv3::model
