// The trainer in-process on a small model and a synthetic corpus: exact resume, gradient
// accumulation equivalence, metrics.jsonl and TensorBoard contents, clear errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/data/synth.h"
#include "dsv3/train/inference.h"
#include "dsv3/train/pipeline_schedule.h"
#include "dsv3/train/reporter.h"
#include "dsv3/train/tfevents.h"
#include "dsv3/train/trainer.h"
#include "test_util.h"

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    corpus_ = new test::TempDir();
    data::SynthesizeDolma((corpus_->path() / "corpus").string(), 150, 1);
  }
  static void TearDownTestSuite() { delete corpus_; }

  // A 2-layer model with dropout and router noise on (so exact resume proves the RNG state
  // is restored), 3 sources, 6 steps of 8 x 16 tokens.
  config::Config Config(const fs::path& out, json overrides = json::object()) {
    json sources = json::array();
    for (const char* s : {"dolma_v1_6_cc", "dolma_v1_6_starcoder", "dolma_v1_6_openwebmath"}) {
      sources.push_back({{"subset", s}, {"paths", {(corpus_->path() / "corpus" / s / "*.json.gz").string()}}});
    }
    json cfg = {
        {"experiment_name", "trainer_test"},
        {"output_dir", out.string()},
        {"seed", 3},
        {"model", {{"num_layers", 2}, {"vocab_size", 272}, {"init_method_std", 0.02}, {"dense_layer_interval", 0},
                   {"first_k_dense_layers", 1},
                   {"mla", {{"d_model", 32}, {"d_latent", 16}, {"num_heads", 4}, {"max_context_length", 64},
                            {"attn_dropout", 0.1}}},
                   {"moe", {{"num_experts", 4}, {"num_experts_per_token", 2}, {"expert_intermediate_size", 32},
                            {"num_shared_experts", 1}, {"dropout", 0.1}, {"router_noise_std", 0.1},
                            {"score_func", "sigmoid"}, {"use_aux_loss_free", true}, {"capacity_factor", 1.5}}}}},
        {"training", {{"global_batch_size", 8}, {"micro_batch_size", 2}, {"seq_length", 16}, {"train_steps", 6},
                      {"learning_rate", 2e-3}, {"min_learning_rate", 2e-4}, {"lr_warmup_steps", 2},
                      {"use_bf16", false}, {"log_interval", 1}, {"eval_interval", 3}, {"save_interval", 3},
                      {"num_predict_tokens", 2}, {"intra_op_threads", 1}}},
        {"data", {{"sources", sources}, {"cache_dir", (corpus_->path() / "cache").string()},
                  {"preprocessing", {{"num_workers", 1}}}}},
        {"distributed", {{"backend", "gloo"}, {"zero_stage", 0}}},
        {"checkpointing", {{"keep_last_n", 5}}},
        {"logging", {{"tensorboard", {{"enabled", true}, {"log_dir", (out / "tb").string()}}}, {"peak_tflops", 1.0}}},
        {"validation", {{"split_fraction", 0.05}, {"eval_batches", 2}, {"micro_batch_size", 2},
                        {"sample_tokens", 8}}},
    };
    cfg.merge_patch(overrides);
    const config::LoadResult r = config::LoadConfigText(cfg.dump());
    EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
    return r.config;
  }

  TrainResult Train(const config::Config& cfg, TrainerOptions options = {}) {
    std::vector<std::unique_ptr<Reporter>> reporters;
    reporters.push_back(MakeJsonlReporter(cfg.output_dir + "/metrics.jsonl"));
    reporters.push_back(MakeTensorBoardReporter(cfg.logging.tensorboard.log_dir));
    Trainer trainer(cfg, options, std::move(reporters));
    return trainer.Run();
  }

  static test::TempDir* corpus_;
  test::TempDir dir_;
};

test::TempDir* TrainerTest::corpus_ = nullptr;

