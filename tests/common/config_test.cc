// Config loading: the shipped configs, defaults, comments, aliases, inheritance, derived
// values and the DeepSpeed file. Error paths of bad configs are in config_errors_test.cc.
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/parallel_layout.h"
#include "test_util.h"

namespace dsv3::config {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::ErrorPaths;
using test::TempDir;

TEST(ShippedConfigs, EveryConfigInConfigsValidates) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(DSV3_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".json") continue;
    const std::string path = entry.path().string();
    const LoadResult r = LooksLikeDeepSpeedConfig(path) ? ValidateDeepSpeedFile(path) : LoadConfigFile(path);
    EXPECT_TRUE(r.ok()) << path << ": " << (r.errors.empty() ? "" : r.errors[0].ToString());
    EXPECT_TRUE(r.warnings.empty()) << path << ": " << (r.warnings.empty() ? "" : r.warnings[0].ToString());
    ++checked;
  }
  EXPECT_EQ(checked, 7);  // nano, tiny, small, large + three DeepSpeed files
}

TEST(ShippedConfigs, SizesMatchTheirLabelsWithin15Percent) {
  const std::pair<const char*, double> kLabels[] = {
      {"train_config_tiny.json", 100e6}, {"train_config_small.json", 1e9}, {"train_config_large.json", 15e9}};
  for (const auto& [name, label] : kLabels) {
    const LoadResult r = LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/" + name);
    ASSERT_TRUE(r.ok()) << name;
    const double total = static_cast<double>(EstimateConfig(r.config).params.total);
    EXPECT_NEAR(total / label, 1.0, 0.15) << name << " has " << total << " parameters";
  }
}

TEST(ShippedConfigs, LargeConfigUsesSlurmWorldAndDeepSpeedFile) {
  const LoadResult r = LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_large.json");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.config.derived.world_size, 128);  // 16 nodes x 8 tasks
  EXPECT_EQ(r.config.distributed.data_parallel_size, 128);
  EXPECT_EQ(r.config.derived.gradient_accumulation_steps, 4);  // 1024 / (2 x 128)
  EXPECT_EQ(r.config.derived.effective_zero_stage, 1);
  EXPECT_NE(r.config.derived.deepspeed_config_file.find("deepspeed_zero1.json"), std::string::npos);
}

// dsv3-worker --output-dir moves the TensorBoard folder with the outputs (README "Training").
TEST(OutputDirs, TensorBoardFollowsTheOutputDirWhenRelative) {
  using config::TensorBoardDirForOutput;
  EXPECT_EQ(TensorBoardDirForOutput("./outputs/nano/tensorboard", "./outputs/nano", "/runs/a"), "/runs/a/tensorboard");
  EXPECT_EQ(TensorBoardDirForOutput("outputs/nano/tb/x", "./outputs/nano", "runs/b"), "runs/b/tb/x");
  EXPECT_EQ(TensorBoardDirForOutput("./logs/tensorboard", "./outputs/nano", "/runs/a"), "/runs/a/logs/tensorboard");
  EXPECT_EQ(TensorBoardDirForOutput("/srv/tb", "./outputs/nano", "/runs/a"), "/srv/tb");
  // Two runs of one config with different output folders never share an events folder.
  EXPECT_NE(TensorBoardDirForOutput("./outputs/nano/tensorboard", "./outputs/nano", "/runs/a"),
            TensorBoardDirForOutput("./outputs/nano/tensorboard", "./outputs/nano", "/runs/b"));
}

