// The typed training configuration: one struct per section of the config guide
// (../shared/spec/config-guide.md), members named exactly like the guide's fields and
// initialised to the guide's defaults. Fields dsv3 adds are marked "(dsv3)" and documented
// in the README.
//
// This header is plain C++17 (no JSON, no LibTorch) so that every component, the engine on
// a GPU machine included, can hold a Config. Parsing, validation and serialisation live in
// config_io.h. A Config obtained from LoadConfig() is resolved: aliases folded into their
// canonical field, derived values filled in, and `derived` populated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dsv3::config {

// ---------------------------------------------------------------- model
struct MlaConfig {
  int64_t d_model = 1024;
  int64_t d_latent = 256;  // KV latent width = DeepSeek's kv_lora_rank
  int64_t num_heads = 16;
  int64_t num_kv_heads = 16;  // heads of the KV up-projection; divides num_heads; absent = num_heads
  bool use_fp8_kv = false;
  int64_t max_context_length = 4096;
  bool use_flash_mla = false;
  std::string flash_mla_backend = "auto";  // auto | sparse | dense
  bool fallback_to_dense = true;
  bool use_rope = true;
  double rope_theta = 10000.0;
  std::optional<int64_t> sliding_window;  // null = full causal attention
  double attn_dropout = 0.1;
  // (dsv3) exact DeepSeek head geometry. 0 = derived from d_model / num_heads
  // (nope = v = head_dim, rope = head_dim / 2 rounded down to even, V3's 128:64 ratio).
  int64_t q_lora_rank = 0;  // 0 = no query compression
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
};

struct MoeConfig {
  int64_t num_experts = 8;
  int64_t num_experts_per_token = 2;
  int64_t expert_intermediate_size = 2048;  // alias: expert_dim
  double dropout = 0.1;
  int64_t num_shared_experts = 0;
  int64_t shared_intermediate_size = 0;  // 0 = expert_intermediate_size
  double router_aux_loss_weight = 0.001;
  double router_temperature = 1.0;
  double router_noise_std = 0.1;
  double capacity_factor = 1.0;  // <= 0: dropless
  bool use_aux_loss_free = false;
  std::string balance_loss_type = "entropy";  // entropy | load | none
  int64_t min_expert_capacity = 4;
  bool use_deep_ep = false;
  bool deep_ep_fp8 = false;
  bool deep_ep_async = false;
  // (dsv3) DeepSeek-V3 routing
  std::string score_func = "softmax";  // softmax | sigmoid
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  double bias_update_speed = 0.001;  // gamma of the aux-loss-free bias update
  double seq_aux_loss_weight = 0.0;  // alpha of the sequence-wise balance loss (eq. 17-20)
};

struct ModelConfig {
  int64_t num_layers = 12;
  int64_t vocab_size = 128000;
  std::string norm_type = "rmsnorm";  // rmsnorm | layernorm
  double norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double init_method_std = 0.006;
  int64_t dense_layer_interval = 3;  // layer i (0-based) is dense when (i+1) % N == 0; 0 = never
  // (dsv3)
  int64_t first_k_dense_layers = 0;
  int64_t dense_intermediate_size = 0;  // 0 = k*expert + shared size (same activated FFN as MoE)
  bool gradient_checkpointing = false;
  // The kernels of dsv3_kernels (fused RMSNorm, RoPE, SwiGLU, MoE dispatch/combine and
  // grouped expert GEMMs, blocked attention, chunked linear + cross-entropy, the one-pass
  // optimizer update) instead of plain LibTorch ops. Same results within rounding; false runs
  // the reference path.
  bool fused_kernels = true;
  MlaConfig mla;
  MoeConfig moe;
};

// ---------------------------------------------------------------- training
struct TrainingConfig {
  int64_t global_batch_size = 64;
  int64_t micro_batch_size = 2;
  int64_t seq_length = 2048;
  double tokens_per_parameter_ratio = 20.0;
  std::optional<int64_t> total_training_tokens;  // null = from train_steps, else ratio x params
  double learning_rate = 3e-4;
  double min_learning_rate = 3e-5;
  int64_t lr_warmup_steps = 2000;
  std::string lr_decay_style = "cosine";  // cosine | linear | constant
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 = no clipping
  bool use_fp16 = false;
  bool use_bf16 = true;
  bool use_fp8 = false;
  bool use_mtp = true;
  int64_t num_predict_tokens = 2;  // alias: mtp_tokens
  std::optional<int64_t> train_steps;  // absent = derived from total_training_tokens
  int64_t eval_interval = 1000;  // 0 = never
  int64_t save_interval = 5000;  // 0 = only on request / signal / end
  int64_t log_interval = 10;
  std::string optimizer = "adamw";  // adamw | adam | sgd
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_eps = 1e-8;
  // (dsv3)
  double mtp_loss_weight = 0.3;  // lambda of eq. (25)
  int64_t intra_op_threads = 0;  // LibTorch threads per rank; 0 = cores / ranks on the node
  bool skip_nonfinite_steps = false;
  // (dsv3) Megatron's --skip-train: no training step; the initial weights (resumed or from
  // HF) are evaluated once on the validation data and the run ends (dsv3ctl eval --submit).
  bool skip_train = false;  // false: a NaN/Inf loss stops the run naming the step
};

