#include "dsv3/common/hf_import.h"

#include <cmath>
#include <optional>
#include <string>

#include "config_codec.h"
#include "dsv3/common/config.h"
#include "dsv3/common/estimator.h"

namespace dsv3::config {
namespace {

using nlohmann::json;
using internal::Show;

class HfReader {
 public:
  HfReader(const json& hf, HfImportResult& out) : hf_(hf), out_(out) {}

  // A required positive integer field.
  int64_t Int(const char* key) {
    auto v = OptInt(key);
    if (!v && !hf_.contains(key)) out_.errors.push_back({std::string("/") + key, "is required"});
    return v.value_or(0);
  }
  // An optional integer; null and absent give nullopt.
  std::optional<int64_t> OptInt(const char* key) {
    auto it = hf_.find(key);
    if (it == hf_.end() || it->is_null()) return std::nullopt;
    if (it->is_number_integer() && it->get<int64_t>() >= 0) return it->get<int64_t>();
    if (it->is_number_float() && std::floor(it->get<double>()) == it->get<double>() && it->get<double>() >= 0)
      return static_cast<int64_t>(it->get<double>());
    out_.errors.push_back({std::string("/") + key, "expected a non-negative integer, got " + Show(*it)});
    return std::nullopt;
  }
  std::optional<double> OptNumber(const char* key) {
    auto it = hf_.find(key);
    if (it == hf_.end() || it->is_null()) return std::nullopt;
    if (it->is_number()) return it->get<double>();
    out_.errors.push_back({std::string("/") + key, "expected a number, got " + Show(*it)});
    return std::nullopt;
  }
  std::optional<bool> OptBool(const char* key) {
    auto it = hf_.find(key);
    if (it == hf_.end() || it->is_null()) return std::nullopt;
    if (it->is_boolean()) return it->get<bool>();
    out_.errors.push_back({std::string("/") + key, "expected true or false, got " + Show(*it)});
    return std::nullopt;
  }
  std::optional<std::string> OptString(const char* key) {
    auto it = hf_.find(key);
    if (it == hf_.end() || it->is_null()) return std::nullopt;
    if (it->is_string()) return it->get<std::string>();
    out_.errors.push_back({std::string("/") + key, "expected a string, got " + Show(*it)});
    return std::nullopt;
  }

