// Building blocks: RoPE, MLA (training path vs compressed-cache path), router selection,
// capacity, bias update, balance losses, and finite-difference gradient checks in double.
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/model/layers.h"
#include "model_test_util.h"

namespace dsv3::model {
namespace {

using nlohmann::json;
using test::SmallModelConfig;

TEST(Rope, RotatesInterleavedPairsByPositionTimesFrequency) {
  // R = 4: pair (0,1) turns at frequency 1, pair (2,3) at theta^(-1/2).
  const torch::Tensor x = torch::tensor({1.0f, 0.0f, 1.0f, 0.0f}).view({1, 1, 1, 4});
  const double theta = 10000.0;
  const torch::Tensor y = ApplyRope(x, torch::tensor({3}), theta).flatten();
  const double f1 = std::pow(theta, -0.5);
  EXPECT_NEAR(y[0].item<float>(), std::cos(3.0), 1e-6);
  EXPECT_NEAR(y[1].item<float>(), std::sin(3.0), 1e-6);
  EXPECT_NEAR(y[2].item<float>(), std::cos(3.0 * f1), 1e-6);
  EXPECT_NEAR(y[3].item<float>(), std::sin(3.0 * f1), 1e-6);
}

TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  torch::manual_seed(0);
  const torch::Tensor q = torch::randn({1, 1, 1, 8}, torch::kDouble), k = torch::randn({1, 1, 1, 8}, torch::kDouble);
  const auto dot = [&](int64_t m, int64_t n) {
    return (ApplyRope(q, torch::tensor({m}), 500.0) * ApplyRope(k, torch::tensor({n}), 500.0)).sum().item<double>();
  };
  EXPECT_NEAR(dot(7, 3), dot(14, 10), 1e-10);
  EXPECT_NEAR(dot(0, 0), (q * k).sum().item<double>(), 1e-12);
}

struct MlaCase {
  const char* name;
  json mla;
};

class MlaCacheTest : public ::testing::TestWithParam<MlaCase> {};

TEST_P(MlaCacheTest, CachedPathEqualsTrainingPath) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", GetParam().mla}}}});
  torch::manual_seed(1);
  MultiHeadLatentAttention attn(cfg.model);
  for (auto& p : attn->parameters()) torch::nn::init::normal_(p, 0.0, 0.2);
  attn->eval();
  torch::NoGradGuard no_grad;
  const int64_t T = 12;
  const torch::Tensor x = torch::randn({2, T, 32});
  const torch::Tensor full = attn(x, AttentionContext{torch::arange(T), {}});
  // Prefill 5 tokens, then one, then the remaining 6: the cache grows across calls.
  LatentCache cache;
  const torch::Tensor cached = torch::cat({attn->ForwardCached(x.narrow(1, 0, 5), cache),
                                           attn->ForwardCached(x.narrow(1, 5, 1), cache),
                                           attn->ForwardCached(x.narrow(1, 6, 6), cache)},
                                          1);
  EXPECT_EQ(cache.length, T);
  EXPECT_EQ(cache.c_kv_BSC.sizes(), (std::vector<int64_t>{2, T, 16}));  // only c_KV and k_R
  EXPECT_EQ(cache.k_rope_BSR.sizes(), (std::vector<int64_t>{2, T, 4}));
  EXPECT_LT((full - cached).abs().max().item<float>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, MlaCacheTest,
    ::testing::Values(MlaCase{"plain", json::object()}, MlaCase{"query_compression", {{"q_lora_rank", 12}}},
                      MlaCase{"gqa", {{"num_kv_heads", 2}}}, MlaCase{"sliding_window", {{"sliding_window", 5}}},
                      MlaCase{"no_rope", {{"use_rope", false}}}),
    [](const ::testing::TestParamInfo<MlaCase>& info) { return info.param.name; });

TEST(Mla, SlidingWindowHidesDistantTokens) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", {{"sliding_window", 3}}}}}});
  torch::manual_seed(2);
  MultiHeadLatentAttention attn(cfg.model);
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 8, 32});
  const torch::Tensor before = attn(x, AttentionContext{torch::arange(8), {}});
  x[0][1] += 5.0;  // token 1 is visible to positions 1..3 only
  const torch::Tensor after = attn(x, AttentionContext{torch::arange(8), {}});
  EXPECT_GT((after[0][3] - before[0][3]).abs().max().item<float>(), 1e-4);
  EXPECT_LT((after[0].narrow(0, 4, 4) - before[0].narrow(0, 4, 4)).abs().max().item<float>(), 1e-6);
  EXPECT_LT((after[0][0] - before[0][0]).abs().max().item<float>(), 1e-6);
}

