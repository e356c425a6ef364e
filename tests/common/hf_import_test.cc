// import-hf: HF DeepSeek-V2/V3 config.json -> a dsv3 config that loads as it is.
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/hf_import.h"

namespace dsv3::config {
namespace {

using nlohmann::json;

json ReadHf(const char* name) {
  std::ifstream in(std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/hf/" + name);
  return json::parse(in);
}

LoadResult Import(const json& hf) {
  const HfImportResult imported = ImportHfConfig(hf);
  EXPECT_TRUE(imported.ok()) << (imported.errors.empty() ? "" : imported.errors[0].ToString());
  return LoadConfigText(imported.config.dump());
}

TEST(HfImport, DeepSeekV3MapsEveryField) {
  const HfImportResult imported = ImportHfConfig(ReadHf("deepseek_v3_config.json"));
  ASSERT_TRUE(imported.ok());
  ASSERT_EQ(imported.warnings.size(), 1u);  // YaRN rope scaling is not reproduced
  EXPECT_EQ(imported.warnings[0].path, "/rope_scaling");
  const LoadResult r = LoadConfigText(imported.config.dump());
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  const ModelConfig& m = r.config.model;
  EXPECT_EQ(m.mla.d_model, 7168);
  EXPECT_EQ(m.num_layers, 61);
  EXPECT_EQ(m.mla.num_heads, 128);
  EXPECT_EQ(m.mla.q_lora_rank, 1536);
  EXPECT_EQ(m.mla.d_latent, 512);
  EXPECT_EQ(m.mla.qk_nope_head_dim, 128);
  EXPECT_EQ(m.mla.qk_rope_head_dim, 64);
  EXPECT_EQ(m.mla.v_head_dim, 128);
  EXPECT_EQ(m.mla.max_context_length, 4096);  // original_max_position_embeddings
  EXPECT_EQ(m.dense_intermediate_size, 18432);
  EXPECT_EQ(m.moe.expert_intermediate_size, 2048);
  EXPECT_EQ(m.moe.num_experts, 256);
  EXPECT_EQ(m.moe.num_shared_experts, 1);
  EXPECT_EQ(m.moe.num_experts_per_token, 8);
  EXPECT_EQ(m.first_k_dense_layers, 3);
  EXPECT_EQ(m.dense_layer_interval, 0);
  EXPECT_EQ(m.moe.n_group, 8);
  EXPECT_EQ(m.moe.topk_group, 4);
  EXPECT_DOUBLE_EQ(m.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(m.moe.score_func, "sigmoid");
  EXPECT_TRUE(m.moe.use_aux_loss_free);
  EXPECT_TRUE(m.moe.norm_topk_prob);
  EXPECT_DOUBLE_EQ(m.moe.seq_aux_loss_weight, 0.001);
  EXPECT_EQ(m.moe.balance_loss_type, "none");
  EXPECT_EQ(m.vocab_size, 129280);
  EXPECT_DOUBLE_EQ(m.mla.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(m.norm_eps, 1e-6);
  EXPECT_FALSE(m.tie_word_embeddings);
  EXPECT_TRUE(r.config.training.use_mtp);
  EXPECT_EQ(r.config.training.num_predict_tokens, 2);
  EXPECT_EQ(CountParameters(m, false, 1).main_total, 671026404352);
}

TEST(HfImport, DeepSeekV2LiteWithoutQueryCompression) {
  const LoadResult r = Import(ReadHf("deepseek_v2_lite_config.json"));
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  const ModelConfig& m = r.config.model;
  EXPECT_EQ(m.mla.q_lora_rank, 0);  // null in HF
  EXPECT_EQ(m.moe.num_experts, 64);
  EXPECT_EQ(m.moe.num_shared_experts, 2);
  EXPECT_EQ(m.moe.score_func, "softmax");
  EXPECT_FALSE(m.moe.norm_topk_prob);
  EXPECT_FALSE(r.config.training.use_mtp);
  // DeepSeek-V2-Lite is published as 15.7B total parameters.
  EXPECT_NEAR(static_cast<double>(CountParameters(m, false, 1).main_total) / 1e9, 15.7, 0.05);
}

TEST(HfImport, MoeLayerFrequencyTwoKeepsTheSameLayerPlan) {
  json hf = ReadHf("deepseek_v2_lite_config.json");
  hf["moe_layer_freq"] = 2;
  hf["first_k_dense_replace"] = 1;
  const LoadResult r = Import(hf);
  ASSERT_TRUE(r.ok());
  // HF: MoE iff i >= 1 and i % 2 == 0.
  for (int64_t i = 0; i < 27; ++i) {
    EXPECT_EQ(r.config.derived.layer_is_moe[static_cast<size_t>(i)], i >= 1 && i % 2 == 0) << "layer " << i;
  }
}

TEST(HfImport, UnsupportedAndMissingFieldsAreErrors) {
  json hf = ReadHf("deepseek_v3_config.json");
  hf["moe_layer_freq"] = 3;
  hf.erase("hidden_size");
  hf["hidden_act"] = "gelu";
  const HfImportResult r = ImportHfConfig(hf);
  std::vector<std::string> paths;
  for (const auto& e : r.errors) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"/hidden_act", "/hidden_size", "/moe_layer_freq"}));
  EXPECT_FALSE(ImportHfConfig(json::array()).ok());
}

TEST(HfExport, ImportOfTheExportReproducesTheModelSection) {
  for (const char* name : {"deepseek_v3_config.json", "deepseek_v2_lite_config.json"}) {
    const LoadResult original = Import(ReadHf(name));
    ASSERT_TRUE(original.ok()) << name;
    const HfImportResult exported = ExportHfConfig(original.config);
    ASSERT_TRUE(exported.ok()) << name << ": " << (exported.errors.empty() ? "" : exported.errors[0].ToString());
    const LoadResult again = Import(exported.config);
    ASSERT_TRUE(again.ok()) << name;
    EXPECT_EQ(ToJson(again.config)["model"], ToJson(original.config)["model"]) << name;
    EXPECT_EQ(again.config.training.num_predict_tokens, original.config.training.num_predict_tokens);
  }
}

TEST(HfExport, WhatHfCannotExpressIsAnError) {
  const LoadResult r = LoadConfigText(R"({"model": {"norm_type": "layernorm", "dense_layer_interval": 3,
                                                    "mla": {"num_kv_heads": 8, "sliding_window": 128}}})");
  ASSERT_TRUE(r.ok());
  std::vector<std::string> paths;
  for (const auto& e : ExportHfConfig(r.config).errors) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"/model/norm_type", "/model/dense_layer_interval",
                                             "/model/mla/num_kv_heads", "/model/mla/sliding_window"}));
}