TEST(Defaults, EmptyConfigHasTheGuideDefaults) {
  const LoadResult r = LoadConfigText("{}");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  const Config& c = r.config;
  EXPECT_EQ(c.seed, 42);
  EXPECT_EQ(c.model.num_layers, 12);
  EXPECT_EQ(c.model.vocab_size, 128000);
  EXPECT_EQ(c.model.norm_type, "rmsnorm");
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.model.init_method_std, 0.006);
  EXPECT_EQ(c.model.dense_layer_interval, 3);
  EXPECT_EQ(c.model.mla.d_model, 1024);
  EXPECT_EQ(c.model.mla.d_latent, 256);
  EXPECT_EQ(c.model.mla.num_heads, 16);
  EXPECT_EQ(c.model.mla.max_context_length, 4096);
  EXPECT_EQ(c.model.mla.flash_mla_backend, "auto");
  EXPECT_FALSE(c.model.mla.sliding_window.has_value());
  EXPECT_DOUBLE_EQ(c.model.mla.attn_dropout, 0.1);
  EXPECT_EQ(c.model.moe.num_experts, 8);
  EXPECT_EQ(c.model.moe.num_experts_per_token, 2);
  EXPECT_EQ(c.model.moe.expert_intermediate_size, 2048);
  EXPECT_DOUBLE_EQ(c.model.moe.router_noise_std, 0.1);
  EXPECT_EQ(c.model.moe.balance_loss_type, "entropy");
  EXPECT_EQ(c.model.moe.min_expert_capacity, 4);
  EXPECT_EQ(c.training.global_batch_size, 64);
  EXPECT_EQ(c.training.seq_length, 2048);
  EXPECT_DOUBLE_EQ(c.training.learning_rate, 3e-4);
  EXPECT_EQ(c.training.lr_warmup_steps, 2000);
  EXPECT_TRUE(c.training.use_bf16);
  EXPECT_EQ(c.training.num_predict_tokens, 2);
  EXPECT_DOUBLE_EQ(c.training.adam_beta2, 0.95);
  EXPECT_EQ(c.data.cache_dir, "./data/cache");
  EXPECT_EQ(c.data.sources.size(), 13u);  // the guide's table
  EXPECT_EQ(c.distributed.backend, "deepspeed");
  EXPECT_EQ(c.distributed.zero_stage, 1);
  EXPECT_EQ(c.slurm.time, "24:00:00");
  EXPECT_EQ(c.slurm.output, "logs/slurm-%j.out");
  EXPECT_EQ(c.logging.tensorboard.log_dir, "./logs/tensorboard");
  // Derived from the defaults: head_dim 1024/16 = 64, rope half of it; dense FFN = 2 x 2048.
  EXPECT_EQ(c.model.mla.qk_nope_head_dim, 64);
  EXPECT_EQ(c.model.mla.qk_rope_head_dim, 32);
  EXPECT_EQ(c.model.mla.v_head_dim, 64);
  EXPECT_EQ(c.model.dense_intermediate_size, 4096);
  EXPECT_EQ(*c.checkpointing.dir, "./outputs/checkpoints");
  // Every 3rd layer is dense: layers 2, 5, 8, 11 (0-based).
  const std::vector<bool> plan = {true, true, false, true, true, false, true, true, false, true, true, false};
  EXPECT_EQ(c.derived.layer_is_moe, plan);
}