// ---------------------------------------------------------------- data
struct DataSource {
  std::string name;    // display name; defaults to `subset`
  std::string subset;  // one of the Dolma v1.6 subset ids, e.g. dolma_v1_6_cc
  double weight = 1.0;  // normalised across sources after loading
  std::vector<std::string> paths;  // files or globs (.json.gz, .jsonl, .json, .jsonl.gz)
  std::string description;
};

struct PreprocessingConfig {
  int64_t num_workers = 4;
  bool shuffle = true;
  int64_t shuffle_seed = 42;
};

struct TokenizerConfig {  // (dsv3)
  std::string type = "byte";  // byte | sentencepiece
  std::string model;          // .model file for sentencepiece
};

// The guide's source table (weights within its ranges, summing to 1), each reading
// data/dolma/<subset>/*.json.gz: the mixture a config gets when it names no sources.
std::vector<DataSource> DefaultDolmaSources();

struct DataConfig {
  std::string dataset_name = "allenai/dolma";
  std::string dataset_version = "v1_6";
  std::string cache_dir = "./data/cache";
  PreprocessingConfig preprocessing;
  std::vector<DataSource> sources = DefaultDolmaSources();
  TokenizerConfig tokenizer;  // (dsv3)
  // (dsv3) Megatron's --reset-attention-mask: tokens attend only within their document and
  // positions restart at each document inside a packed window.
  bool reset_attention_mask = false;
};

// ---------------------------------------------------------------- distributed
struct DistributedConfig {
  std::string backend = "deepspeed";  // nccl | gloo | deepspeed (our ZeRO)
  std::string launcher = "torchrun";  // torchrun | slurm | deepspeed | mpirun
  int64_t tensor_parallel_size = 1;
  int64_t pipeline_parallel_size = 1;
  int64_t expert_parallel_size = 1;
  int64_t data_parallel_size = -1;  // -1 = world / (tp x pp)
  int64_t zero_stage = 1;
  bool zero_offload = false;
  bool overlap_grad_reduce = true;
  bool overlap_param_gather = true;
  // (dsv3) Pipeline parallelism: the schedule of micro-batches over the stages (gpipe |
  // 1f1b | interleaved_1f1b), the model chunks per rank for interleaved_1f1b, and the decoder
  // layers of each stage (empty: split evenly, earlier stages taking the remainder).
  // (dsv3) Megatron's sequence parallelism under tensor parallelism: norms and residual adds
  // of the decoder layers on T/tp positions per rank.
  bool sequence_parallel = false;
  std::string pipeline_schedule = "1f1b";
  int64_t virtual_pipeline_stages = 1;
  std::vector<int64_t> pipeline_layout;
};

struct DeepSpeedConfig {
  bool enabled = false;
  std::optional<std::string> config_file;  // DeepSpeed's own JSON; merged under this section
  bool fp16_enabled = false;               // "fp16": {"enabled": ...}
  bool bf16_enabled = false;               // "bf16": {"enabled": ...}
  int64_t zero_stage = 1;                  // zero_optimization.stage
  std::string offload_optimizer_device = "none";  // none | cpu | nvme
  std::string offload_param_device = "none";
  bool overlap_comm = true;
  bool contiguous_gradients = true;
  int64_t reduce_bucket_size = 500000000;
  int64_t gradient_accumulation_steps = 1;
  double gradient_clipping = 1.0;
};

struct SlurmConfig {
  bool enabled = false;
  std::optional<std::string> partition;  // unset: the cluster's default partition
  int64_t nodes = 1;
  int64_t ntasks_per_node = 1;
  // Unset: one GPU per task, or none with the gloo backend (ValidateAndDerive writes the 0).
  std::optional<int64_t> gpus_per_node;
  int64_t cpus_per_task = 8;
  std::string time = "24:00:00";
  std::string mem = "64G";
  std::string job_name = "deepseek_v3_train";
  std::string output = "logs/slurm-%j.out";
  std::string error = "logs/slurm-%j.err";
  std::optional<std::string> account;
  std::optional<std::string> qos;
  std::vector<std::string> extra_args;
};