// ---------------------------------------------------------------- router

config::ModelConfig RouterConfig(json moe) {
  json base = {{"num_experts", 16}, {"num_experts_per_token", 4}, {"router_noise_std", 0.0}};
  base.merge_patch(moe);
  return SmallModelConfig({{"model", {{"moe", base}}}}).model;
}

// Brute force: the experts a token gets, from its scores and the selection bias.
std::vector<int64_t> ReferenceSelection(const std::vector<double>& score, const std::vector<double>& bias,
                                        const config::MoeConfig& m) {
  const int64_t E = m.num_experts, G = m.n_group, per = E / G;
  std::vector<double> select(E);
  for (int64_t i = 0; i < E; ++i) select[i] = score[i] + (m.use_aux_loss_free ? bias[i] : 0.0);
  std::vector<std::pair<double, int64_t>> groups;
  for (int64_t g = 0; g < G; ++g) {
    std::vector<double> in(select.begin() + g * per, select.begin() + (g + 1) * per);
    std::sort(in.rbegin(), in.rend());
    groups.push_back({in[0] + (per > 1 ? in[1] : 0.0), g});
  }
  std::sort(groups.rbegin(), groups.rend());
  std::set<int64_t> eligible;
  for (int64_t j = 0; j < (G > 1 ? m.topk_group : G); ++j)
    for (int64_t i = 0; i < per; ++i) eligible.insert(groups[j].second * per + i);
  std::vector<std::pair<double, int64_t>> candidates;
  for (int64_t e : eligible) candidates.push_back({select[e], e});
  std::sort(candidates.rbegin(), candidates.rend());
  std::vector<int64_t> out;
  for (int64_t j = 0; j < m.num_experts_per_token; ++j) out.push_back(candidates[j].second);
  std::sort(out.begin(), out.end());
  return out;
}

void CheckAgainstReference(const config::ModelConfig& cfg, uint64_t seed) {
  torch::manual_seed(seed);
  Router router(cfg);
  torch::nn::init::normal_(router->weight, 0.0, 1.0);
  router->e_score_correction_bias.normal_(0.0, 0.5);
  const torch::Tensor x = torch::randn({64, 32});
  torch::NoGradGuard no_grad;
  const Routing r = router->Route(x, 0.0, false);
  const config::MoeConfig& m = cfg.moe;
  const torch::Tensor logits = torch::matmul(x.to(torch::kDouble), router->weight.to(torch::kDouble).t());
  const torch::Tensor scores = m.score_func == "sigmoid" ? torch::sigmoid(logits)
                                                          : torch::softmax(logits / m.router_temperature, -1);
  const torch::Tensor bias_t = router->e_score_correction_bias.to(torch::kDouble).contiguous();
  const std::vector<double> bias(bias_t.data_ptr<double>(), bias_t.data_ptr<double>() + 16);
  for (int64_t t = 0; t < 64; ++t) {
    const torch::Tensor row = scores[t].contiguous();
    const std::vector<double> s(row.data_ptr<double>(), row.data_ptr<double>() + 16);
    const std::vector<int64_t> expected = ReferenceSelection(s, bias, m);
    std::vector<int64_t> got(r.expert_XK[t].data_ptr<int64_t>(), r.expert_XK[t].data_ptr<int64_t>() + 4);
    // Gates: the scores of the selected experts (never the bias), normalised, scaled.
    double sum = 0;
    for (int64_t e : got) sum += s[e];
    for (int64_t j = 0; j < 4; ++j) {
      const double expected_gate = (m.norm_topk_prob ? s[got[j]] / sum : s[got[j]]) * m.routed_scaling_factor;
      EXPECT_NEAR(r.gate_XK[t][j].item<float>(), expected_gate, 1e-5) << "token " << t;
    }
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, expected) << "token " << t;
  }
}

TEST(Router, SoftmaxTopKMatchesBruteForce) {
  CheckAgainstReference(RouterConfig({{"score_func", "softmax"}, {"router_temperature", 0.7}}), 3);
}

TEST(Router, SigmoidGroupLimitedWithBiasMatchesBruteForce) {
  CheckAgainstReference(RouterConfig({{"score_func", "sigmoid"}, {"n_group", 4}, {"topk_group", 2},
                                      {"use_aux_loss_free", true}, {"routed_scaling_factor", 2.5}}),
                        4);
}