// pp 2 x dp 2 x tp 2 with ep 2: tp innermost, ep over consecutive data-parallel ranks.
TEST(ParallelGrid, EveryGroupFromOneLayout) {
  LoadOptions o;
  o.world_size = 8;
  const LoadResult r = LoadConfigText(
      R"({"distributed": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "expert_parallel_size": 2},
          "model": {"moe": {"num_experts": 8}}})",
      o);
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].ToString();
  const ParallelGrid g = ParallelGrid::FromConfig(r.config);
  EXPECT_EQ(g.dp, 2);
  const GridCoord c5 = g.Coord(5);  // (pp 1, dp 0, tp 1)
  EXPECT_EQ(c5.pp, 1);
  EXPECT_EQ(c5.dp, 0);
  EXPECT_EQ(c5.tp, 1);
  EXPECT_EQ(g.RankOf(1, 0, 1), 5);
  using V = std::vector<int64_t>;
  EXPECT_EQ(g.Members(GroupKind::kTensor, 5), (V{4, 5}));
  EXPECT_EQ(g.Members(GroupKind::kData, 5), (V{5, 7}));
  EXPECT_EQ(g.Members(GroupKind::kPipeline, 5), (V{1, 5}));
  EXPECT_EQ(g.Members(GroupKind::kExpert, 5), (V{5, 7}));  // dp 0 and 1 exchange tokens
  EXPECT_EQ(g.Members(GroupKind::kExpertReplicas, 5), (V{4, 5}));  // ep index 0 of stage 1, both tp ranks
  EXPECT_EQ(g.Members(GroupKind::kReplicated, 5), (V{4, 5, 6, 7}));
  EXPECT_EQ(g.Members(GroupKind::kModel, 5), (V{0, 1, 4, 5}));
  // Every rank of a group names it alike; groups of one kind are disjoint.
  for (GroupKind kind : AllGroupKinds()) {
    for (int64_t rank = 0; rank < 8; ++rank) {
      for (int64_t other : g.Members(kind, rank)) {
        EXPECT_EQ(g.Tag(kind, other), g.Tag(kind, rank));
        EXPECT_EQ(g.Members(kind, other), g.Members(kind, rank));
      }
    }
  }
  const std::vector<std::string> lines = DescribeGrid(r.config);
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_EQ(lines[5], "rank 5: pp 1 dp 0 tp 1 ep 0 | layers 6-11, norm, head, MTP, heads 8-15 of 16, vocabulary "
                      "rows 64000-127999, routed experts 0-3");
  EXPECT_EQ(lines[0].substr(0, 51), "rank 0: pp 0 dp 0 tp 0 ep 0 | embedding, layers 0-5");
  // The embedding's copies on the first and last stages (MTP uses it there).
  EXPECT_EQ(g.Members(GroupKind::kEmbedding, 5), (V{1, 3, 5, 7}));
  // The estimator's memory is the largest stage's: the last (head, MTP and the embedding copy).
  const Estimate e = EstimateConfig(r.config);
  EXPECT_EQ(e.memory.pipeline_stage, 1);
  LoadOptions o1;
  o1.world_size = 1;
  const LoadResult whole = LoadConfigText(R"({"model": {"moe": {"num_experts": 8}}})", o1);
  ASSERT_TRUE(whole.ok());
  EXPECT_LT(e.memory.total, EstimateConfig(whole.config).memory.total / 2);
  // An explicit layout moves the boundary.
  LoadOptions o2;
  o2.world_size = 2;
  const LoadResult layout = LoadConfigText(
      R"({"distributed": {"pipeline_parallel_size": 2, "pipeline_layout": [8, 4]}, "model": {"num_layers": 12}})", o2);
  ASSERT_TRUE(layout.ok()) << layout.errors[0].ToString();
  EXPECT_EQ(DescribeGrid(layout.config)[1].substr(0, 46), "rank 1: pp 1 dp 0 tp 0 ep 0 | layers 8-11, nor");
}

TEST(Parsing, CommentsAndCommentKeysAreAllowed) {
  const LoadResult r = LoadConfigText(R"({
    // line comment as in the guide
    "seed": 7, /* block comment */
    "_comment": "JSON's own workaround",
    "model": {"num_layers": 6}  // trailing
  })");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.seed, 7);
  EXPECT_EQ(r.config.model.num_layers, 6);
}

TEST(Parsing, SyntaxErrorNamesLineAndColumn) {
  const LoadResult r = LoadConfigText("{\n  \"seed\": 7,\n  \"model\": }\n");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("line 3"), std::string::npos) << r.errors[0].message;
}

TEST(Parsing, IntegersWrittenAsFloatsAreAccepted) {
  const LoadResult r = LoadConfigText(R"({"training": {"total_training_tokens": 2e9, "train_steps": null}})");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(*r.config.training.total_training_tokens, 2000000000);
}

TEST(Parsing, ToJsonRoundTripsExactly) {
  const LoadResult first = LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_large.json");
  ASSERT_TRUE(first.ok());
  const json once = ToJson(first.config);
  const LoadResult second = LoadConfigText(once.dump());
  ASSERT_TRUE(second.ok()) << second.errors[0].ToString();
  EXPECT_EQ(ToJson(second.config), once);
  json expected_derived = DerivedToJson(first.config);
  expected_derived["deepspeed_config_file"] = "";  // the file's values are now inline
  EXPECT_EQ(DerivedToJson(second.config), expected_derived);
}

TEST(Aliases, AliasAloneSetsTheCanonicalField) {
  const LoadResult r = LoadConfigText(R"({"model": {"moe": {"expert_dim": 512}}, "training": {"mtp_tokens": 3}})");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.model.moe.expert_intermediate_size, 512);
  EXPECT_EQ(r.config.training.num_predict_tokens, 3);
  EXPECT_FALSE(ToJson(r.config)["model"]["moe"].contains("expert_dim"));  // printed under one name
}