 private:
  const json& hf_;
  HfImportResult& out_;
};

}  // namespace

HfImportResult ImportHfConfig(const json& hf) {
  HfImportResult out;
  if (!hf.is_object()) {
    out.errors.push_back({"", "a HuggingFace config.json is a JSON object, got " + Show(hf)});
    return out;
  }
  HfReader r(hf, out);
  Config c;
  ModelConfig& m = c.model;
  MlaConfig& a = m.mla;
  MoeConfig& e = m.moe;

  if (auto type = r.OptString("model_type")) {
    if (*type != "deepseek_v2" && *type != "deepseek_v3") {
      out.warnings.push_back({"/model_type", "\"" + *type + "\" is not deepseek_v2 or deepseek_v3; importing the fields anyway"});
    }
    c.experiment_name = *type + "_imported";
  }
  if (auto act = r.OptString("hidden_act"); act && *act != "silu") {
    out.errors.push_back({"/hidden_act", "\"" + *act + "\" is not supported; dsv3's FFNs are SwiGLU (\"silu\")"});
  }

  a.d_model = r.Int("hidden_size");
  m.num_layers = r.Int("num_hidden_layers");
  a.num_heads = r.Int("num_attention_heads");
  a.num_kv_heads = r.OptInt("num_key_value_heads").value_or(a.num_heads);
  a.q_lora_rank = r.OptInt("q_lora_rank").value_or(0);  // null: no query compression (V2-Lite)
  a.d_latent = r.Int("kv_lora_rank");
  a.qk_nope_head_dim = r.Int("qk_nope_head_dim");
  a.qk_rope_head_dim = r.Int("qk_rope_head_dim");
  a.v_head_dim = r.Int("v_head_dim");
  a.rope_theta = r.OptNumber("rope_theta").value_or(10000.0);
  a.attn_dropout = r.OptNumber("attention_dropout").value_or(0.0);
  a.max_context_length = r.OptInt("max_position_embeddings").value_or(a.max_context_length);
  if (auto it = hf.find("rope_scaling"); it != hf.end() && !it->is_null()) {
    out.warnings.push_back({"/rope_scaling", "YaRN rope scaling is not implemented; imported without it, so "
                                             "max_context_length is the original (pre-scaling) context"});
    if (it->is_object() && it->contains("original_max_position_embeddings") &&
        (*it)["original_max_position_embeddings"].is_number_integer()) {
      a.max_context_length = (*it)["original_max_position_embeddings"].get<int64_t>();
    }
  }

  m.vocab_size = r.Int("vocab_size");
  m.norm_type = "rmsnorm";
  m.norm_eps = r.OptNumber("rms_norm_eps").value_or(1e-6);
  m.tie_word_embeddings = r.OptBool("tie_word_embeddings").value_or(false);
  m.init_method_std = r.OptNumber("initializer_range").value_or(m.init_method_std);
  m.dense_intermediate_size = r.Int("intermediate_size");
  m.first_k_dense_layers = r.OptInt("first_k_dense_replace").value_or(0);

  // HF: layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0.
  // dsv3: dense when i < first_k_dense_layers or (i + 1) % dense_layer_interval == 0.
  // freq 1 -> no interval; freq 2 -> interval 2 (odd layers dense in both). Others differ.
  const int64_t freq = r.OptInt("moe_layer_freq").value_or(1);
  if (freq == 1) {
    m.dense_layer_interval = 0;
  } else if (freq == 2) {
    m.dense_layer_interval = 2;
  } else {
    out.errors.push_back({"/moe_layer_freq", std::to_string(freq) + " has no dsv3 equivalent (supported: 1 or 2)"});
  }

  const auto routed = r.OptInt("n_routed_experts");
  if (!routed) {
    if (!hf.contains("n_routed_experts")) out.errors.push_back({"/n_routed_experts", "is required (a DeepSeek MoE model)"});
  } else {
    e.num_experts = *routed;
  }
  e.num_experts_per_token = r.Int("num_experts_per_tok");
  e.expert_intermediate_size = r.Int("moe_intermediate_size");
  e.num_shared_experts = r.OptInt("n_shared_experts").value_or(0);
  e.shared_intermediate_size = e.expert_intermediate_size;
  e.n_group = r.OptInt("n_group").value_or(1);
  e.topk_group = r.OptInt("topk_group").value_or(1);
  e.routed_scaling_factor = r.OptNumber("routed_scaling_factor").value_or(1.0);
  e.score_func = r.OptString("scoring_func").value_or("softmax");
  e.norm_topk_prob = r.OptBool("norm_topk_prob").value_or(false);
  e.dropout = 0.0;
  e.router_noise_std = 0.0;
  e.capacity_factor = 0.0;  // HF's DeepSeek MoE is dropless
  const std::string method = r.OptString("topk_method").value_or("greedy");
  if (method == "noaux_tc") {
    e.use_aux_loss_free = true;
  } else if (method == "greedy") {
    e.n_group = 1;  // plain top-k ignores groups
    e.topk_group = 1;
  } else if (method == "group_limited_greedy") {
    out.warnings.push_back({"/topk_method", "\"group_limited_greedy\" scores a group by its best expert; dsv3 "
                                            "scores it by the sum of its top-2 (DeepSeek-V3), so routing can differ"});
  } else {
    out.errors.push_back({"/topk_method", "\"" + method + "\" is not one of: greedy, group_limited_greedy, noaux_tc"});
  }
  const double alpha = r.OptNumber("aux_loss_alpha").value_or(0.0);
  if (r.OptBool("seq_aux").value_or(false)) {
    e.seq_aux_loss_weight = alpha;
    e.router_aux_loss_weight = 0.0;
    e.balance_loss_type = "none";
  } else {
    e.router_aux_loss_weight = alpha;
    e.balance_loss_type = alpha > 0 ? "load" : "none";
  }
  // DeepSeek-V2 normalises the top-k gates (k > 1) instead of scaling them; dsv3 normalises
  // and then scales, so the same model has a factor of 1.
  const auto model_type = hf.find("model_type");
  const bool v2 = model_type != hf.end() && *model_type == "deepseek_v2";
  if (v2 && e.norm_topk_prob && e.num_experts_per_token > 1 && e.routed_scaling_factor != 1.0) {
    out.warnings.push_back({"/routed_scaling_factor", "DeepSeek-V2 does not scale normalised gates; imported as 1"});
    e.routed_scaling_factor = 1.0;
  }
  if (e.score_func != "softmax" && e.score_func != "sigmoid") {
    out.errors.push_back({"/scoring_func", "\"" + e.score_func + "\" is not one of: softmax, sigmoid"});
  }

  const int64_t nextn = r.OptInt("num_nextn_predict_layers").value_or(0);
  c.training.use_mtp = nextn > 0;
  c.training.num_predict_tokens = nextn + 1;
  if (c.training.seq_length > a.max_context_length) c.training.seq_length = a.max_context_length;

  out.config = ToJson(c);
  return out;
}

namespace {

struct HfLayerPlan {
  bool found = false;
  int64_t first_k_dense = 0, moe_layer_freq = 1;
};

// first_k_dense_replace and moe_layer_freq (1 only for V3, whose port ignores it) that give
// `plan` (true = MoE) in HF.
HfLayerPlan FindHfLayerPlan(const std::vector<bool>& plan, bool v3) {
  HfLayerPlan out;
  while (out.first_k_dense < static_cast<int64_t>(plan.size()) && !plan[static_cast<size_t>(out.first_k_dense)]) {
    ++out.first_k_dense;
  }
  for (int64_t freq : v3 ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 2}) {
    bool same = true;
    for (size_t i = 0; i < plan.size(); ++i) {
      const auto layer = static_cast<int64_t>(i);
      same = same && plan[i] == (layer >= out.first_k_dense && layer % freq == 0);
    }
    if (same) {
      out.found = true;
      out.moe_layer_freq = freq;
      return out;
    }
  }
  return out;
}

}  // namespace