TEST_F(TrainerTest, ResumeIsExact) {
  const TrainResult straight = Train(Config(dir_.path() / "straight"));
  ASSERT_TRUE(straight.finished);
  ASSERT_EQ(straight.losses.size(), 6u);

  const config::Config cfg = Config(dir_.path() / "resumed");
  TrainerOptions first;
  first.max_steps = 3;
  const TrainResult part1 = Train(cfg, first);
  EXPECT_EQ(part1.step, 3);
  EXPECT_FALSE(part1.finished);
  TrainerOptions again;
  again.resume = "latest";
  const TrainResult part2 = Train(cfg, again);
  EXPECT_TRUE(part2.finished);
  std::vector<double> joined = part1.losses;
  joined.insert(joined.end(), part2.losses.begin(), part2.losses.end());
  EXPECT_EQ(joined, straight.losses);  // bit for bit, fp32 on the CPU
  EXPECT_LT(straight.losses.back(), straight.losses.front());
}

// Fine-tuning from an exported run (checkpointing.init_from_hf): it starts where the run
// ended, not from random weights, keeps lowering the loss, and its checkpoints say where the
// weights came from.
TEST_F(TrainerTest, FineTuneFromHfWeightsStartsWhereTheRunEnded) {
  const config::Config base = Config(dir_.path() / "base");
  const TrainResult trained = Train(base);
  ASSERT_TRUE(trained.finished);
  const fs::path hf = dir_.path() / "hf";
  fs::create_directories(hf);
  fs::copy_file(fs::path(trained.last_checkpoint) / "model.safetensors", hf / "model.safetensors");
  const config::HfImportResult exported = config::ExportHfConfig(base);
  ASSERT_TRUE(exported.ok());
  std::ofstream(hf / "config.json") << exported.config.dump(2);

  const config::Config tune = Config(dir_.path() / "tune", {{"checkpointing", {{"init_from_hf", hf.string()}}}});
  const TrainResult tuned = Train(tune);
  ASSERT_TRUE(tuned.finished);
  ASSERT_EQ(tuned.losses.size(), 6u);
  // Random weights start near ln(272) = 5.6; the trained ones where the run ended.
  EXPECT_LT(tuned.losses.front(), trained.losses.front() - 0.3);
  EXPECT_LT(tuned.losses.back(), tuned.losses.front());
  const json manifest = json::parse(std::ifstream(fs::path(tuned.last_checkpoint) / "manifest.json"));
  EXPECT_EQ(manifest.value("weights_from", ""), hf.string());
  std::ifstream metrics(tune.output_dir + "/metrics.jsonl");
  std::string first;
  std::getline(metrics, first);
  const json start = json::parse(first);
  EXPECT_EQ(start.value("event", ""), "start");
  EXPECT_EQ(start.value("weights_from", ""), hf.string());
  std::cout << "trained " << trained.losses.front() << " -> " << trained.losses.back() << ", fine-tuned "
            << tuned.losses.front() << " -> " << tuned.losses.back() << "\n";
}