// ---------------------------------------------------------------- reporting
struct WandbConfig {
  bool enabled = false;
  std::string project = "deepseek-v3";
  std::optional<std::string> entity;
  std::optional<std::string> name;
  std::vector<std::string> tags;
};

struct TensorBoardConfig {
  bool enabled = true;
  std::string log_dir = "./logs/tensorboard";
};

struct LoggingConfig {
  WandbConfig wandb;
  TensorBoardConfig tensorboard;
  double peak_tflops = 0;  // (dsv3) per-device peak for MFU; 0 = measured at start-up
};

struct CheckpointingConfig {  // (dsv3) the guide names the section without fields
  bool enabled = true;
  std::optional<std::string> dir;  // null = <output_dir>/checkpoints
  int64_t keep_last_n = 3;         // 0 = keep all
  int64_t keep_best_n = 1;         // by best_metric; 0 = none kept for being best
  std::string best_metric = "val_loss";
  bool async_save = false;
  bool save_optimizer_state = true;
  bool save_final = true;
  std::optional<std::string> resume_from;  // a checkpoint path or "latest"
  // A HuggingFace DeepSeek-V2/V3 directory whose weights start the run (a fresh optimizer,
  // step 0); ignored when the run resumes from a checkpoint (train/hf_weights.h).
  std::optional<std::string> init_from_hf;
};

struct ValidationConfig {  // (dsv3) the guide names the section without fields
  bool enabled = true;
  double split_fraction = 0.005;  // documents held out per source (ignored with `sources`)
  std::vector<DataSource> sources;  // separate validation files instead of a split
  int64_t eval_batches = 20;
  int64_t micro_batch_size = 0;  // 0 = training.micro_batch_size
  std::string sample_prompt = "The ";
  int64_t sample_tokens = 32;
};

// (dsv3) How dsv3d tells a hung or slow job from a working one (server/jobs/watchdog.h):
// every rank's heartbeat carries its training progress, and a job where no rank progressed
// for the hang timeout is hung.
struct WatchdogConfig {
  bool enabled = true;
  double hang_timeout_s = 0;          // 0 = derived: max(floor, step_time_multiple x p99 step time)
  double hang_timeout_floor_s = 30;
  double step_time_multiple = 5;
  double startup_timeout_s = 600;     // launch -> first step (model build, rendezvous, data)
  double checkpoint_timeout_s = 600;  // while a rank saves a checkpoint
  double evaluation_timeout_s = 600;  // while a rank evaluates
  double dump_timeout_s = 10;         // how long dsv3d waits for the ranks' dumps before killing
  double straggler_factor = 1.5;      // a rank this much slower than the median; 0 = off
  int64_t straggler_steps = 5;        // for this many reports in a row
};

// ---------------------------------------------------------------- derived
// Values computed while resolving; never read from the file.
struct DerivedValues {
  int64_t world_size = 1;
  bool world_size_given = false;  // false: assumed from the config's own parallel sizes
  int64_t gradient_accumulation_steps = 1;
  int64_t tokens_per_step = 0;
  double source_weight_sum = 0.0;  // before normalisation
  int64_t effective_zero_stage = 1;
  bool optimizer_offload = false;
  int64_t chinchilla_tokens = 0;  // tokens_per_parameter_ratio x total parameters
  std::string deepspeed_config_file;  // the file merged into `deepspeed`, if any
  std::vector<bool> layer_is_moe;  // the layer plan, one entry per layer
};

struct Config {
  std::string experiment_name = "deepseek_v3";
  std::string output_dir = "./outputs";
  int64_t seed = 42;
  // Under dsv3d: how many times a failed attempt is restarted from the newest intact
  // checkpoint before the job is FAILED (Determined's max_restarts).
  int64_t max_restarts = 3;
  ModelConfig model;
  TrainingConfig training;
  DataConfig data;
  DistributedConfig distributed;
  DeepSpeedConfig deepspeed;
  SlurmConfig slurm;
  CheckpointingConfig checkpointing;
  LoggingConfig logging;
  ValidationConfig validation;
  WatchdogConfig watchdog;
  DerivedValues derived;
};

// The Dolma v1.6 subset ids of the guide's source table.
const std::vector<std::string>& DolmaSubsets();

}  // namespace dsv3::config
