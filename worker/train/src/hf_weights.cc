#include "dsv3/train/hf_weights.h"

#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "dsv3/common/config_io.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/common/parallel_layout.h"
#include "dsv3/model/hf_state_dict.h"

namespace dsv3::train {
namespace {

// The number that follows `part` in `name` (up to the next '.'), or -1 when there is none.
int64_t NumberAfter(const std::string& name, const std::string& part, bool at_start) {
  const size_t at = at_start ? (name.rfind(part, 0) == 0 ? 0 : std::string::npos) : name.find(part);
  if (at == std::string::npos) return -1;
  int64_t n = -1;
  for (size_t i = at + part.size(); i < name.size() && name[i] != '.'; ++i) {
    if (name[i] < '0' || name[i] > '9' || n > (int64_t{1} << 40)) return -1;
    n = (n < 0 ? 0 : n * 10) + (name[i] - '0');
  }
  return n;
}

// The decoder layer an HF name belongs to (model.layers.<i>.…), or -1.
int64_t LayerOf(const std::string& name) { return NumberAfter(name, "model.layers.", true); }

// The routed expert an HF name belongs to (….mlp.experts.<e>.…), or -1.
int64_t ExpertOf(const std::string& name) { return NumberAfter(name, ".mlp.experts.", false); }

// Whether this rank keeps HF tensor `name` once the model is sharded (parallelize.h).
class Holdings {
 public:
  Holdings(const config::Config& cfg, const ModelShare& share)
      : share_(share), stage_layers_(config::StageLayers(cfg)), num_layers_(cfg.model.num_layers) {
    const int64_t experts = cfg.model.moe.num_experts;
    experts_begin_ = share.ep_index * experts / share.ep;
    experts_end_ = (share.ep_index + 1) * experts / share.ep;
    // The last stage keeps a copy of the embedding when MTP or a tied head uses it.
    last_needs_embedding_ = cfg.training.use_mtp || cfg.model.tie_word_embeddings;
  }

  bool Keeps(const std::string& name) const {
    const bool first = share_.stage == 0, last = share_.stage == share_.pp - 1;
    if (name == "model.embed_tokens.weight") return first || (last && last_needs_embedding_);
    const int64_t layer = LayerOf(name);
    if (layer < 0) return last;  // the final norm and the head
    const int64_t stage = layer < num_layers_ ? config::StageOfLayer(stage_layers_, share_.pp, layer) : share_.pp - 1;
    if (stage != share_.stage) return false;
    const int64_t expert = ExpertOf(name);
    return expert < 0 || (expert >= experts_begin_ && expert < experts_end_);
  }

 private:
  ModelShare share_;
  std::vector<int64_t> stage_layers_;
  int64_t num_layers_, experts_begin_ = 0, experts_end_ = 0;
  bool last_needs_embedding_ = false;
};

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

void CheckConfig(const config::Config& cfg, const ckpt::HfCheckpoint& hf) {
  const std::vector<config::Diagnostic> problems = config::CompareWithHfConfig(cfg, hf.config());
  if (problems.empty()) return;
  const std::string file = hf.dir() + "/config.json";
  std::ostringstream m;
  m << file << " describes another model than this config (checkpointing.init_from_hf):";
  for (const config::Diagnostic& d : problems) m << "\n  " << d.ToString();
  m << "\n`dsv3ctl config import-hf " << file << "` writes a config whose model section matches";
  throw std::runtime_error(m.str());
}

}  // namespace

HfLoadReport LoadHfWeights(const config::Config& cfg, const ModelShare& share, model::DeepSeekV3Impl& model,
                           ckpt::HfCheckpoint& hf) {
  const auto start = std::chrono::steady_clock::now();
  CheckConfig(cfg, hf);
  HfLoadReport report;
  report.total_bytes = hf.total_bytes();
  const int64_t L = cfg.model.num_layers;
  const int64_t our_mtp = cfg.training.use_mtp ? cfg.training.num_predict_tokens - 1 : 0;
  const auto expected = model::ToHfStateDict(model);

  static const std::set<std::string> kFloatingDtypes = {"F32", "F64", "BF16", "F16", "F8_E4M3", "F8_E5M2"};
  std::ostringstream problems;
  std::set<std::string> names;
  for (const auto& [name, target] : expected) {
    names.insert(name);
    if (!hf.contains(name)) {
      problems << "\n  missing: " << name;
    } else if (!kFloatingDtypes.count(hf.dtype(name))) {
      problems << "\n  dtype of " << name << " in " << hf.file_of(name) << ": " << hf.dtype(name)
               << ", not a floating-point weight (F32, F64, BF16, F16, F8_E4M3, F8_E5M2)";
    } else if (hf.shape(name) != target.sizes().vec()) {
      problems << "\n  shape of " << name << " in " << hf.file_of(name) << ": " << Shape(hf.shape(name))
               << ", expected " << Shape(target.sizes().vec());
    }
  }
  std::set<int64_t> skipped_mtp;
  for (const std::string& name : hf.names()) {
    if (names.count(name)) continue;
    const int64_t layer = LayerOf(name);
    if (layer >= L + our_mtp) {
      skipped_mtp.insert(layer);
    } else if (!(name == "lm_head.weight" && cfg.model.tie_word_embeddings)) {  // a tied head saved anyway
      problems << "\n  unexpected: " << name << " in " << hf.file_of(name);
    }
  }
  if (!problems.str().empty()) {
    throw std::runtime_error(hf.dir() + " does not hold the weights of this model:" + problems.str());
  }
  report.skipped_mtp_layers.assign(skipped_mtp.begin(), skipped_mtp.end());

  const Holdings holdings(cfg, share);
  const int64_t before = hf.bytes_read();
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : expected) {
    // The MTP layers' embedding and head alias the model's own (hf_state_dict.h).
    const bool copy = LayerOf(name) >= L && (EndsWith(name, ".embed_tokens.weight") ||
                                              EndsWith(name, ".shared_head.head.weight"));
    if (copy || !holdings.Keeps(name)) {
      ++report.tensors_skipped;
      continue;
    }
    hf.ReadInto(name, target);
    ++report.tensors_read;
  }
  report.bytes_read = hf.bytes_read() - before;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace dsv3::train
