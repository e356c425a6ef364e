// The full model: causality, MTP gradients, overfitting one batch, parameter counts against
// the estimator, bf16, activation checkpointing, generation, HF names, router annealing.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/model.h"
#include "dsv3/model/torch_compat.h"
#include "hf_reference.h"
#include "model_test_util.h"

namespace dsv3::model {
namespace {

using nlohmann::json;
using test::SmallModelConfig;

torch::Tensor RandomTokens(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {batch, length}, torch::kLong);
}

TEST(Model, IsCausal) {
  const config::Config cfg = SmallModelConfig();
  torch::manual_seed(20);
  DeepSeekV3 model(cfg);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor tokens = RandomTokens(2, 12, 64, 21);
  const torch::Tensor before = model->Logits(tokens);
  tokens[0][7] = (tokens[0][7].item<int64_t>() + 1) % 64;
  const torch::Tensor after = model->Logits(tokens);
  // Unchanged up to fp32 rounding (1e-6): the MoE batches all tokens of the batch into one
  // matmul per expert, so a different routing elsewhere can change the summation blocking.
  EXPECT_LT((after[0].narrow(0, 0, 7) - before[0].narrow(0, 0, 7)).abs().max().item<float>(), 1e-6);
  EXPECT_GT((after[0].narrow(0, 7, 5) - before[0].narrow(0, 7, 5)).abs().max().item<float>(), 1e-3);
  EXPECT_LT((after[1] - before[1]).abs().max().item<float>(), 1e-6);  // other sequence untouched
}

TEST(Model, LossCombinesMainMtpAndBalance) {
  const config::Config cfg = SmallModelConfig({{"model", {{"moe", {{"balance_loss_type", "load"},
                                                                    {"router_aux_loss_weight", 0.01}}}}},
                                               {"training", {{"num_predict_tokens", 3}, {"mtp_loss_weight", 0.5}}}});
  torch::manual_seed(22);
  DeepSeekV3 model(cfg);
  const ModelOutput out = model->forward(RandomTokens(2, 13, 64, 23));
  EXPECT_EQ(model->mtp->size(), 2u);
  EXPECT_EQ(out.tokens, 2 * 12);
  EXPECT_NEAR(out.main_loss.item<float>(), std::log(64.0), 0.3);  // near-uniform at init
  EXPECT_NEAR(out.mtp_loss.item<float>(), std::log(64.0), 0.3);
  // 3 MoE layers (1 main + 2 MTP blocks), each ~ 0.01 x 1 at balance.
  EXPECT_NEAR(out.balance_loss.item<float>(), 0.03, 0.015);
  EXPECT_NEAR(out.loss.item<float>(),
              (out.main_loss + 0.5 * out.mtp_loss + out.balance_loss).item<float>(), 1e-6);
}

TEST(Model, GradCheckThroughMtpInDouble) {
  const config::Config cfg = SmallModelConfig({{"model", {{"vocab_size", 16}}}});
  torch::manual_seed(24);
  DeepSeekV3 model(cfg);
  model->to(torch::kDouble);
  model->train();
  const torch::Tensor tokens = RandomTokens(1, 6, 16, 25);
  model->zero_grad();
  model->forward(tokens).mtp_loss.backward();
  // The MTP loss reaches the MTP module, the shared embedding and head, and the trunk.
  auto& mtp = *model->mtp[0]->as<MtpModuleImpl>();
  for (torch::Tensor t : {mtp.eh_proj->weight, model->embed_tokens->weight, model->lm_head->weight,
                          model->layers[0]->as<DecoderLayerImpl>()->self_attn->o_proj->weight}) {
    const torch::Tensor grad = t.grad().flatten().clone();
    torch::Tensor flat = t.detach().view({-1});
    for (int64_t j : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const double original = flat[j].item<double>(), h = 1e-6;
      double plus, minus;
      {
        torch::NoGradGuard no_grad;
        flat[j] = original + h;
        plus = model->forward(tokens).mtp_loss.item<double>();
        flat[j] = original - h;
        minus = model->forward(tokens).mtp_loss.item<double>();
        flat[j] = original;
      }
      const double numeric = (plus - minus) / (2 * h);
      EXPECT_NEAR(grad[j].item<double>(), numeric, 1e-6 * std::max(1.0, std::fabs(numeric)));
    }
  }
}

TEST(Model, OverfitsOneFixedBatch) {
  const config::Config cfg = SmallModelConfig();
  torch::manual_seed(26);
  DeepSeekV3 model(cfg);
  model->train();
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
  const torch::Tensor tokens = RandomTokens(4, 17, 64, 27);
  float first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    optimizer.zero_grad();
    ModelOutput out = model->forward(tokens);
    out.loss.backward();
    optimizer.step();
    if (step == 0) first = out.main_loss.item<float>();
    last = out.main_loss.item<float>();
  }
  EXPECT_LT(last, 0.1f * first) << "main loss " << first << " -> " << last;
}