// Sampling from a trained checkpoint through the MLA cache: greedy equals the argmax of a
// full recomputation at every step, the log-probabilities are the model's, stop strings end
// the text (and are never streamed), and the same weights as a HF directory sample the same.
TEST_F(TrainerTest, GenerateFromACheckpointMatchesFullRecomputation) {
  const config::Config base = Config(dir_.path() / "gen", {{"validation", {{"sample_tokens", 0}}}});
  const TrainResult trained = Train(base);
  ASSERT_TRUE(trained.finished);
  InferenceModel m = LoadInferenceModel(trained.last_checkpoint, nullptr, torch::kCPU);
  EXPECT_EQ(m.step, 6);
  GenerationRequest request;
  request.prompt = "The ";
  request.max_tokens = 12;
  request.stop_at_eos = false;
  const Generation g = Generate(m, request);
  ASSERT_EQ(g.ids.size(), 12u);
  EXPECT_EQ(g.finish_reason, "length");
  std::vector<int64_t> sequence = g.prompt_ids;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < g.ids.size(); ++i) {
    const torch::Tensor logits = m.model->Logits(torch::tensor(sequence).view({1, -1}));
    const torch::Tensor last = logits[0][logits.size(1) - 1].to(torch::kDouble);
    EXPECT_EQ(last.argmax().item<int64_t>(), g.ids[i]) << "token " << i;
    EXPECT_NEAR(torch::log_softmax(last, -1)[g.ids[i]].item<double>(), g.logprobs[i], 1e-4) << "token " << i;
    sequence.push_back(g.ids[i]);
  }
  // A stop string from inside a sampled text (the same seed samples the same tokens): the text
  // ends before its first occurrence, and streaming never showed any of it.
  GenerationRequest sampled = request;
  sampled.sampling.temperature = 1.0;
  sampled.sampling.seed = 11;
  const Generation free = Generate(m, sampled);
  ASSERT_GE(free.text.size(), 8u) << free.text;
  sampled.stop = {free.text.substr(5, 2)};
  std::string streamed;
  const Generation stopped = Generate(m, sampled, [&](const std::string& piece) { streamed += piece; });
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.text, free.text.substr(0, free.text.find(sampled.stop[0])));
  EXPECT_EQ(streamed, stopped.text);

  // The same weights as a HF directory (with the config for the tokenizer) sample the same.
  const fs::path hf = dir_.path() / "gen_hf";
  fs::create_directories(hf);
  fs::copy_file(fs::path(trained.last_checkpoint) / "model.safetensors", hf / "model.safetensors");
  std::ofstream(hf / "config.json") << config::ExportHfConfig(base).config.dump(2);
  InferenceModel from_hf = LoadInferenceModel(hf.string(), &base, torch::kCPU);
  EXPECT_EQ(Generate(from_hf, request).ids, g.ids);
  try {
    LoadInferenceModel(hf.string(), nullptr, torch::kCPU);
    ADD_FAILURE() << "a HF directory without a config loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("give a config with its tokenizer"), std::string::npos) << e.what();
  }
}

// Evaluating a checkpoint (dsv3ctl eval) gives the run's own final evaluation, from the
// checkpoint and from the same weights as a HF directory; a text's score is the sum of the
// model's log-probabilities, window after window.
TEST_F(TrainerTest, EvalOfACheckpointEqualsTheRunsFinalEvaluation) {
  const config::Config base = Config(dir_.path() / "eval");
  const TrainResult trained = Train(base);
  ASSERT_TRUE(trained.finished);
  const auto listing = [&] {
    std::set<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(base.output_dir)) names.insert(e.path().string());
    return names;
  };
  const std::set<std::string> before = listing();
  const EvalResult again = EvaluateWeights(base, trained.last_checkpoint, false, 1);
  EXPECT_EQ(again.step, 6);
  EXPECT_NEAR(again.loss, trained.last_eval_loss, 1e-9);
  EXPECT_EQ(again.per_source_loss.size(), 3u);
  const fs::path hf = dir_.path() / "eval_hf";
  fs::create_directories(hf);
  fs::copy_file(fs::path(trained.last_checkpoint) / "model.safetensors", hf / "model.safetensors");
  std::ofstream(hf / "config.json") << config::ExportHfConfig(base).config.dump(2);
  EXPECT_NEAR(EvaluateWeights(base, hf.string(), true, 1).loss, trained.last_eval_loss, 1e-9);
  EXPECT_EQ(listing(), before);  // the run's folders are untouched

  InferenceModel m = LoadInferenceModel(trained.last_checkpoint, nullptr, torch::kCPU);
  std::string text;
  for (int i = 0; i < 12; ++i) text += "the quick brown fox jumps over the lazy dog. ";  // > one 64-token window
  const TextScore score = ScoreText(m, text);
  ASSERT_EQ(score.logprobs.size(), score.ids.size() - 1);
  ASSERT_GT(score.ids.size(), static_cast<size_t>(base.model.mla.max_context_length));
  double expected = 0;
  torch::NoGradGuard no_grad;
  const int64_t W = base.model.mla.max_context_length, n = static_cast<int64_t>(score.ids.size());
  for (int64_t begin = 0; begin + 1 < n; begin += W - 1) {
    const int64_t len = std::min(W, n - begin);
    const torch::Tensor ids = torch::tensor(std::vector<int64_t>(score.ids.begin() + begin, score.ids.begin() + begin + len));
    const torch::Tensor logp = torch::log_softmax(m.model->Logits(ids.view({1, -1}))[0].to(torch::kDouble), -1);
    for (int64_t i = 1; i < len; ++i) expected += logp[i - 1][ids[i].item<int64_t>()].item<double>();
  }
  EXPECT_NEAR(score.total, expected, 1e-6 * std::abs(expected));
  EXPECT_LT(score.mean(), 0.0);
}

