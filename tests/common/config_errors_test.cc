// A table of broken configs: each must yield exactly the listed errors, path and message.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dsv3/common/config_io.h"
#include "test_util.h"

namespace dsv3::config {
namespace {

struct BadConfig {
  const char* name;
  const char* json;
  std::vector<std::string> errors;  // "path: message", in report order
};

const BadConfig kBadConfigs[] = {
    {"unknown_key_with_suggestion", R"({"model": {"num_layer": 4}})",
     {"/model/num_layer: unknown field \"num_layer\" (did you mean \"num_layers\"?)"}},
    {"unknown_key_without_suggestion", R"({"model": {"mla": {"banana": 1}}})",
     {"/model/mla/banana: unknown field \"banana\""}},
    {"unknown_section", R"({"trainig": {}})",
     {"/trainig: unknown field \"trainig\" (did you mean \"training\"?)"}},
    {"wrong_type_string_for_int", R"({"model": {"mla": {"num_heads": "8"}}})",
     {"/model/mla/num_heads: expected an integer, got \"8\" (string)"}},
    {"wrong_type_fraction_for_int", R"({"training": {"micro_batch_size": 2.5}})",
     {"/training/micro_batch_size: expected an integer, got 2.5 (number)"}},
    {"wrong_type_int_for_bool", R"({"training": {"use_mtp": 1}})",
     {"/training/use_mtp: expected true or false, got 1 (integer)"}},
    {"wrong_type_section", R"({"model": {"moe": []}})",
     {"/model/moe: expected an object, got [] (list)"}},
    {"enum_with_suggestion", R"({"training": {"lr_decay_style": "cosin"}})",
     {"/training/lr_decay_style: \"cosin\" is not one of: cosine, linear, constant (did you mean \"cosine\"?)"}},
    {"bad_subset", R"({"data": {"sources": [{"subset": "dolma_v1_6_ccc", "weight": 1}]}})",
     {"/data/sources/0/subset: \"dolma_v1_6_ccc\" is not one of: dolma_v1_6_cc, dolma_v1_6_refined_web, "
      "dolma_v1_6_starcoder, dolma_v1_6_c4, dolma_v1_6_reddit, dolma_v1_6_pes2o, dolma_v1_6_redpajama, "
      "dolma_v1_6_flan, dolma_v1_6_openwebmath, dolma_v1_6_proof_pile_2, dolma_v1_6_gutenberg, "
      "dolma_v1_6_metawika, dolma_v1_6_wikimedia (did you mean \"dolma_v1_6_cc\"?)"}},
    {"zero_stage_out_of_range", R"({"distributed": {"zero_stage": 4}})",
     {"/distributed/zero_stage: 4 is out of range: must be in [0, 3]"}},
    {"dropout_out_of_range", R"({"model": {"mla": {"attn_dropout": 1.0}}})",
     {"/model/mla/attn_dropout: 1.0 is out of range: must be in [0, 1)"}},
    {"negative_lr", R"({"training": {"learning_rate": -0.1}})",
     {"/training/learning_rate: -0.1 is out of range: must be > 0"}},
    {"experts_per_token_exceeds_experts", R"({"model": {"moe": {"num_experts": 8, "num_experts_per_token": 9}}})",
     {"/model/moe/num_experts_per_token: 9 exceeds num_experts (8)"}},
    {"latent_exceeds_model", R"({"model": {"mla": {"d_model": 256, "d_latent": 512, "num_heads": 4}}})",
     {"/model/mla/d_latent: 512 exceeds d_model (256); the KV latent compresses the hidden state "
      "(1/4 to 1/2 of d_model is usual)"}},
    {"heads_do_not_divide_model", R"({"model": {"mla": {"d_model": 1000, "num_heads": 16, "num_kv_heads": 16}}})",
     {"/model/mla/num_heads: 16 does not divide d_model (1000); pick a divisor, or set qk_nope_head_dim, "
      "qk_rope_head_dim and v_head_dim explicitly"}},
    {"explicit_head_dims_need_no_divisor",
     R"({"model": {"mla": {"d_model": 1000, "num_heads": 16, "num_kv_heads": 16, "qk_nope_head_dim": 64,
                           "qk_rope_head_dim": 32, "v_head_dim": 64}}})",
     {}},
    {"kv_heads_do_not_divide_heads", R"({"model": {"mla": {"num_heads": 16, "num_kv_heads": 5}}})",
     {"/model/mla/num_kv_heads: 5 does not divide num_heads (16)"}},
    {"odd_rope_dim", R"({"model": {"mla": {"qk_rope_head_dim": 33}}})",
     {"/model/mla/qk_rope_head_dim: 33 is odd; RoPE rotates pairs, use an even size"}},
    {"groups_do_not_divide_experts", R"({"model": {"moe": {"num_experts": 8, "n_group": 3}}})",
     {"/model/moe/n_group: 3 does not divide num_experts (8)"}},
    {"topk_group_exceeds_groups", R"({"model": {"moe": {"num_experts": 8, "n_group": 4, "topk_group": 5}}})",
     {"/model/moe/topk_group: 5 exceeds n_group (4)"}},
    {"k_exceeds_selected_groups",
     R"({"model": {"moe": {"num_experts": 8, "n_group": 4, "topk_group": 1, "num_experts_per_token": 3}}})",
     {"/model/moe/num_experts_per_token: 3 exceeds the 2 experts in the topk_group (1) selected groups"}},
    {"fp16_and_bf16", R"({"training": {"use_fp16": true, "use_bf16": true}})",
     {"/training/use_fp16: true together with use_bf16; choose one mixed-precision mode"}},
    {"batch_not_divisible", R"({"training": {"global_batch_size": 64, "micro_batch_size": 3}})",
     {"/training/global_batch_size: 64 is not divisible by micro_batch_size (3) x data_parallel_size (1) = 3"}},
    {"batch_not_divisible_by_dp",
     R"({"distributed": {"data_parallel_size": 3}, "training": {"global_batch_size": 64, "micro_batch_size": 2}})",
     {"/training/global_batch_size: 64 is not divisible by micro_batch_size (2) x data_parallel_size (3) = 6"}},
    {"experts_not_divisible_by_ep", R"({"distributed": {"expert_parallel_size": 3, "data_parallel_size": 3},
                                       "training": {"global_batch_size": 66}})",
     {"/distributed/expert_parallel_size: 3 does not divide num_experts (8)"}},
    {"ep_not_dividing_dp", R"({"distributed": {"expert_parallel_size": 4, "data_parallel_size": 2}})",
     {"/distributed/expert_parallel_size: 4 does not divide data_parallel_size (2); expert-parallel groups are "
      "formed from data-parallel ranks"}},
    {"tp_not_dividing_heads", R"({"distributed": {"tensor_parallel_size": 32}})",
     {"/distributed/tensor_parallel_size: 32 does not divide model.mla.num_heads (16); tensor parallelism splits it "
      "evenly",
      "/distributed/tensor_parallel_size: 32 does not divide model.mla.num_kv_heads (16); tensor parallelism splits "
      "it evenly"}},
    {"tp_not_dividing_vocab", R"({"distributed": {"tensor_parallel_size": 2}, "model": {"vocab_size": 32001}})",
     {"/distributed/tensor_parallel_size: 2 does not divide model.vocab_size (32001); tensor parallelism splits it "
      "evenly"}},
    {"more_stages_than_layers", R"({"distributed": {"pipeline_parallel_size": 16}})",
     {"/distributed/pipeline_parallel_size: 16 stages for 12 layers (model.num_layers): every stage needs a layer"}},
    {"layout_not_matching_layers",
     R"({"distributed": {"pipeline_parallel_size": 2, "pipeline_layout": [6, 5]}, "training": {"global_batch_size": 64}})",
     {"/distributed/pipeline_layout: lists 2 stages of 11 layers; it needs pipeline_parallel_size (2) entries summing "
      "to model.num_layers (12)"}},
    {"zero3_with_pipeline", R"({"distributed": {"pipeline_parallel_size": 2, "zero_stage": 3}})",
     {"/distributed/zero_stage: 3 with pipeline_parallel_size 2: ZeRO-3 would gather every layer again for each "
      "micro-batch in flight; use ZeRO-1 or 2 inside the stages (as DeepSeek-V3 and Megatron do)"}},
    {"virtual_stages_without_interleaving", R"({"distributed": {"virtual_pipeline_stages": 2}})",
     {"/distributed/virtual_pipeline_stages: 2 model chunks per rank need pipeline_schedule \"interleaved_1f1b\" (it "
      "is \"1f1b\")"}},
    {"interleaved_micro_batches_not_in_groups",
     R"({"distributed": {"pipeline_parallel_size": 2, "pipeline_schedule": "interleaved_1f1b",
                         "virtual_pipeline_stages": 2},
         "training": {"global_batch_size": 6, "micro_batch_size": 2}})",
     {"/distributed/pipeline_schedule: \"interleaved_1f1b\" runs the micro-batches in groups of "
      "pipeline_parallel_size (2); 3 micro-batches per data-parallel rank (global_batch_size / (micro_batch_size x "
      "data_parallel_size)) is not a multiple"}},
    {"sequence_parallel_uneven", R"({"distributed": {"tensor_parallel_size": 2, "sequence_parallel": true},
                                    "training": {"seq_length": 2047}})",
     {"/distributed/sequence_parallel: true needs seq_length (2047) divisible by tensor_parallel_size (2)"}},
    {"min_lr_above_lr", R"({"training": {"learning_rate": 1e-4, "min_learning_rate": 1e-3}})",
     {"/training/min_learning_rate: 0.001 exceeds learning_rate (0.0001)"}},
    {"seq_beyond_context", R"({"training": {"seq_length": 8192}})",
     {"/training/seq_length: 8192 exceeds model.mla.max_context_length (4096)"}},
    {"mtp_needs_two_tokens", R"({"training": {"use_mtp": true, "num_predict_tokens": 1}})",
     {"/training/num_predict_tokens: 1 with use_mtp true: multi-token prediction needs >= 2 (the next token plus "
      "at least one more)"}},
    {"steps_and_tokens_disagree",
     R"({"training": {"global_batch_size": 8, "seq_length": 128, "train_steps": 10, "total_training_tokens": 99999}})",
     {"/training/train_steps: 10 steps x 1024 tokens/step = 10240 tokens, but total_training_tokens is 99999; "
      "give one of them or make them agree"}},
    {"no_sources", R"({"data": {"sources": []}})",
     {"/data/sources: at least one source is required (subset ids: dolma_v1_6_cc, dolma_v1_6_c4, ...)"}},
    {"source_without_subset", R"({"data": {"sources": [{"name": "web", "paths": ["x/*.json.gz"]}]}})",
     {"/data/sources/0/subset: is required: the Dolma subset id of the source (dolma_v1_6_cc, dolma_v1_6_c4, ...)"}},
    {"duplicate_source_names",
     R"({"data": {"sources": [{"subset": "dolma_v1_6_cc"}, {"subset": "dolma_v1_6_cc"}]}})",
     {"/data/sources/1/name: \"dolma_v1_6_cc\" names two sources; give each source its own name"}},
    {"sentencepiece_without_model", R"({"data": {"tokenizer": {"type": "sentencepiece"}}})",
     {"/data/tokenizer/model: is required with type \"sentencepiece\" (the .model file)"}},
    {"vocab_below_byte_tokenizer", R"({"model": {"vocab_size": 200}})",
     {"/model/vocab_size: 200 does not cover the byte tokenizer's 259 ids (256 bytes + BOS, EOS, PAD)"}},
    {"wandb_enabled", R"({"logging": {"wandb": {"enabled": true}}})",
     {"/logging/wandb/enabled: true is not supported: Weights & Biases needs its network service; use "
      "logging.tensorboard (real TensorBoard event files) instead"}},
    {"slurm_time", R"({"slurm": {"time": "1 day"}})",
     {"/slurm/time: \"1 day\" is not a Slurm time limit (minutes, HH:MM:SS or D-HH:MM:SS)"}},
    {"slurm_mem", R"({"slurm": {"mem": "64GB"}})",
     {"/slurm/mem: \"64GB\" is not a Slurm memory size (a number with an optional K, M, G or T)"}},
    {"slurm_extra_arg", R"({"slurm": {"extra_args": ["exclusive"]}})",
     {"/slurm/extra_args/0: \"exclusive\" is not an sbatch option (options start with '-', e.g. --exclusive)"}},
    {"dp_mismatch_with_world", R"({"distributed": {"data_parallel_size": 4},
                                  "slurm": {"enabled": true, "nodes": 1, "ntasks_per_node": 2, "gpus_per_node": 2}})",
     {}},  // without a world size from the launcher, dp 4 defines the world (4); see WorldSizeConflict
    {"skip_train_needs_validation", R"({"training": {"skip_train": true}, "validation": {"enabled": false}})",
     {"/training/skip_train: true needs validation.enabled: evaluating is all such a run does"}},
    {"offload_needs_zero", R"({"distributed": {"zero_stage": 0, "zero_offload": true}})",
     {"/distributed/zero_offload: true needs zero_stage >= 1 (the offloaded optimizer state is the sharded one)"}},
    {"deepspeed_stage_conflict", R"({"distributed": {"zero_stage": 1},
                                    "deepspeed": {"enabled": true, "zero_optimization": {"stage": 2}}})",
     {"/deepspeed/zero_optimization/stage: 2 disagrees with distributed.zero_stage (1); give one of them"}},
    {"deepspeed_missing_file", R"({"deepspeed": {"enabled": true, "config_file": "no/such/ds.json"}})",
     {"/deepspeed/config_file: \"no/such/ds.json\" does not exist (looked in the working directory and in the "
      "config's directory and its parents)"}},
    {"both_nested_and_top_level", R"({"distributed": {"slurm": {}}, "slurm": {}})",
     {"/distributed/slurm: given both here and as top-level \"slurm\"; keep one"}},
    {"extends_wrong_type", R"({"extends": 3})",
     {"/extends: expected a file path or a list of file paths, got 3"}},
    {"not_an_object", R"([1, 2])", {"config: a config must be a JSON object, got [1,2]"}},
    // Found by config_parser_fuzz: products of huge but valid integers overflowed int64.
    {"tokens_per_step_overflow", R"({"training": {"global_batch_size": 2222222222222221024, "micro_batch_size": 1}})",
     {"/training/global_batch_size: 2222222222222221024 x seq_length (2048) tokens per step does not fit in 64 bits"}},
    {"run_length_overflow", R"({"training": {"train_steps": 9000000000000000000}})",
     {"/training/train_steps: 9000000000000000000 steps x 131072 tokens/step does not fit in 64 bits"}},
    {"many_errors_at_once",
     R"({"model": {"num_layers": 0, "norm_type": "batchnorm"}, "training": {"optimizer": "lion", "adam_eps": 0}})",
     {"/model/num_layers: 0 is out of range: must be >= 1",
      "/model/norm_type: \"batchnorm\" is not one of: rmsnorm, layernorm",
      "/training/optimizer: \"lion\" is not one of: adamw, adam, sgd",
      "/training/adam_eps: 0 is out of range: must be > 0"}},
};

class BadConfigTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadConfigTest, YieldsExactlyTheExpectedErrors) {
  const BadConfig& bad = GetParam();
  const LoadResult r = LoadConfigText(bad.json);
  std::vector<std::string> got;
  for (const auto& e : r.errors) got.push_back(e.ToString());
  EXPECT_EQ(got, bad.errors);
}

INSTANTIATE_TEST_SUITE_P(Table, BadConfigTest, ::testing::ValuesIn(kBadConfigs),
                         [](const ::testing::TestParamInfo<BadConfig>& info) { return info.param.name; });

TEST(WorldSize, ConflictWithTheLaunchersWorldSize) {
  LoadOptions o;
  o.world_size = 2;
  const LoadResult r = LoadConfigText(R"({"distributed": {"data_parallel_size": 4}})", o);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].ToString(),
            "/distributed/data_parallel_size: 4 x tensor_parallel_size (1) x pipeline_parallel_size (1) = 4 does "
            "not match the world size 2");
}

TEST(WorldSize, NotDivisibleByModelParallel) {
  LoadOptions o;
  o.world_size = 6;
  const LoadResult r = LoadConfigText(R"({"distributed": {"tensor_parallel_size": 4}})", o);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].path, "/distributed/data_parallel_size");
  EXPECT_NE(r.errors[0].message.find("world size 6 is not divisible"), std::string::npos);
}

}  // namespace
}  // namespace dsv3::config
