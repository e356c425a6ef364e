// The estimator against an independent reference (the HF DeepSeek-V3 tensor list, written
// out tensor by tensor) and against DeepSeek-V3's published sizes.
#include <cstdint>
#include <fstream>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/hf_import.h"
#include "hf_reference.h"

namespace dsv3::config {
namespace {

using test::HfTensors;

int64_t Sum(const std::map<std::string, int64_t>& tensors, const std::string& prefix = "") {
  int64_t n = 0;
  for (const auto& [name, count] : tensors)
    if (name.rfind(prefix, 0) == 0) n += count;
  return n;
}

Config DeepSeekV3() {
  std::ifstream in(std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/hf/deepseek_v3_config.json");
  const HfImportResult imported = ImportHfConfig(nlohmann::json::parse(in));
  EXPECT_TRUE(imported.ok());
  LoadResult r = LoadConfigText(imported.config.dump());
  EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
  return r.config;
}

TEST(Estimator, DeepSeekV3MatchesThePublishedSize) {
  const Config c = DeepSeekV3();
  const ParamCounts p = CountParameters(c.model, c.training.use_mtp, c.training.num_predict_tokens);
  // The reference: the HF checkpoint's tensors, main model only.
  const auto tensors = HfTensors(c.model, 1);
  int64_t main = 0;
  for (const auto& [name, count] : tensors)
    if (name.rfind("model.layers.61.", 0) != 0) main += count;
  EXPECT_EQ(p.main_total, main);
  EXPECT_EQ(p.main_total, 671026404352);  // "671B total parameters" (arXiv 2412.19437)
  // "37B activated for each token": 37.55B with both embedding tables, 36.6B without the
  // input embedding lookup.
  EXPECT_NEAR(static_cast<double>(p.main_activated) / 1e9, 37.5, 0.5);
  // The MTP module as HF stores it (with its embedding and head copies): the "14B" of the
  // 685B HF release; without those shared tables it trains 11.6B new parameters.
  EXPECT_EQ(p.mtp_hf_stored, Sum(tensors, "model.layers.61."));
  EXPECT_NEAR(static_cast<double>(p.main_total + p.mtp_hf_stored) / 1e9, 684.5, 0.5);
  EXPECT_EQ(p.mtp_total, p.mtp_hf_stored - 2 * c.model.vocab_size * c.model.mla.d_model);
  EXPECT_EQ(p.mtp_modules, 1);
  EXPECT_EQ(p.total, p.main_total + p.mtp_total);
  // Layer plan: 3 dense, 58 MoE.
  int64_t moe_layers = 0;
  for (const auto& l : p.layers) moe_layers += l.moe ? 1 : 0;
  EXPECT_EQ(moe_layers, 58);
  EXPECT_EQ(c.model.dense_intermediate_size, 18432);
}

TEST(Estimator, MatchesTheTensorListForEveryShippedConfig) {
  for (const char* name : {"nano", "tiny", "small", "large"}) {
    const LoadResult r = LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_" + name + ".json");
    ASSERT_TRUE(r.ok()) << name;
    const Config& c = r.config;
    const int64_t mtp = c.training.use_mtp ? c.training.num_predict_tokens - 1 : 0;
    const ParamCounts p = CountParameters(c.model, c.training.use_mtp, c.training.num_predict_tokens);
    EXPECT_EQ(p.main_total + p.mtp_hf_stored, Sum(HfTensors(c.model, mtp))) << name;
  }
}

TEST(Estimator, ActivatedCountsOnlyTheSelectedExperts) {
  ModelConfig m;
  m.num_layers = 2;
  m.dense_layer_interval = 0;
  m.moe.num_experts = 8;
  m.moe.num_experts_per_token = 2;
  m.moe.num_shared_experts = 1;
  const ParamCounts p = CountParameters(m, false, 1);
  const int64_t expert = 3 * m.mla.d_model * m.moe.expert_intermediate_size;
  EXPECT_EQ(p.one_routed_expert, expert);
  EXPECT_EQ(p.main_total - p.main_activated, 2 * (8 - 2) * expert);
}

TEST(Estimator, LayerNormHasBiasesAndTiedHeadHasNoParameters) {
  ModelConfig m;
  const ParamCounts rms = CountParameters(m, false, 1);
  m.norm_type = "layernorm";
  m.tie_word_embeddings = true;
  const ParamCounts ln = CountParameters(m, false, 1);
  const int64_t d = m.mla.d_model;
  // 2 norms per layer + the final norm gain a bias each; the head disappears.
  EXPECT_EQ(ln.main_total - rms.main_total, (2 * m.num_layers + 1) * d - m.vocab_size * d);
  EXPECT_EQ(ln.lm_head, 0);
}

TEST(Estimator, FlopsAreSixTimesActivatedMatmulsPlusAttention) {
  LoadResult r = LoadConfigText(
      R"({"training": {"seq_length": 1, "use_mtp": false, "train_steps": 1, "global_batch_size": 2},
          "model": {"tie_word_embeddings": false}})");
  ASSERT_TRUE(r.ok());
  const Estimate e = EstimateConfig(r.config);
  const ModelConfig& m = r.config.model;
  int64_t norms = e.params.final_norm;
  for (const auto& l : e.params.layers) norms += l.norms + m.mla.d_latent;  // + kv_a_layernorm
  const double matmul = static_cast<double>(e.params.main_activated - e.params.embedding - norms);
  EXPECT_DOUBLE_EQ(e.flops.dense_matmul, 6 * matmul);
  // seq 1: every query sees one key.
  const double attention = 6.0 * m.mla.num_heads * (64 + 32 + 64) * 1.0 * m.num_layers;
  EXPECT_DOUBLE_EQ(e.flops.attention, attention);
  EXPECT_DOUBLE_EQ(e.flops.mtp, 0.0);
  EXPECT_DOUBLE_EQ(e.flops.total, 6 * matmul + attention);
}

TEST(Estimator, CausalAndSlidingWindowContext) {
  LoadResult full = LoadConfigText(R"({"training": {"seq_length": 8, "train_steps": 1}})");
  LoadResult window = LoadConfigText(R"({"training": {"seq_length": 8, "train_steps": 1},
                                         "model": {"mla": {"sliding_window": 2}}})");
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(window.ok());
  // Causal over 8 positions: (1+...+8)/8 = 4.5 keys; with a window of 2: (1+2*7)/8 = 1.875.
  EXPECT_DOUBLE_EQ(EstimateConfig(window.config).flops.attention / EstimateConfig(full.config).flops.attention,
                   1.875 / 4.5);
}

TEST(Estimator, ZeroStagesShardStateAcrossDataParallelRanks) {
  const auto memory = [](int stage, int dp) {
    LoadOptions o;
    o.world_size = dp;
    const std::string text = R"({"distributed": {"zero_stage": )" + std::to_string(stage) +
                             R"(}, "training": {"global_batch_size": 64, "micro_batch_size": 1}})";
    LoadResult r = LoadConfigText(text, o);
    EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
    return EstimateConfig(r.config).memory;
  };
  const MemoryEstimate z0 = memory(0, 4), z1 = memory(1, 4), z2 = memory(2, 4), z3 = memory(3, 4);
  // bf16 + AdamW: 2 B weights, 2 B gradients, 12 B optimizer (fp32 master, m, v) per parameter.
  EXPECT_EQ(z0.weight_bytes, 2);
  EXPECT_EQ(z0.optimizer_bytes, 12);
  EXPECT_DOUBLE_EQ(z0.optimizer, 12.0 * static_cast<double>(z0.params_on_gpu));
  EXPECT_NEAR(z1.optimizer, z0.optimizer / 4, 1.0);
  EXPECT_DOUBLE_EQ(z1.gradients, z0.gradients);
  EXPECT_NEAR(z2.gradients, z0.gradients / 4, 1.0);
  EXPECT_DOUBLE_EQ(z2.weights, z0.weights);
  EXPECT_NEAR(z3.weights, z0.weights / 4, 1.0);
  EXPECT_NEAR(memory(1, 8).optimizer, z0.optimizer / 8, 1.0);
}

TEST(Estimator, ExpertParallelSplitsExpertsAndOffloadMovesOptimizerToHost) {
  LoadOptions o;
  o.world_size = 8;
  LoadResult ep1 = LoadConfigText(R"({"distributed": {"zero_stage": 0}})", o);
  LoadResult ep8 = LoadConfigText(R"({"distributed": {"zero_stage": 0, "expert_parallel_size": 8}})", o);
  ASSERT_TRUE(ep1.ok());
  ASSERT_TRUE(ep8.ok());
  const Estimate e1 = EstimateConfig(ep1.config), e8 = EstimateConfig(ep8.config);
  const int64_t routed = e1.params.routed_experts + 8 * e1.params.one_routed_expert;  // + the MTP block's
  EXPECT_NEAR(static_cast<double>(e1.memory.params_on_gpu - e8.memory.params_on_gpu), routed * 7.0 / 8.0, 1.0);

  LoadResult offload = LoadConfigText(R"({"distributed": {"zero_stage": 1, "zero_offload": true}})", o);
  ASSERT_TRUE(offload.ok());
  const MemoryEstimate m = EstimateConfig(offload.config).memory;
  EXPECT_DOUBLE_EQ(m.optimizer, 0.0);
  EXPECT_GT(m.host_optimizer, 0.0);
}

}  // namespace
}  // namespace dsv3::config