TEST(Router, UnnormalisedGatesWithoutBias) {
  CheckAgainstReference(RouterConfig({{"norm_topk_prob", false}, {"n_group", 2}, {"topk_group", 1}}), 5);
}

TEST(Router, BiasChangesSelectionButNotGateValues) {
  const config::ModelConfig cfg = RouterConfig({{"score_func", "sigmoid"}, {"use_aux_loss_free", true},
                                                {"num_experts_per_token", 1}, {"norm_topk_prob", false}});
  torch::manual_seed(6);
  Router router(cfg);
  torch::nn::init::normal_(router->weight, 0.0, 1.0);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({32, 32});
  router->e_score_correction_bias[7] = 10.0;  // expert 7 wins every selection
  const Routing r = router->Route(x, 0.0, false);
  const torch::Tensor expected_gate = torch::sigmoid(torch::matmul(x, router->weight.t()))
                                          .select(1, 7);
  EXPECT_TRUE(r.expert_XK.eq(7).all().item<bool>());
  EXPECT_LT((r.gate_XK.squeeze(1) - expected_gate).abs().max().item<float>(), 1e-6);
  EXPECT_LT(r.gate_XK.max().item<float>(), 1.0f);  // a sigmoid score, not score + 10
}

TEST(Router, CapacityDropsExactlyTheLowestGateOverflow) {
  const config::ModelConfig cfg =
      RouterConfig({{"num_experts", 8}, {"num_experts_per_token", 2}, {"capacity_factor", 1.0},
                    {"min_expert_capacity", 2}});
  torch::manual_seed(7);
  Router router(cfg);
  torch::nn::init::normal_(router->weight, 0.0, 1.0);
  torch::NoGradGuard no_grad;
  router->weight[0].add_(1.5);  // skew: many tokens want expert 0
  const torch::Tensor x = torch::randn({40, 32}).abs();
  const Routing r = router->Route(x, 0.0, /*apply_capacity=*/true);
  const int64_t capacity = std::max<int64_t>(2, static_cast<int64_t>(std::ceil(40.0 * 2 / 8 * 1.0)));  // 10
  int64_t total_dropped = 0;
  for (int64_t e = 0; e < 8; ++e) {
    std::vector<float> kept, dropped;
    for (int64_t t = 0; t < 40; ++t)
      for (int64_t j = 0; j < 2; ++j)
        if (r.expert_XK[t][j].item<int64_t>() == e)
          (r.keep_XK[t][j].item<bool>() ? kept : dropped).push_back(r.gate_XK[t][j].item<float>());
    const int64_t assigned = static_cast<int64_t>(kept.size() + dropped.size());
    EXPECT_EQ(static_cast<int64_t>(kept.size()), std::min(assigned, capacity)) << "expert " << e;
    if (!kept.empty() && !dropped.empty()) {
      EXPECT_GE(*std::min_element(kept.begin(), kept.end()), *std::max_element(dropped.begin(), dropped.end()));
    }
    total_dropped += static_cast<int64_t>(dropped.size());
  }
  EXPECT_GT(total_dropped, 0);  // the skew really overflowed expert 0
}

// ---------------------------------------------------------------- MoE layer