TEST(Model, ParameterCountEqualsTheEstimatorForNanoAndTiny) {
  for (const char* name : {"nano", "tiny"}) {
    const config::LoadResult r =
        config::LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_" + name + ".json");
    ASSERT_TRUE(r.ok());
    DeepSeekV3 model(r.config);
    EXPECT_EQ(model->NumParameters(), config::EstimateConfig(r.config).params.total) << name;
  }
}

// Small and large do not fit a test's memory whole: build one layer of each kind they use
// (the exact modules of the config) and add them up with the layer plan's multiplicities.
TEST(Model, ParameterCountEqualsTheEstimatorForSmallAndLargeLayerByLayer) {
  for (const char* name : {"small", "large"}) {
    const config::LoadResult r =
        config::LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_" + name + ".json");
    ASSERT_TRUE(r.ok());
    const config::Config& c = r.config;
    const auto count = [](torch::nn::Module& m) {
      int64_t n = 0;
      for (const auto& p : m.parameters()) n += p.numel();
      return n;
    };
    torch::NoGradGuard no_grad;
    int64_t total = 0;
    {
      DecoderLayer dense(c.model, false);
      total += count(*dense) * static_cast<int64_t>(std::count(c.derived.layer_is_moe.begin(), c.derived.layer_is_moe.end(), false));
    }
    {
      DecoderLayer moe(c.model, true);
      total += count(*moe) * static_cast<int64_t>(std::count(c.derived.layer_is_moe.begin(), c.derived.layer_is_moe.end(), true));
    }
    {
      MtpModule mtp(c.model, true);
      total += count(*mtp) * (c.training.num_predict_tokens - 1);
    }
    const int64_t d = c.model.mla.d_model, V = c.model.vocab_size;
    total += V * d /*embed*/ + d /*norm*/ + (c.model.tie_word_embeddings ? 0 : V * d);
    EXPECT_EQ(total, config::EstimateConfig(c).params.total) << name;
  }
}

TEST(Model, RunsForwardAndBackwardInBf16) {
  const config::Config cfg = SmallModelConfig();
  torch::manual_seed(28);
  DeepSeekV3 model(cfg);
  model->to(torch::kBFloat16);
  model->train();
  const torch::Tensor tokens = RandomTokens(2, 9, 64, 29);
  ModelOutput out = model->forward(tokens);
  EXPECT_FALSE(out.logits_BTV.defined());  // the fused loss never materialises them
  EXPECT_EQ(model->Logits(tokens.narrow(1, 0, 8)).scalar_type(), torch::kBFloat16);
  out.loss.backward();
  EXPECT_TRUE(std::isfinite(out.loss.item<float>()));
  EXPECT_NEAR(out.main_loss.item<float>(), std::log(64.0), 0.5);
  const torch::Tensor g = model->layers[1]->as<DecoderLayerImpl>()->moe->experts->gate_proj.grad();
  EXPECT_EQ(g.scalar_type(), torch::kBFloat16);
  EXPECT_GT(g.abs().sum().item<float>(), 0.0f);
}

