// Small configs for model tests, built through the real config loader.
#pragma once

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"

namespace dsv3::test {

// A tiny model: 2 layers (dense then MoE), d_model 32, 4 heads, 8 experts, vocab 64, fp32,
// no dropout or router noise. `overrides` is merged over it (objects by key).
inline config::Config SmallModelConfig(const nlohmann::json& overrides = nlohmann::json::object()) {
  nlohmann::json base = {
      {"model",
       {{"num_layers", 2}, {"vocab_size", 64}, {"init_method_std", 0.05}, {"dense_layer_interval", 0},
        {"first_k_dense_layers", 1},
        {"mla", {{"d_model", 32}, {"d_latent", 16}, {"num_heads", 4}, {"qk_nope_head_dim", 8},
                 {"qk_rope_head_dim", 4}, {"v_head_dim", 8}, {"max_context_length", 64}, {"attn_dropout", 0.0}}},
        {"moe", {{"num_experts", 8}, {"num_experts_per_token", 2}, {"expert_intermediate_size", 16},
                 {"num_shared_experts", 1}, {"dropout", 0.0}, {"router_noise_std", 0.0}, {"capacity_factor", 0.0}}}}},
      {"training", {{"use_bf16", false}, {"seq_length", 16}, {"global_batch_size", 4}, {"micro_batch_size", 4},
                    {"train_steps", 10}, {"use_mtp", true}, {"num_predict_tokens", 2}}},
      // Model tests read no data; a sentencepiece tokenizer (never loaded) lets the vocab be
      // smaller than the byte tokenizer's 259 ids.
      {"data", {{"sources", {{{"subset", "dolma_v1_6_cc"}, {"paths", {"x"}}}}},
                {"tokenizer", {{"type", "sentencepiece"}, {"model", "unused.model"}}}}},
  };
  base.merge_patch(overrides);
  const config::LoadResult r = config::LoadConfigText(base.dump());
  EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
  return r.config;
}

}  // namespace dsv3::test