TEST(MoE, BiasUpdateMovesTowardBalance) {
  const config::ModelConfig cfg = RouterConfig({{"num_experts", 4}, {"num_experts_per_token", 1},
                                                {"use_aux_loss_free", true}, {"bias_update_speed", 0.01}});
  MoE moe(cfg);
  moe->UpdateBias(torch::tensor({10, 0, 5, 5}));  // mean 5
  const torch::Tensor b = moe->gate->e_score_correction_bias;
  EXPECT_FLOAT_EQ(b[0].item<float>(), -0.01f);  // overloaded: down
  EXPECT_FLOAT_EQ(b[1].item<float>(), 0.01f);   // idle: up
  EXPECT_FLOAT_EQ(b[2].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(b[3].item<float>(), 0.0f);
}

TEST(MoE, RepeatedBiasUpdatesBalanceASkewedRouter) {
  const config::ModelConfig cfg =
      RouterConfig({{"num_experts", 8}, {"num_experts_per_token", 2}, {"score_func", "sigmoid"},
                    {"use_aux_loss_free", true}, {"bias_update_speed", 0.02}});
  torch::manual_seed(8);
  MoE moe(cfg);
  for (auto& p : moe->parameters()) torch::nn::init::normal_(p, 0.0, 0.1);
  moe->train();
  torch::NoGradGuard no_grad;
  moe->gate->weight[0].add_(0.5);
  const torch::Tensor x = torch::randn({1, 256, 32}).abs();
  const auto imbalance = [&] {
    moe(x);
    const torch::Tensor load = moe->TakeStats().tokens_per_expert_E.to(torch::kFloat);
    return (load.max() / load.mean()).item<float>();
  };
  const float start = imbalance();
  for (int i = 0; i < 200; ++i) {
    moe(x);
    moe->UpdateBias(moe->TakeStats().tokens_per_expert_E);
  }
  const float end = imbalance();
  EXPECT_GT(start, 2.0f);
  EXPECT_LT(end, 1.3f) << "max/mean load went from " << start << " to " << end;
}

TEST(MoE, BalanceLossesMatchHandComputedValues) {
  // 1 sequence of 4 tokens, 4 experts, top-1: experts 0, 0, 1, 2.
  Routing r;
  r.expert_XK = torch::tensor({0, 0, 1, 2}, torch::kLong).view({4, 1});
  r.probs_XE = torch::tensor({0.7, 0.1, 0.1, 0.1,  //
                              0.4, 0.3, 0.2, 0.1,  //
                              0.2, 0.5, 0.2, 0.1,  //
                              0.1, 0.1, 0.6, 0.2},
                             torch::kDouble)
                   .view({4, 4});
  // Mean probabilities P = (0.35, 0.25, 0.275, 0.125); assignment fractions f = (.5, .25, .25, 0).
  config::MoeConfig m;
  m.num_experts = 4;
  m.num_experts_per_token = 1;
  m.router_aux_loss_weight = 0.1;
  m.seq_aux_loss_weight = 0.0;
  m.balance_loss_type = "load";
  EXPECT_NEAR(ComputeBalanceLoss(m, r, 1, 4).item<double>(), 0.1 * 4 * (0.5 * 0.35 + 0.25 * 0.25 + 0.25 * 0.275), 1e-12);
  m.balance_loss_type = "entropy";
  const double entropy = -(0.35 * std::log(0.35) + 0.25 * std::log(0.25) + 0.275 * std::log(0.275) +
                           0.125 * std::log(0.125));
  EXPECT_NEAR(ComputeBalanceLoss(m, r, 1, 4).item<double>(), 0.1 * (std::log(4.0) - entropy), 1e-12);
  m.balance_loss_type = "none";
  EXPECT_EQ(ComputeBalanceLoss(m, r, 1, 4).item<double>(), 0.0);
  // Sequence-wise, eq. (17)-(20): f_i = E/(k T) * count_i = (2, 1, 1, 0).
  m.seq_aux_loss_weight = 0.01;
  EXPECT_NEAR(ComputeBalanceLoss(m, r, 1, 4).item<double>(), 0.01 * (2 * 0.35 + 1 * 0.25 + 1 * 0.275), 1e-12);
}

TEST(MoE, StatisticsCountEveryKeptAssignment) {
  const config::ModelConfig cfg =
      RouterConfig({{"num_experts", 8}, {"num_experts_per_token", 2}, {"capacity_factor", 0.5},
                    {"min_expert_capacity", 1}});
  torch::manual_seed(9);
  MoE moe(cfg);
  for (auto& p : moe->parameters()) torch::nn::init::normal_(p, 0.0, 0.3);
  moe->train();
  moe(torch::randn({2, 16, 32}));
  const MoeStats s = moe->TakeStats();
  EXPECT_EQ(s.assignments, 64);
  EXPECT_GT(s.dropped, 0);  // capacity 4 per expert for 64 assignments over 8 experts
  EXPECT_EQ(s.tokens_per_expert_E.sum().item<int64_t>(), 64 - s.dropped);
  EXPECT_LE(s.tokens_per_expert_E.max().item<int64_t>(), 4);
  EXPECT_EQ(moe->TakeStats().assignments, 0);  // taken
}

// ---------------------------------------------------------------- gradients

// Central finite differences in double against autograd for `count` random entries of
// every parameter (and the input) of `f`.
void GradCheck(torch::nn::Module& module, torch::Tensor input, const std::function<torch::Tensor()>& f,
               double tolerance = 1e-6) {
  module.to(torch::kDouble);
  input.set_requires_grad(true);
  module.zero_grad();
  f().backward();
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"input", input}};
  for (auto& p : module.named_parameters()) tensors.emplace_back(p.key(), p.value());
  std::mt19937 rng(11);
  for (auto& [name, t] : tensors) {
    ASSERT_TRUE(t.grad().defined()) << name;
    const torch::Tensor grad = t.grad().flatten().clone();
    torch::Tensor flat = t.detach().view({-1});
    for (int i = 0; i < 3; ++i) {
      const int64_t j = std::uniform_int_distribution<int64_t>(0, flat.numel() - 1)(rng);
      const double h = 1e-6, original = flat[j].item<double>();
      double plus, minus;
      {
        torch::NoGradGuard no_grad;
        flat[j] = original + h;
        plus = f().item<double>();
        flat[j] = original - h;
        minus = f().item<double>();
        flat[j] = original;
      }
      const double numeric = (plus - minus) / (2 * h);
      EXPECT_NEAR(grad[j].item<double>(), numeric, tolerance * std::max(1.0, std::fabs(numeric)))
          << name << "[" << j << "]";
    }
  }
}