TEST(Aliases, BothWithTheSameValueAreFine) {
  const LoadResult r = LoadConfigText(
      R"({"model": {"moe": {"expert_dim": 512, "expert_intermediate_size": 512}},
          "training": {"mtp_tokens": 2, "num_predict_tokens": 2}})");
  EXPECT_TRUE(r.ok()) << r.errors[0].ToString();
}

TEST(Aliases, BothWithDifferentValuesIsAnError) {
  const LoadResult r = LoadConfigText(
      R"({"model": {"moe": {"expert_intermediate_size": 512, "expert_dim": 256}},
          "training": {"num_predict_tokens": 2, "mtp_tokens": 4}})");
  EXPECT_EQ(ErrorPaths(r), (std::vector<std::string>{"/model/moe/expert_dim", "/training/mtp_tokens"}));
  EXPECT_EQ(r.errors[0].message,
            "256 differs from expert_intermediate_size (512); they are aliases: give one of them or the same "
            "value in both");
}

class InheritanceTest : public ::testing::Test {
 protected:
  void Write(const std::string& name, const std::string& text) {
    fs::create_directories((dir_.path() / name).parent_path());
    std::ofstream(dir_.path() / name) << text;
  }
  LoadResult Load(const std::string& name) { return LoadConfigFile((dir_.path() / name).string()); }
  TempDir dir_;
};

TEST_F(InheritanceTest, DeepMergeWithListsReplaced) {
  Write("base/base.json", R"({
    "seed": 1,
    "model": {"num_layers": 8, "mla": {"d_model": 256, "d_latent": 64, "num_heads": 4}},
    "slurm": {"extra_args": ["--exclusive", "--constraint=a100"]}
  })");
  Write("child.json", R"({
    "extends": "base/base.json",  // relative to this file
    "model": {"mla": {"num_heads": 8}},
    "slurm": {"extra_args": ["--exclusive"]}
  })");
  const LoadResult r = Load("child.json");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.seed, 1);                   // inherited
  EXPECT_EQ(r.config.model.num_layers, 8);       // inherited sibling of a merged object
  EXPECT_EQ(r.config.model.mla.d_model, 256);    // inherited inside the merged object
  EXPECT_EQ(r.config.model.mla.num_heads, 8);    // overridden
  EXPECT_EQ(r.config.slurm.extra_args, std::vector<std::string>{"--exclusive"});  // list replaced
  ASSERT_EQ(r.files.size(), 2u);
  EXPECT_NE(r.files[0].find("base.json"), std::string::npos);
}

TEST_F(InheritanceTest, ChainsAndListsOfBasesMergeInOrder) {
  Write("a.json", R"({"seed": 1, "experiment_name": "a", "output_dir": "out_a"})");
  Write("b.json", R"({"extends": "a.json", "seed": 2, "experiment_name": "b"})");
  Write("c.json", R"({"seed": 3})");
  Write("d.json", R"({"extends": ["b.json", "c.json"], "experiment_name": "d"})");
  const LoadResult r = Load("d.json");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.seed, 3);  // c comes after b
  EXPECT_EQ(r.config.experiment_name, "d");
  EXPECT_EQ(r.config.output_dir, "out_a");
  EXPECT_EQ(r.files.size(), 4u);
}

TEST_F(InheritanceTest, CycleIsAnError) {
  Write("x.json", R"({"extends": "y.json"})");
  Write("y.json", R"({"extends": "z.json"})");
  Write("z.json", R"({"extends": "x.json"})");
  const LoadResult r = Load("x.json");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].path, "/extends");
  EXPECT_NE(r.errors[0].message.find("inheritance cycle"), std::string::npos) << r.errors[0].message;
}

TEST_F(InheritanceTest, SelfReferenceIsACycle) {
  Write("self.json", R"({"extends": "./self.json"})");
  const LoadResult r = Load("self.json");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("inheritance cycle"), std::string::npos);
}

TEST_F(InheritanceTest, MissingBaseIsAnError) {
  Write("child.json", R"({"extends": "nowhere.json"})");
  const LoadResult r = Load("child.json");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].path, "/extends");
  EXPECT_NE(r.errors[0].message.find("\"nowhere.json\""), std::string::npos);
  EXPECT_NE(r.errors[0].message.find("does not exist"), std::string::npos);
}