HfImportResult ExportHfConfig(const Config& c) {
  HfImportResult out;
  const ModelConfig& m = c.model;
  const MlaConfig& a = m.mla;
  const MoeConfig& e = m.moe;
  // Sigmoid routers are HF's DeepseekV3 (transformers' native port: sigmoid scores plus the
  // aux-loss-free bias, every layer from first_k_dense_replace on an MoE layer); softmax
  // routers are DeepseekV2 (softmax scores, moe_layer_freq, the top-k gates normalised only
  // when k > 1, and then without routed_scaling_factor). What neither computes as dsv3 does
  // is refused with the reason, never written.
  const bool v3 = e.score_func == "sigmoid";
  const std::string type = v3 ? "DeepseekV3" : "DeepseekV2";
  const auto refuse = [&](const std::string& path, const std::string& why) { out.errors.push_back({path, why}); };
  if (m.norm_type != "rmsnorm") refuse("/model/norm_type", "HF DeepSeek models use RMSNorm only");
  if (m.norm_eps != 1e-6) {
    refuse("/model/norm_eps", "HF's latent norms (q_a_layernorm, kv_a_layernorm) always use eps 1e-6; dsv3's use "
                              "norm_eps, so only 1e-6 exports");
  }
  // The layer plan as HF writes it: the leading dense layers (first_k_dense_replace), then
  // MoE layers, every one (V3) or every moe_layer_freq-th (V2).
  const HfLayerPlan plan = FindHfLayerPlan(LayerPlan(m), v3);
  if (!plan.found) {
    refuse("/model/dense_layer_interval",
           v3 ? "HF's DeepseekV3 ignores moe_layer_freq: its layers are dense up to first_k_dense_replace and MoE "
                "after, which this layer plan (first_k_dense_layers, dense_layer_interval) is not"
              : "HF's DeepseekV2 makes layer i MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0, "
                "which no frequency gives for this layer plan (first_k_dense_layers, dense_layer_interval)");
  }
  if (a.num_kv_heads != a.num_heads) {
    refuse("/model/mla/num_kv_heads", "HF DeepSeek models have one key/value head per query head");
  }
  if (!a.use_rope) refuse("/model/mla/use_rope", "HF DeepSeek models always apply RoPE");
  if (a.sliding_window) refuse("/model/mla/sliding_window", "HF DeepSeek models have no sliding window");
  if (e.shared_intermediate_size != e.expert_intermediate_size && e.num_shared_experts > 0) {
    refuse("/model/moe/shared_intermediate_size", "HF sizes shared experts as n_shared_experts x moe_intermediate_size");
  }
  if (e.router_temperature != 1.0) {
    refuse("/model/moe/router_temperature", "HF's routers have no softmax temperature; only 1 exports");
  }
  if (v3) {
    if (!e.use_aux_loss_free) {
      refuse("/model/moe/use_aux_loss_free", "HF's DeepseekV3 router always adds e_score_correction_bias, which dsv3 "
                                             "keeps only with the aux-loss-free balancing; set it true to export");
    }
    if (e.norm_topk_prob && e.num_experts_per_token == 1) {
      refuse("/model/moe/norm_topk_prob", "HF's DeepseekV3 normalises a single gate to 1; dsv3 keeps the router "
                                          "score for top-1 (so the router learns): set norm_topk_prob false to export");
    }
  } else {
    if (e.use_aux_loss_free) {
      refuse("/model/moe/use_aux_loss_free", "the aux-loss-free bias needs sigmoid scores in HF (DeepseekV3's noaux_tc)");
    }
    if (e.n_group > 1) refuse("/model/moe/n_group", "group-limited softmax routing scores groups differently in HF");
    if (e.norm_topk_prob && e.num_experts_per_token > 1 && e.routed_scaling_factor != 1.0) {
      refuse("/model/moe/routed_scaling_factor", "HF's DeepseekV2 drops routed_scaling_factor when it normalises the "
                                                 "top-k gates (norm_topk_prob); only 1 exports with normalised gates");
    }
  }
  if (!out.errors.empty()) {
    for (auto& d : out.errors) d.message = "cannot export as HF " + type + ": " + d.message;
  }
  const std::string method = v3 ? "noaux_tc" : "greedy";
  const int64_t nextn = c.training.use_mtp ? c.training.num_predict_tokens - 1 : 0;
  out.config = {
      {"architectures", {type + "ForCausalLM"}},
      {"model_type", v3 ? "deepseek_v3" : "deepseek_v2"},
      {"hidden_act", "silu"},
      {"hidden_size", a.d_model},
      {"num_hidden_layers", m.num_layers},
      {"num_attention_heads", a.num_heads},
      {"num_key_value_heads", a.num_kv_heads},
      {"q_lora_rank", a.q_lora_rank > 0 ? json(a.q_lora_rank) : json()},
      {"kv_lora_rank", a.d_latent},
      {"qk_nope_head_dim", a.qk_nope_head_dim},
      {"qk_rope_head_dim", a.qk_rope_head_dim},
      {"v_head_dim", a.v_head_dim},
      {"rope_theta", a.rope_theta},
      {"rope_scaling", nullptr},
      {"max_position_embeddings", a.max_context_length},
      {"attention_dropout", a.attn_dropout},
      {"attention_bias", false},
      {"intermediate_size", m.dense_intermediate_size},
      {"moe_intermediate_size", e.expert_intermediate_size},
      {"n_routed_experts", e.num_experts},
      {"n_shared_experts", e.num_shared_experts},
      {"num_experts_per_tok", e.num_experts_per_token},
      {"first_k_dense_replace", plan.first_k_dense},
      {"moe_layer_freq", plan.moe_layer_freq},
      {"n_group", e.n_group},
      {"topk_group", e.topk_group},
      {"topk_method", method},
      {"routed_scaling_factor", e.routed_scaling_factor},
      {"scoring_func", e.score_func},
      {"norm_topk_prob", e.norm_topk_prob},
      {"aux_loss_alpha", e.seq_aux_loss_weight > 0 ? e.seq_aux_loss_weight : e.router_aux_loss_weight},
      {"seq_aux", e.seq_aux_loss_weight > 0},
      {"vocab_size", m.vocab_size},
      {"rms_norm_eps", m.norm_eps},
      {"tie_word_embeddings", m.tie_word_embeddings},
      {"initializer_range", m.init_method_std},
      {"num_nextn_predict_layers", nextn},
      {"torch_dtype", c.training.use_bf16 ? "bfloat16" : c.training.use_fp16 ? "float16" : "float32"},
      {"use_cache", true},
  };
  return out;
}