TEST(Model, ActivationCheckpointingGivesTheSameGradients) {
  // Dropout and router noise on: the recomputation must replay the same random numbers.
  const json overrides = {
      {"model", {{"mla", {{"attn_dropout", 0.2}}}, {"moe", {{"dropout", 0.2}, {"router_noise_std", 0.5}}}}}};
  config::Config plain_cfg = SmallModelConfig(overrides);
  config::Config ckpt_cfg = plain_cfg;
  ckpt_cfg.model.gradient_checkpointing = true;
  torch::manual_seed(30);
  DeepSeekV3 plain(plain_cfg), ckpt(ckpt_cfg);
  {
    torch::NoGradGuard no_grad;
    auto src = plain->named_parameters();
    for (auto& p : ckpt->named_parameters()) p.value().copy_(src[p.key()]);
  }
  const torch::Tensor tokens = RandomTokens(2, 11, 64, 31);
  // Packed documents too: the recomputation must see the same document mask.
  const torch::Tensor segments = (torch::arange(11, torch::kLong) >= 4).to(torch::kLong).unsqueeze(0).expand({2, 11});
  plain->train();
  ckpt->train();
  torch::manual_seed(32);
  const ModelOutput a = plain->forward(tokens, segments);
  a.loss.backward();
  torch::manual_seed(32);
  const ModelOutput b = ckpt->forward(tokens, segments);
  b.loss.backward();
  EXPECT_EQ(a.loss.item<float>(), b.loss.item<float>());
  auto grads = plain->named_parameters();
  int compared = 0;
  for (auto& p : ckpt->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_LT((p.value().grad() - grads[p.key()].grad()).abs().max().item<float>(), 1e-6) << p.key();
    ++compared;
  }
  EXPECT_GT(compared, 30);
  // Statistics were counted once, not again during recomputation.
  const auto stats_a = plain->TakeMoeStats(), stats_b = ckpt->TakeMoeStats();
  ASSERT_EQ(stats_a.size(), stats_b.size());
  for (size_t i = 0; i < stats_a.size(); ++i) EXPECT_EQ(stats_a[i].assignments, stats_b[i].assignments);

  // Without packed documents too (no segments tensor at all).
  plain->zero_grad();
  ckpt->zero_grad();
  torch::manual_seed(34);
  const ModelOutput c = plain->forward(tokens);
  c.loss.backward();
  torch::manual_seed(34);
  const ModelOutput d = ckpt->forward(tokens);
  d.loss.backward();
  EXPECT_EQ(c.loss.item<float>(), d.loss.item<float>());
  grads = plain->named_parameters();
  for (auto& p : ckpt->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_LT((p.value().grad() - grads[p.key()].grad()).abs().max().item<float>(), 1e-6) << p.key();
  }
}

TEST(Model, GreedyGenerationMatchesFullRecomputation) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", {{"q_lora_rank", 8}}}}}});
  torch::manual_seed(33);
  DeepSeekV3 model(cfg);
  for (auto& p : model->parameters()) {
    torch::NoGradGuard no_grad;
    p.normal_(0.0, 0.3);  // a peaked distribution, so argmax is not decided by rounding
  }
  const std::vector<int64_t> prompt = {5, 17, 3, 42};
  const std::vector<int64_t> generated = model->Generate(prompt, 10);
  ASSERT_EQ(generated.size(), 10u);
  std::vector<int64_t> sequence = prompt;
  model->eval();
  torch::NoGradGuard no_grad;
  for (int64_t token : generated) {
    const torch::Tensor logits = model->Logits(torch::tensor(sequence).view({1, -1}));
    EXPECT_EQ(logits[0][logits.size(1) - 1].argmax().item<int64_t>(), token);
    sequence.push_back(token);
  }
}

TEST(Model, SamplingIsSeededAndTopPOfZeroIsGreedy) {
  const config::Config cfg = SmallModelConfig();
  torch::manual_seed(34);
  DeepSeekV3 model(cfg);
  SamplingOptions sample;
  sample.temperature = 1.0;
  sample.seed = 7;
  const auto a = model->Generate({1, 2, 3}, 12, sample), b = model->Generate({1, 2, 3}, 12, sample);
  EXPECT_EQ(a, b);
  sample.seed = 8;
  EXPECT_NE(model->Generate({1, 2, 3}, 12, sample), a);
  sample.top_p = 1e-9;  // only the most likely token survives the nucleus
  EXPECT_EQ(model->Generate({1, 2, 3}, 12, sample), model->Generate({1, 2, 3}, 12));
  SamplingOptions stop;
  const std::vector<int64_t> greedy = model->Generate({1, 2, 3}, 12);
  stop.eos_token = greedy[3];
  const auto stopped = model->Generate({1, 2, 3}, 12, stop);
  EXPECT_EQ(stopped.back(), greedy[3]);
  EXPECT_LE(stopped.size(), 4u);
}