TEST(GradCheck, MultiHeadLatentAttention) {
  const config::Config cfg = SmallModelConfig({{"model", {{"mla", {{"q_lora_rank", 12}, {"num_kv_heads", 2}}}}}});
  torch::manual_seed(12);
  MultiHeadLatentAttention attn(cfg.model);
  attn->train();
  const torch::Tensor x = torch::randn({2, 5, 32}, torch::kDouble);
  const torch::Tensor w = torch::randn({2, 5, 32}, torch::kDouble);
  GradCheck(*attn, x, [&] { return (attn(x, AttentionContext{torch::arange(5), {}}) * w).sum(); });
}

TEST(GradCheck, MoEWithSharedExpertAndBalanceLoss) {
  const config::ModelConfig cfg = RouterConfig({{"num_experts", 4}, {"num_experts_per_token", 2},
                                                {"score_func", "softmax"}, {"balance_loss_type", "load"},
                                                {"router_aux_loss_weight", 0.1}, {"seq_aux_loss_weight", 0.05}});
  torch::manual_seed(13);
  MoE moe(cfg);
  for (auto& p : moe->parameters()) torch::nn::init::normal_(p, 0.0, 0.3);
  moe->train();
  const torch::Tensor x = torch::randn({2, 3, 32}, torch::kDouble);
  const torch::Tensor w = torch::randn({2, 3, 32}, torch::kDouble);
  GradCheck(*moe, x, [&] {
    MoeOutput out = moe(x);
    return (out.y_BTD * w).sum() + out.balance_loss;
  });
}

// A tensor-parallel group of one rank: the vocabulary-parallel losses must then be the plain
// cross entropy, with its gradients, whatever the chunking.
class OneRankGroup final : public TensorParallelGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduce(torch::Tensor&, bool) override {}
  torch::Tensor AllGather(const torch::Tensor& t) override { return t.unsqueeze(0); }
};

TEST(TensorParallel, VocabParallelLossesAreCrossEntropyWithItsGradients) {
  torch::manual_seed(3);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  const torch::Tensor h0 = torch::randn({10, 8}, f64), w0 = torch::randn({12, 8}, f64);
  const torch::Tensor targets = torch::tensor({1, 5, -100, 11, 0, 3, 3, 7, 9, 2}, torch::kLong);
  const auto reference = [&](torch::Tensor& gh, torch::Tensor& gw) {
    torch::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        torch::matmul(h, w.t()), targets, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    (loss * 1.5).backward();
    gh = h.grad();
    gw = w.grad();
    return loss.item<double>();
  };
  torch::Tensor ref_h, ref_w;
  const double ref = reference(ref_h, ref_w);
  OneRankGroup tp;
  for (int64_t chunk : {3, 4, 1024}) {  // uneven chunks, one chunk
    torch::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    torch::Tensor loss = VocabParallelLinearCrossEntropy(h, w, targets, -100, &tp, chunk);
    (loss * 1.5).backward();
    EXPECT_NEAR(loss.item<double>(), ref, 1e-12) << "chunk " << chunk;
    EXPECT_TRUE(torch::allclose(h.grad(), ref_h, 1e-10, 1e-12)) << "chunk " << chunk;
    EXPECT_TRUE(torch::allclose(w.grad(), ref_w, 1e-10, 1e-12)) << "chunk " << chunk;
  }
  torch::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  torch::Tensor loss = VocabParallelCrossEntropy(torch::matmul(h, w.t()), targets, -100, &tp);
  (loss * 1.5).backward();
  EXPECT_NEAR(loss.item<double>(), ref, 1e-12);
  EXPECT_TRUE(torch::allclose(h.grad(), ref_h, 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(w.grad(), ref_w, 1e-10, 1e-12));
}

}  // namespace
}  // namespace dsv3::model