// A run that stops between log lines reports its last steps at the step it stopped.
TEST_F(TrainerTest, StopBetweenLogLinesReportsTheLastSteps) {
  const config::Config cfg = Config(dir_.path() / "stopped", {{"training", {{"log_interval", 2}}}});
  TrainerOptions options;
  options.max_steps = 3;
  const TrainResult r = Train(cfg, options);
  ASSERT_EQ(r.losses.size(), 3u);
  std::ifstream in(cfg.output_dir + "/metrics.jsonl");
  std::map<int64_t, double> logged;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j["event"] == "train") logged[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  ASSERT_EQ(logged.size(), 2u);
  EXPECT_NEAR(logged[2], (r.losses[0] + r.losses[1]) / 2, 1e-12);
  EXPECT_NEAR(logged[3], r.losses[2], 1e-12);  // the window of the one step after the last line
}

TEST_F(TrainerTest, GradientAccumulationEqualsOneLargeMicroBatch) {
  // Dropless routing and no balance losses or dropout: a micro-batch of 8 and four of 2
  // then compute the same gradient.
  const json exact = {{"model", {{"mla", {{"attn_dropout", 0.0}}},
                                 {"moe", {{"dropout", 0.0}, {"router_noise_std", 0.0}, {"capacity_factor", 0.0},
                                          {"balance_loss_type", "none"}, {"use_aux_loss_free", false}}}}},
                      {"training", {{"train_steps", 2}, {"save_interval", 0}}},
                      {"validation", {{"enabled", false}}}};
  json four = exact, one = exact;
  four["training"]["micro_batch_size"] = 2;
  one["training"]["micro_batch_size"] = 8;
  const config::Config cfg4 = Config(dir_.path() / "four", four), cfg1 = Config(dir_.path() / "one", one);
  EXPECT_EQ(cfg4.derived.gradient_accumulation_steps, 4);
  EXPECT_EQ(cfg1.derived.gradient_accumulation_steps, 1);
  const TrainResult a = Train(cfg4), b = Train(cfg1);
  const auto wa = ckpt::LoadCheckpoint(a.last_checkpoint).model, wb = ckpt::LoadCheckpoint(b.last_checkpoint).model;
  ASSERT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (const auto& [name, t] : wa) worst = std::max(worst, (t - wb.at(name)).abs().max().item<double>());
  EXPECT_LT(worst, 1e-5);
  EXPECT_NEAR(a.losses[0], b.losses[0], 1e-5);
}

