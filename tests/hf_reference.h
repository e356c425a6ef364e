// Reference: every tensor of a HF DeepSeek-V3 checkpoint for a model config, written out
// from the HF modeling code's module shapes, independent of the estimator and the model.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "dsv3/common/config.h"

namespace dsv3::test {

// Every tensor of a HF DeepseekV3ForCausalLM checkpoint, name -> element count, derived
// from the HF modeling code's module shapes (not from the estimator's formulas). MTP layers
// are stored as model.layers.<num_layers + k> with their own embed_tokens and head copies.
inline std::map<std::string, int64_t> HfTensors(const config::ModelConfig& m, int64_t mtp_layers) {
  const config::MlaConfig& a = m.mla;
  const config::MoeConfig& e = m.moe;
  const int64_t d = a.d_model, H = a.num_heads;
  std::map<std::string, int64_t> t;
  const auto block = [&](const std::string& p, bool moe) {
    t[p + "input_layernorm.weight"] = d;
    t[p + "post_attention_layernorm.weight"] = d;
    if (a.q_lora_rank > 0) {
      t[p + "self_attn.q_a_proj.weight"] = a.q_lora_rank * d;
      t[p + "self_attn.q_a_layernorm.weight"] = a.q_lora_rank;
      t[p + "self_attn.q_b_proj.weight"] = H * (a.qk_nope_head_dim + a.qk_rope_head_dim) * a.q_lora_rank;
    } else {
      t[p + "self_attn.q_proj.weight"] = H * (a.qk_nope_head_dim + a.qk_rope_head_dim) * d;
    }
    t[p + "self_attn.kv_a_proj_with_mqa.weight"] = (a.d_latent + a.qk_rope_head_dim) * d;
    t[p + "self_attn.kv_a_layernorm.weight"] = a.d_latent;
    t[p + "self_attn.kv_b_proj.weight"] = a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim) * a.d_latent;
    t[p + "self_attn.o_proj.weight"] = d * H * a.v_head_dim;
    if (!moe) {
      for (const char* w : {"gate_proj", "up_proj", "down_proj"})
        t[p + "mlp." + w + ".weight"] = d * m.dense_intermediate_size;
      return;
    }
    t[p + "mlp.gate.weight"] = e.num_experts * d;
    for (int64_t x = 0; x < e.num_experts; ++x)
      for (const char* w : {"gate_proj", "up_proj", "down_proj"})
        t[p + "mlp.experts." + std::to_string(x) + "." + w + ".weight"] = d * e.expert_intermediate_size;
    for (const char* w : {"gate_proj", "up_proj", "down_proj"})
      t[p + "mlp.shared_experts." + w + ".weight"] = d * e.shared_intermediate_size * e.num_shared_experts;
  };
  t["model.embed_tokens.weight"] = m.vocab_size * d;
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const bool moe = i >= m.first_k_dense_layers &&
                     !(m.dense_layer_interval > 0 && (i + 1) % m.dense_layer_interval == 0);
    block("model.layers." + std::to_string(i) + ".", moe);
  }
  t["model.norm.weight"] = d;
  if (!m.tie_word_embeddings) t["lm_head.weight"] = m.vocab_size * d;
  for (int64_t k = 0; k < mtp_layers; ++k) {
    const std::string p = "model.layers." + std::to_string(m.num_layers + k) + ".";
    block(p, true);
    t[p + "enorm.weight"] = d;
    t[p + "hnorm.weight"] = d;
    t[p + "eh_proj.weight"] = d * 2 * d;
    t[p + "shared_head.norm.weight"] = d;
    t[p + "embed_tokens.weight"] = m.vocab_size * d;
    t[p + "shared_head.head.weight"] = m.vocab_size * d;
  }
  return t;
}

}  // namespace dsv3::test