TEST_F(InheritanceTest, ErrorsInABaseAreReportedAtTheirPath) {
  Write("base.json", R"({"model": {"num_layerz": 3}})");
  Write("child.json", R"({"extends": "base.json"})");
  EXPECT_EQ(ErrorPaths(Load("child.json")), std::vector<std::string>{"/model/num_layerz"});
}

TEST(Derived, DataParallelSizeAndAccumulationFromWorldSize) {
  LoadOptions o;
  o.world_size = 8;
  const LoadResult r = LoadConfigText(
      R"({"distributed": {"tensor_parallel_size": 2, "data_parallel_size": -1},
          "training": {"global_batch_size": 64, "micro_batch_size": 2}})",
      o);
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.distributed.data_parallel_size, 4);      // 8 / (tp 2 x pp 1)
  EXPECT_EQ(r.config.derived.gradient_accumulation_steps, 8);  // 64 / (2 x 4)
}

TEST(Derived, RunLengthFromStepsFromTokensAndFromTheRatio) {
  // train_steps given: tokens follow.
  LoadResult r = LoadConfigText(R"({"training": {"global_batch_size": 8, "seq_length": 128, "train_steps": 10}})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r.config.training.total_training_tokens, 10 * 8 * 128);
  // total tokens given, no steps: steps follow (rounded up).
  r = LoadConfigText(R"({"training": {"global_batch_size": 8, "seq_length": 128, "total_training_tokens": 10000}})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r.config.training.train_steps, 10);  // ceil(10000 / 1024)
  // neither: tokens = ratio x parameters (Chinchilla).
  r = LoadConfigText(R"({"training": {"global_batch_size": 8, "seq_length": 128, "tokens_per_parameter_ratio": 2.0}})");
  ASSERT_TRUE(r.ok());
  const int64_t params = EstimateConfig(r.config).params.total;
  EXPECT_EQ(*r.config.training.total_training_tokens, 2 * params);
  EXPECT_EQ(r.config.derived.chinchilla_tokens, 2 * params);
  EXPECT_EQ(*r.config.training.train_steps, (2 * params + 1023) / 1024);
}

TEST(Derived, SourceWeightsAreNormalizedAndTheSumReported) {
  const LoadResult r = LoadConfigText(R"({"data": {"sources": [
      {"subset": "dolma_v1_6_cc", "weight": 3, "paths": ["a/*.json.gz"]},
      {"subset": "dolma_v1_6_c4", "weight": 1, "paths": ["b/*.json.gz"]}]}})");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_DOUBLE_EQ(r.config.derived.source_weight_sum, 4.0);
  EXPECT_DOUBLE_EQ(r.config.data.sources[0].weight, 0.75);
  EXPECT_DOUBLE_EQ(r.config.data.sources[1].weight, 0.25);
  EXPECT_EQ(r.config.data.sources[1].name, "dolma_v1_6_c4");  // name defaults to the subset
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0].ToString(), "/data/sources: weights sum to 4; normalized to 1");
}

TEST(Derived, SlurmSectionNestedInDistributedIsAccepted) {
  const LoadResult r = LoadConfigText(
      R"({"distributed": {"slurm": {"enabled": true, "nodes": 2, "ntasks_per_node": 4, "gpus_per_node": 4}},
          "training": {"global_batch_size": 64, "micro_batch_size": 2}})");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_TRUE(r.config.slurm.enabled);
  EXPECT_EQ(r.config.derived.world_size, 8);
  EXPECT_EQ(r.config.derived.gradient_accumulation_steps, 4);
}