TEST_F(TrainerTest, MetricsJsonlAndTensorBoardHaveEveryMetric) {
  const config::Config cfg = Config(dir_.path() / "metrics");
  const TrainResult r = Train(cfg);
  std::ifstream in(cfg.output_dir + "/metrics.jsonl");
  std::string line;
  std::set<std::string> events;
  json train, eval;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    events.insert(j["event"].get<std::string>());
    if (j["event"] == "train") train = j;
    if (j["event"] == "eval") eval = j;
  }
  EXPECT_EQ(events, (std::set<std::string>{"start", "train", "eval", "checkpoint", "end"}));
  for (const char* key : {"loss", "loss_main", "loss_mtp", "loss_balance", "lr", "grad_norm", "tokens_per_s", "mfu",
                          "step_ms", "time_data_ms", "time_forward_ms", "time_backward_ms", "time_optimizer_ms",
                          "time_communication_ms", "expert_load_max_over_mean", "expert_load_max_over_mean_moe0",
                          "expert_dropped_fraction", "tokens_seen"}) {
    ASSERT_TRUE(train.contains(key)) << key;
    EXPECT_TRUE(train[key].is_number()) << key;
  }
  EXPECT_EQ(train["step"], 6);
  EXPECT_DOUBLE_EQ(train["tokens_seen"].get<double>(), 6 * 8 * 16);
  EXPECT_NEAR(train["loss"].get<double>(),
              train["loss_main"].get<double>() + 0.3 * train["loss_mtp"].get<double>() + train["loss_balance"].get<double>(),
              1e-9);
  EXPECT_GT(train["mfu"].get<double>(), 0.0);
  for (const char* key : {"loss", "perplexity", "per_source_loss", "sample"}) EXPECT_TRUE(eval.contains(key)) << key;
  EXPECT_NEAR(eval["perplexity"].get<double>(), std::exp(eval["loss"].get<double>()), 1e-9);
  EXPECT_EQ(eval["per_source_loss"].size(), 3u);
  EXPECT_DOUBLE_EQ(r.last_eval_loss, eval["loss"].get<double>());
  // TensorBoard: the event file parses back with its CRCs and has the scalars.
  int files = 0;
  for (const auto& e : fs::directory_iterator(cfg.logging.tensorboard.log_dir)) {
    ++files;
    const auto records = ReadRecords(e.path().string());
    std::string all;
    for (const auto& rec : records) all += rec;
    EXPECT_NE(all.find("train/loss"), std::string::npos);
    EXPECT_NE(all.find("eval/perplexity"), std::string::npos);
    EXPECT_NE(all.find("eval/loss_dolma_v1_6_starcoder"), std::string::npos);
  }
  EXPECT_EQ(files, 1);
}

TEST_F(TrainerTest, ResetAttentionMaskTrains) {
  const TrainResult r = Train(Config(dir_.path() / "reset", {{"data", {{"reset_attention_mask", true}}},
                                                             {"training", {{"train_steps", 4}}}}));
  EXPECT_TRUE(r.finished);
  ASSERT_EQ(r.losses.size(), 4u);
  EXPECT_LT(r.losses.back(), r.losses.front());
}