int64_t HfMtpLayers(const json& hf) {
  const auto it = hf.find("num_nextn_predict_layers");
  return it != hf.end() && it->is_number_integer() && it->get<int64_t>() > 0 ? it->get<int64_t>() : 0;
}

std::vector<Diagnostic> CompareWithHfConfig(const Config& config, const json& hf) {
  const HfImportResult imported = ImportHfConfig(hf);
  if (!imported.ok()) return imported.errors;
  // Their model in our config (our data, tokenizer and layout), resolved the same way.
  json merged = ToJson(config);
  merged["model"] = imported.config["model"];
  const LoadResult theirs = LoadConfigText(merged.dump());
  if (!theirs.ok()) return theirs.errors;
  // Every field that decides a weight's shape or what the weights compute.
  static const char* const kFields[] = {
      "/model/num_layers", "/model/vocab_size", "/model/norm_type", "/model/norm_eps",
      "/model/tie_word_embeddings", "/model/dense_intermediate_size", "/model/mla/d_model", "/model/mla/d_latent", "/model/mla/num_heads",
      "/model/mla/num_kv_heads", "/model/mla/q_lora_rank", "/model/mla/qk_nope_head_dim",
      "/model/mla/qk_rope_head_dim", "/model/mla/v_head_dim", "/model/mla/rope_theta", "/model/mla/use_rope",
      "/model/mla/sliding_window", "/model/moe/num_experts", "/model/moe/num_experts_per_token",
      "/model/moe/expert_intermediate_size", "/model/moe/num_shared_experts", "/model/moe/shared_intermediate_size",
      "/model/moe/score_func", "/model/moe/n_group", "/model/moe/topk_group", "/model/moe/routed_scaling_factor",
      "/model/moe/norm_topk_prob", "/model/moe/use_aux_loss_free", "/model/moe/router_temperature"};
  const json ours = ToJson(config), hf_as_ours = ToJson(theirs.config);
  std::vector<Diagnostic> out;
  for (const char* field : kFields) {
    const json::json_pointer p(field);
    const json a = ours.contains(p) ? ours.at(p) : json(), b = hf_as_ours.contains(p) ? hf_as_ours.at(p) : json();
    const bool same = a.is_number() && b.is_number() ? a.get<double>() == b.get<double>() : a == b;
    if (!same) out.push_back({field, Show(a) + " here, " + Show(b) + " in the HF config"});
  }
  // The layer plan, however each spells it (first_k_dense_layers, dense_layer_interval).
  const auto show_plan = [](const std::vector<bool>& plan) {
    std::string s;
    for (bool moe : plan) s += moe ? 'M' : 'D';
    return s;
  };
  const std::vector<bool> our_plan = LayerPlan(config.model), their_plan = LayerPlan(theirs.config.model);
  if (our_plan != their_plan) {
    out.push_back({"/model/dense_layer_interval", "the layers are " + show_plan(our_plan) + " here (D dense, M MoE), " +
                                                      show_plan(their_plan) + " in the HF config"});
  }
  const int64_t predicted = config.training.use_mtp ? config.training.num_predict_tokens - 1 : 0;
  if (predicted > HfMtpLayers(hf)) {
    out.push_back({"/training/num_predict_tokens",
                   std::to_string(config.training.num_predict_tokens) + " needs " + std::to_string(predicted) +
                       " MTP layer(s); the HF model has " + std::to_string(HfMtpLayers(hf)) +
                       " (num_nextn_predict_layers); set training.use_mtp false or num_predict_tokens to " +
                       std::to_string(HfMtpLayers(hf) + 1)});
  }
  return out;
}

}  // namespace dsv3::config