TEST(Model, Fp8KvCacheIsAClearErrorWithoutFloat8OrCloseWithIt) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", {{"use_fp8_kv", true}}}}}});
  if (!compat::kHasFloat8) {
    try {
      DeepSeekV3 model(cfg);
      FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("/model/mla/use_fp8_kv"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("LibTorch >= 2.1"), std::string::npos) << e.what();
    }
    return;
  }
  config::Config plain_cfg = cfg;
  plain_cfg.model.mla.use_fp8_kv = false;
  torch::manual_seed(35);
  DeepSeekV3 fp8(cfg), plain(plain_cfg);
  {
    torch::NoGradGuard no_grad;
    auto src = plain->named_parameters();
    for (auto& p : fp8->named_parameters()) p.value().copy_(src[p.key()]);
  }
  fp8->eval();
  plain->eval();
  torch::NoGradGuard no_grad;
  std::vector<LatentCache> c1(2), c2(2);
  const torch::Tensor tokens = RandomTokens(1, 10, 64, 36);
  const torch::Tensor a = fp8->LogitsCached(tokens, c1), b = plain->LogitsCached(tokens, c2);
  EXPECT_EQ(c1[0].c_kv_BSC.scalar_type(), compat::Float8E4M3());
  EXPECT_LT((a - b).abs().max().item<float>(), 0.05f);
}

TEST(Model, RouterNoiseAnnealsToZero) {
  const config::Config cfg = SmallModelConfig({{"model", {{"moe", {{"router_noise_std", 1.0}}}}}});
  torch::manual_seed(37);
  DeepSeekV3 model(cfg);
  model->train();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = RandomTokens(2, 9, 64, 38);
  model->SetTrainingProgress(0.0);
  EXPECT_NE(model->forward(tokens).loss.item<float>(), model->forward(tokens).loss.item<float>());
  model->SetTrainingProgress(1.0);
  EXPECT_EQ(model->forward(tokens).loss.item<float>(), model->forward(tokens).loss.item<float>());
}

TEST(HfStateDict, NamesAndSizesMatchTheHfCheckpointLayout) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", {{"q_lora_rank", 8}}}}},
                                               {"training", {{"num_predict_tokens", 3}}}});
  DeepSeekV3 model(cfg);
  std::map<std::string, int64_t> ours;
  for (const auto& [name, t] : ToHfStateDict(*model)) ours[name] = t.numel();
  EXPECT_EQ(ours, test::HfTensors(cfg.model, 2));
  // Orientation as in HF's nn.Linear: out_features x in_features.
  for (const auto& [name, t] : ToHfStateDict(*model)) {
    if (name == "model.layers.1.self_attn.kv_a_proj_with_mqa.weight") {
      EXPECT_EQ(t.sizes(), (std::vector<int64_t>{16 + 4, 32}));
    }
    if (name == "model.layers.1.mlp.experts.3.down_proj.weight") {
      EXPECT_EQ(t.sizes(), (std::vector<int64_t>{32, 16}));
    }
  }
}

TEST(HfStateDict, RoundTripGivesTheSameLogitsAndMismatchesAreNamed) {
  config::Config cfg = SmallModelConfig({{"model", {{"moe", {{"use_aux_loss_free", true}, {"score_func", "sigmoid"}}}}}});
  torch::manual_seed(39);
  DeepSeekV3 source(cfg);
  source->layers[1]->as<DecoderLayerImpl>()->moe->gate->e_score_correction_bias.normal_();
  torch::manual_seed(40);
  DeepSeekV3 target(cfg);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, t] : ToHfStateDict(*source)) tensors[name] = t.clone();
  EXPECT_EQ(tensors.count("model.layers.1.mlp.gate.e_score_correction_bias"), 1u);
  LoadHfStateDict(*target, tensors);
  source->eval();
  target->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = RandomTokens(1, 8, 64, 41);
  EXPECT_EQ((source->Logits(tokens) - target->Logits(tokens)).abs().max().item<float>(), 0.0f);

  tensors.erase("model.norm.weight");
  tensors["model.layers.0.self_attn.q_proj.weight"] = torch::zeros({3, 3});
  tensors["model.extra.weight"] = torch::zeros({1});
  try {
    LoadHfStateDict(*target, tensors);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("missing: model.norm.weight"), std::string::npos) << what;
    EXPECT_NE(what.find("shape of model.layers.0.self_attn.q_proj.weight"), std::string::npos) << what;
    EXPECT_NE(what.find("unexpected: model.extra.weight"), std::string::npos) << what;
  }
}