// Values the user did not write leave Slurm's defaults: no partition, and no GPUs for a CPU
// (gloo) job; GPUs asked for a gloo job are warned about.
TEST(Derived, SlurmDefaultsFollowTheBackend) {
  const LoadResult cpu = LoadConfigText(R"({"distributed": {"backend": "gloo"}, "slurm": {"enabled": true}})");
  ASSERT_TRUE(cpu.ok()) << cpu.errors[0].ToString();
  EXPECT_EQ(cpu.config.slurm.partition, std::nullopt);
  EXPECT_EQ(cpu.config.slurm.gpus_per_node, 0);
  EXPECT_TRUE(cpu.warnings.empty()) << cpu.warnings[0].ToString();
  const LoadResult gpu = LoadConfigText(R"({"distributed": {"backend": "nccl"}, "slurm": {"enabled": true}})");
  ASSERT_TRUE(gpu.ok()) << gpu.errors[0].ToString();
  EXPECT_EQ(gpu.config.slurm.gpus_per_node, std::nullopt);  // one per task when the script is written
  const LoadResult asked = LoadConfigText(
      R"({"distributed": {"backend": "gloo"}, "slurm": {"enabled": true, "gpus_per_node": 1, "partition": "gpu"}})");
  ASSERT_TRUE(asked.ok()) << asked.errors[0].ToString();
  EXPECT_EQ(asked.config.slurm.partition, "gpu");
  ASSERT_EQ(asked.warnings.size(), 1u);
  EXPECT_EQ(asked.warnings[0].path, "/slurm/gpus_per_node");
  EXPECT_NE(asked.warnings[0].message.find("gloo"), std::string::npos) << asked.warnings[0].ToString();
  // The derived 0 survives the config's round trip through JSON (stored configs are reloaded).
  const LoadResult again = LoadConfigText(ToJson(cpu.config).dump());
  ASSERT_TRUE(again.ok()) << again.errors[0].ToString();
  EXPECT_EQ(again.config.slurm.gpus_per_node, 0);
  EXPECT_EQ(again.config.slurm.partition, std::nullopt);
}

class DeepSpeedFileTest : public InheritanceTest {};

TEST_F(DeepSpeedFileTest, FileValuesAreMergedAndUnhonoredKeysWarned) {
  Write("ds.json", R"({"zero_optimization": {"stage": 3, "reduce_bucket_size": 2e8, "stage3_max_live_parameters": 1e9},
                       "fp16": {"enabled": true}, "steps_per_print": 10, "train_micro_batch_size_per_gpu": "auto"})");
  Write("job.json", R"({"deepspeed": {"enabled": true, "config_file": "ds.json",
                                      "zero_optimization": {"overlap_comm": false}}})");
  const LoadResult r = Load("job.json");
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  EXPECT_EQ(r.config.derived.effective_zero_stage, 3);
  EXPECT_EQ(r.config.deepspeed.reduce_bucket_size, 200000000);
  EXPECT_FALSE(r.config.deepspeed.overlap_comm);  // inline value wins
  EXPECT_TRUE(r.config.training.use_fp16);        // taken from the file...
  EXPECT_FALSE(r.config.training.use_bf16);       // ...which also turns the default bf16 off
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].message.find("steps_per_print"), std::string::npos);
  EXPECT_NE(r.warnings[0].message.find("zero_optimization/stage3_max_live_parameters"), std::string::npos);
}

TEST_F(DeepSpeedFileTest, ConflictsWithExplicitTrainingFieldsAreErrors) {
  Write("ds.json", R"({"bf16": {"enabled": false}, "gradient_clipping": 0.5, "train_batch_size": 128})");
  Write("job.json", R"({"deepspeed": {"enabled": true, "config_file": "ds.json"},
                        "training": {"use_bf16": true, "grad_clip": 1.0, "global_batch_size": 64}})");
  EXPECT_EQ(ErrorPaths(Load("job.json")),
            (std::vector<std::string>{"/training/global_batch_size", "/deepspeed/bf16/enabled",
                                      "/deepspeed/gradient_clipping"}));
}

TEST_F(DeepSpeedFileTest, ValidateDeepSpeedFileReportsPathsInThatFile) {
  Write("bad_ds.json", R"({"zero_optimization": {"stage": 4}, "bf16": {"enabled": "yes"}})");
  const std::string path = (dir_.path() / "bad_ds.json").string();
  EXPECT_TRUE(LooksLikeDeepSpeedConfig(path));
  EXPECT_EQ(ErrorPaths(ValidateDeepSpeedFile(path)),
            (std::vector<std::string>{"/bf16/enabled", "/zero_optimization/stage"}));
  Write("ours.json", R"({"model": {}, "bf16": {}})");
  EXPECT_FALSE(LooksLikeDeepSpeedConfig((dir_.path() / "ours.json").string()));
}

}  // namespace
}  // namespace dsv3::config