// Each router exports as the HF type that computes it: sigmoid as DeepseekV3, softmax as
// DeepseekV2 (which honours moe_layer_freq); the model type survives the round trip.
TEST(HfExport, TheRouterPicksTheHfModelType) {
  const LoadResult sigmoid = LoadConfigText(R"({"model": {"dense_layer_interval": 0,
      "moe": {"score_func": "sigmoid", "use_aux_loss_free": true}}})");
  const LoadResult softmax = LoadConfigText(R"({"model": {"dense_layer_interval": 2}})");
  ASSERT_TRUE(sigmoid.ok() && softmax.ok());
  const HfImportResult v3 = ExportHfConfig(sigmoid.config), v2 = ExportHfConfig(softmax.config);
  ASSERT_TRUE(v3.ok() && v2.ok());
  EXPECT_EQ(v3.config["model_type"], "deepseek_v3");
  EXPECT_EQ(v3.config["architectures"][0], "DeepseekV3ForCausalLM");
  EXPECT_EQ(v3.config["topk_method"], "noaux_tc");
  EXPECT_EQ(v2.config["model_type"], "deepseek_v2");
  EXPECT_EQ(v2.config["architectures"][0], "DeepseekV2ForCausalLM");
  EXPECT_EQ(v2.config["moe_layer_freq"], 2);
  EXPECT_EQ(v2.config["topk_method"], "greedy");
  for (const LoadResult* r : {&sigmoid, &softmax}) {
    const HfImportResult exported = ExportHfConfig(r->config);
    EXPECT_TRUE(CompareWithHfConfig(r->config, exported.config).empty());
    EXPECT_EQ(ToJson(Import(exported.config).config)["model"]["moe"]["score_func"], r->config.model.moe.score_func);
  }
}

// What neither HF type computes as dsv3 does is refused with the reason.
TEST(HfExport, RoutersHfComputesDifferentlyAreRefused) {
  const auto refused = [](const char* text) {
    const LoadResult r = LoadConfigText(text);
    EXPECT_TRUE(r.ok()) << text;
    std::vector<std::string> paths;
    for (const auto& e : ExportHfConfig(r.config).errors) {
      EXPECT_NE(e.message.find("cannot export as HF Deepseek"), std::string::npos) << e.message;
      paths.push_back(e.path);
    }
    return paths;
  };
  using Paths = std::vector<std::string>;
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 2, "moe": {"score_func": "sigmoid",
                       "use_aux_loss_free": true}}})"),
            Paths{"/model/dense_layer_interval"});  // native V3 ignores moe_layer_freq
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 0, "moe": {"score_func": "sigmoid"}}})"),
            Paths{"/model/moe/use_aux_loss_free"});  // V3 always adds the bias
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 0, "moe": {"score_func": "sigmoid",
                       "use_aux_loss_free": true, "num_experts_per_token": 1}}})"),
            Paths{"/model/moe/norm_topk_prob"});  // V3 normalises a single gate to 1
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 0, "moe": {"router_temperature": 2.0}}})"),
            Paths{"/model/moe/router_temperature"});
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 0, "moe": {"routed_scaling_factor": 2.5}}})"),
            Paths{"/model/moe/routed_scaling_factor"});  // V2 drops it for normalised gates
  EXPECT_EQ(refused(R"({"model": {"dense_layer_interval": 0, "norm_eps": 1e-5}})"), Paths{"/model/norm_eps"});
}

// DeepSeek-V2 with normalised gates ignores routed_scaling_factor: imported as 1, said so.
TEST(HfImport, DeepSeekV2NormalisedGatesImportWithoutTheScale) {
  json hf = ReadHf("deepseek_v2_lite_config.json");
  hf["norm_topk_prob"] = true;
  hf["routed_scaling_factor"] = 16.0;
  const HfImportResult r = ImportHfConfig(hf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.config["model"]["moe"]["routed_scaling_factor"], 1.0);
  ASSERT_FALSE(r.warnings.empty());
  EXPECT_EQ(r.warnings.back().path, "/routed_scaling_factor");
}

}  // namespace
}  // namespace dsv3::config