TEST_F(TrainerTest, WhatTheBuildCannotDoIsAClearError) {
  try {
    Train(Config(dir_.path() / "fp8", {{"training", {{"use_fp8", true}}}}));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/training/use_fp8: true is not supported by this build", 0), 0u) << e.what();
  }
  if (!torch::cuda::is_available()) {
    try {  // where fp16 matmuls exist, fp16 must then really train
      EXPECT_TRUE(Train(Config(dir_.path() / "fp16", {{"training", {{"use_fp16", true}}}})).finished);
    } catch (const std::runtime_error& e) {  // LibTorch 1.13 on a CPU; newer versions may train
      EXPECT_EQ(std::string(e.what()).rfind("/training/use_fp16: fp16 matmuls are not available on cpu", 0), 0u)
          << e.what();
    }
  }
  try {  // a grid that is not the world the trainer was given
    Train(Config(dir_.path() / "tp", {{"distributed", {{"tensor_parallel_size", 2}}}}));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor_parallel_size 2 x pipeline_parallel_size 1 does not match the world of 1"),
              std::string::npos)
        << e.what();
  }
  TrainerOptions two;
  two.world_size = 2;
  try {
    Train(Config(dir_.path() / "ranks"), two);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("world size 2"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, NonFiniteLossStopsNamingTheStep) {
  try {
    Train(Config(dir_.path() / "nan", {{"training", {{"learning_rate", 1e30}, {"min_learning_rate", 0.0},
                                                      {"lr_warmup_steps", 0}, {"grad_clip", 0.0}}}}));
    FAIL() << "expected the run to stop";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("non-finite loss"), std::string::npos) << what;
    EXPECT_NE(what.find("at step "), std::string::npos) << what;
  }
}

}  // namespace
// 1F1B on 4 stages and 6 micro-batches: stage s runs p - s - 1 forwards ahead, then
// alternates; every micro-batch once forward and once backward, backward in order, never
// more than p - s in flight. GPipe: all forwards first.
TEST(PipelineSchedule, OneForwardOneBackwardKeepsAtMostTheStagesAheadInFlight) {
  const int64_t p = 4, m = 6;
  for (int64_t stage = 0; stage < p; ++stage) {
    const std::vector<PipelineAction> a = PipelineSchedule("1f1b", p, stage, m);
    ASSERT_EQ(a.size(), static_cast<size_t>(2 * m));
    int64_t warmup = 0;
    while (a[static_cast<size_t>(warmup)].forward) ++warmup;
    EXPECT_EQ(warmup, p - stage) << "stage " << stage;  // the warm-up forwards plus the first steady one
    int64_t forwards = 0, backwards = 0, worst = 0;
    for (const PipelineAction& x : a) {
      if (x.forward) {
        EXPECT_EQ(x.micro, forwards++);
      } else {
        EXPECT_EQ(x.micro, backwards++);
        EXPECT_LT(x.micro, forwards);
      }
      worst = std::max(worst, forwards - backwards);
    }
    EXPECT_EQ(worst, p - stage);
  }
  const std::vector<PipelineAction> last = PipelineSchedule("1f1b", p, p - 1, 2);
  EXPECT_EQ(last, (std::vector<PipelineAction>{{true, 0}, {false, 0}, {true, 1}, {false, 1}}));
  const std::vector<PipelineAction> g = PipelineSchedule("gpipe", p, 0, 2);
  EXPECT_EQ(g, (std::vector<PipelineAction>{{true, 0}, {true, 1}, {false, 0}, {false, 1}}));
  EXPECT_THROW(PipelineSchedule("zero_bubble", p, 0, 2), std::runtime_error);
  EXPECT_DOUBLE_EQ(IdealBubbleFraction(4, 6), 3.0 / 9.0);
  EXPECT_DOUBLE_EQ(IdealBubbleFraction(4, 6, 2), 3.0 / 15.0);
}

// Interleaved 1F1B, 2 stages x 2 chunks, 4 micro-batches: Megatron-Core's order, and on every
// stage each (micro-batch, chunk) once forward and once backward, backward after forward.
TEST(PipelineSchedule, InterleavedRunsTheChunksInGroupsOfTheStages) {
  using A = PipelineAction;
  const std::vector<A> s0 = PipelineSchedule("interleaved_1f1b", 2, 0, 4, 2);
  const std::vector<A> expected0 = {{true, 0, 0},  {true, 1, 0},  {true, 0, 1},  {true, 1, 1},
                                    {true, 2, 0},  {false, 0, 1}, {true, 3, 0},  {false, 1, 1},
                                    {true, 2, 1},  {false, 0, 0}, {true, 3, 1},  {false, 1, 0},
                                    {false, 2, 1}, {false, 3, 1}, {false, 2, 0}, {false, 3, 0}};
  EXPECT_EQ(s0, expected0);
  for (int64_t stage = 0; stage < 2; ++stage) {
    std::set<std::pair<int64_t, int64_t>> done_forward, done_backward;
    for (const A& a : PipelineSchedule("interleaved_1f1b", 2, stage, 4, 2)) {
      const auto key = std::make_pair(a.micro, a.chunk);
      if (a.forward) {
        EXPECT_TRUE(done_forward.insert(key).second);
      } else {
        EXPECT_TRUE(done_forward.count(key));
        EXPECT_TRUE(done_backward.insert(key).second);
      }
    }
    EXPECT_EQ(done_backward.size(), 8u);
  }
  EXPECT_THROW(PipelineSchedule("interleaved_1f1b", 2, 0, 3, 2), std::runtime_error);  // 3 is not a multiple of 2
}

}  // namespace dsv3::train