TEST(Model, ResetAttentionMaskIsolatesPackedDocuments) {
  const config::Config cfg = SmallModelConfig();
  torch::manual_seed(42);
  DeepSeekV3 model(cfg);
  model->eval();
  torch::NoGradGuard no_grad;
  // Document A (5 tokens) then document B (7 tokens) packed into one window of 12.
  const torch::Tensor tokens = RandomTokens(1, 12, 64, 43);
  const torch::Tensor segments = torch::cat({torch::zeros({1, 5}, torch::kLong), torch::ones({1, 7}, torch::kLong)}, 1);
  // Inputs: the window's first 11 tokens, as forward() takes them.
  const torch::Tensor packed = model->Logits(tokens.narrow(1, 0, 11), segments.narrow(1, 0, 11));
  const torch::Tensor a = model->Logits(tokens.narrow(1, 0, 5)), b = model->Logits(tokens.narrow(1, 5, 6));
  // Each document sees only itself, from position 0: as if it were alone (fp32 rounding).
  EXPECT_LT((packed.narrow(1, 0, 5) - a).abs().max().item<float>(), 1e-5);
  EXPECT_LT((packed.narrow(1, 5, 6) - b).abs().max().item<float>(), 1e-5);
  // Without the mask, B's tokens attend to A and differ.
  const torch::Tensor plain = model->Logits(tokens.narrow(1, 0, 11));
  EXPECT_GT((plain.narrow(1, 5, 6) - b).abs().max().item<float>(), 1e-3);
}

// model.fused_kernels changes how, not what: the same weights give the same losses and the
// same gradients with dsv3_kernels as with the plain LibTorch ops, through MLA with packed
// documents, MoE with capacity dropping and the aux-loss-free bias, and MTP (fp64, so the
// comparison is tight; kernels_test holds each kernel to fp32 and bf16 tolerances).
TEST(Model, FusedKernelsGiveTheReferenceLossesAndGradients) {
  nlohmann::json overrides = {
      {"model", {{"moe", {{"capacity_factor", 1.0}, {"score_func", "sigmoid"}, {"use_aux_loss_free", true},
                          {"seq_aux_loss_weight", 0.001}}}}}};
  config::Config fused_cfg = SmallModelConfig(overrides), plain_cfg = fused_cfg;
  fused_cfg.model.fused_kernels = true;
  plain_cfg.model.fused_kernels = false;
  torch::manual_seed(5);
  DeepSeekV3 fused(fused_cfg);
  torch::manual_seed(5);
  DeepSeekV3 plain(plain_cfg);
  for (DeepSeekV3* m : {&fused, &plain}) {
    (*m)->to(torch::kDouble);
    (*m)->train();
  }
  const torch::Tensor tokens = RandomTokens(3, 17, 64, 6);
  const torch::Tensor segments = torch::cat({torch::zeros({3, 7}, torch::kLong), torch::ones({3, 10}, torch::kLong)}, 1);
  ModelOutput a = fused->forward(tokens, segments), b = plain->forward(tokens, segments);
  EXPECT_NEAR(a.main_loss.item<double>(), b.main_loss.item<double>(), 1e-9 * std::abs(b.main_loss.item<double>()));
  EXPECT_NEAR(a.mtp_loss.item<double>(), b.mtp_loss.item<double>(), 1e-9 * std::abs(b.mtp_loss.item<double>()));
  EXPECT_NEAR(a.balance_loss.item<double>(), b.balance_loss.item<double>(), 1e-12);
  a.loss.backward();
  b.loss.backward();
  const auto pa = fused->named_parameters(), pb = plain->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  int64_t compared = 0;
  for (const auto& p : pa) {
    const torch::Tensor ga = p.value().grad(), gb = pb[p.key()].grad();
    ASSERT_EQ(ga.defined(), gb.defined()) << p.key();
    if (!ga.defined()) continue;
    const double scale = gb.abs().max().item<double>() + 1e-12;
    EXPECT_LT((ga - gb).abs().max().item<double>() / scale, 1e-9) << p.key();
    ++compared;
  }
  EXPECT_GT(compared, 20);
  const auto sa = fused->TakeMoeStats(), sb = plain->TakeMoeStats();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].dropped, sb[i].dropped) << "MoE layer " << i;
    EXPECT_TRUE(torch::equal(sa[i].tokens_per_expert_E, sb[i].tokens_per_expert_E)) << "MoE layer " << i;
  }
}

}  // namespace
}  // namespace dsv3::model
