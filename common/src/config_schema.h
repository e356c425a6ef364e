// The config schema, written once: every section lists its fields with their JSON name,
// the struct member, and the per-field rule (range or allowed values). The same Visit
// functions drive reading (config_reader.cc), writing (ToJson) and the key lists used for
// "did you mean" suggestions, so a field added here is parsed, printed and checked at once.
//
// A visitor V provides:
//   v.Field(name, member, rule)            scalars, strings, optionals, string lists
//   v.Alias(alias, canonical, member, rule) a second name for the field just declared
//   v.Section(name, fn)                    a nested object; fn(V&) visits its fields
//   v.List(name, vector, fn)               a list of objects; fn(V&, T&) visits one element
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::config::schema {

// Per-field constraint checked while reading. Ranges are inclusive unless *_open.
struct Rule {
  std::optional<double> min, max;
  bool min_open = false, max_open = false;
  std::vector<std::string> choices;  // for strings: the allowed values
  bool non_empty = false;            // for strings
};

inline Rule None() { return {}; }
inline Rule AtLeast(double lo) { Rule r; r.min = lo; return r; }
inline Rule Above(double lo) { Rule r; r.min = lo; r.min_open = true; return r; }
inline Rule Between(double lo, double hi) { Rule r; r.min = lo; r.max = hi; return r; }
inline Rule Probability() {  // dropout-like: [0, 1)
  Rule r; r.min = 0; r.max = 1; r.max_open = true; return r;
}
inline Rule OneOf(std::vector<std::string> choices) { Rule r; r.choices = std::move(choices); return r; }
inline Rule NonEmpty() { Rule r; r.non_empty = true; return r; }

template <class V> void Visit(V& v, MlaConfig& c) {
  v.Field("d_model", c.d_model, AtLeast(1));
  v.Field("d_latent", c.d_latent, AtLeast(1));
  v.Field("num_heads", c.num_heads, AtLeast(1));
  v.Field("num_kv_heads", c.num_kv_heads, AtLeast(1));
  v.Field("use_fp8_kv", c.use_fp8_kv, None());
  v.Field("max_context_length", c.max_context_length, AtLeast(1));
  v.Field("use_flash_mla", c.use_flash_mla, None());
  v.Field("flash_mla_backend", c.flash_mla_backend, OneOf({"auto", "sparse", "dense"}));
  v.Field("fallback_to_dense", c.fallback_to_dense, None());
  v.Field("use_rope", c.use_rope, None());
  v.Field("rope_theta", c.rope_theta, Above(0));
  v.Field("sliding_window", c.sliding_window, AtLeast(1));
  v.Field("attn_dropout", c.attn_dropout, Probability());
  v.Field("q_lora_rank", c.q_lora_rank, AtLeast(0));
  v.Field("qk_nope_head_dim", c.qk_nope_head_dim, AtLeast(0));
  v.Field("qk_rope_head_dim", c.qk_rope_head_dim, AtLeast(0));
  v.Field("v_head_dim", c.v_head_dim, AtLeast(0));
}

template <class V> void Visit(V& v, MoeConfig& c) {
  v.Field("num_experts", c.num_experts, AtLeast(1));
  v.Field("num_experts_per_token", c.num_experts_per_token, AtLeast(1));
  v.Field("expert_intermediate_size", c.expert_intermediate_size, AtLeast(1));
  v.Alias("expert_dim", "expert_intermediate_size", c.expert_intermediate_size, AtLeast(1));
  v.Field("dropout", c.dropout, Probability());
  v.Field("num_shared_experts", c.num_shared_experts, AtLeast(0));
  v.Field("shared_intermediate_size", c.shared_intermediate_size, AtLeast(0));
  v.Field("router_aux_loss_weight", c.router_aux_loss_weight, AtLeast(0));
  v.Field("router_temperature", c.router_temperature, Above(0));
  v.Field("router_noise_std", c.router_noise_std, AtLeast(0));
  v.Field("capacity_factor", c.capacity_factor, None());
  v.Field("use_aux_loss_free", c.use_aux_loss_free, None());
  v.Field("balance_loss_type", c.balance_loss_type, OneOf({"entropy", "load", "none"}));
  v.Field("min_expert_capacity", c.min_expert_capacity, AtLeast(0));
  v.Field("use_deep_ep", c.use_deep_ep, None());
  v.Field("deep_ep_fp8", c.deep_ep_fp8, None());
  v.Field("deep_ep_async", c.deep_ep_async, None());
  v.Field("score_func", c.score_func, OneOf({"softmax", "sigmoid"}));
  v.Field("n_group", c.n_group, AtLeast(1));
  v.Field("topk_group", c.topk_group, AtLeast(1));
  v.Field("routed_scaling_factor", c.routed_scaling_factor, Above(0));
  v.Field("norm_topk_prob", c.norm_topk_prob, None());
  v.Field("bias_update_speed", c.bias_update_speed, AtLeast(0));
  v.Field("seq_aux_loss_weight", c.seq_aux_loss_weight, AtLeast(0));
}

template <class V> void Visit(V& v, ModelConfig& c) {
  v.Field("num_layers", c.num_layers, AtLeast(1));
  v.Field("vocab_size", c.vocab_size, AtLeast(2));
  v.Field("norm_type", c.norm_type, OneOf({"rmsnorm", "layernorm"}));
  v.Field("norm_eps", c.norm_eps, Above(0));
  v.Field("tie_word_embeddings", c.tie_word_embeddings, None());
  v.Field("init_method_std", c.init_method_std, Above(0));
  v.Field("dense_layer_interval", c.dense_layer_interval, AtLeast(0));
  v.Field("first_k_dense_layers", c.first_k_dense_layers, AtLeast(0));
  v.Field("dense_intermediate_size", c.dense_intermediate_size, AtLeast(0));
  v.Field("gradient_checkpointing", c.gradient_checkpointing, None());
  v.Field("fused_kernels", c.fused_kernels, None());
  v.Section("mla", [&](V& s) { Visit(s, c.mla); });
  v.Section("moe", [&](V& s) { Visit(s, c.moe); });
}

template <class V> void Visit(V& v, TrainingConfig& c) {
  v.Field("global_batch_size", c.global_batch_size, AtLeast(1));
  v.Field("micro_batch_size", c.micro_batch_size, AtLeast(1));
  v.Field("seq_length", c.seq_length, AtLeast(1));
  v.Field("tokens_per_parameter_ratio", c.tokens_per_parameter_ratio, Above(0));
  v.Field("total_training_tokens", c.total_training_tokens, AtLeast(1));
  v.Field("learning_rate", c.learning_rate, Above(0));
  v.Field("min_learning_rate", c.min_learning_rate, AtLeast(0));
  v.Field("lr_warmup_steps", c.lr_warmup_steps, AtLeast(0));
  v.Field("lr_decay_style", c.lr_decay_style, OneOf({"cosine", "linear", "constant"}));
  v.Field("weight_decay", c.weight_decay, AtLeast(0));
  v.Field("grad_clip", c.grad_clip, AtLeast(0));
  v.Field("use_fp16", c.use_fp16, None());
  v.Field("use_bf16", c.use_bf16, None());
  v.Field("use_fp8", c.use_fp8, None());
  v.Field("use_mtp", c.use_mtp, None());
  v.Field("num_predict_tokens", c.num_predict_tokens, AtLeast(1));
  v.Alias("mtp_tokens", "num_predict_tokens", c.num_predict_tokens, AtLeast(1));
  v.Field("train_steps", c.train_steps, AtLeast(1));
  v.Field("eval_interval", c.eval_interval, AtLeast(0));
  v.Field("save_interval", c.save_interval, AtLeast(0));
  v.Field("log_interval", c.log_interval, AtLeast(1));
  v.Field("optimizer", c.optimizer, OneOf({"adamw", "adam", "sgd"}));
  v.Field("adam_beta1", c.adam_beta1, Probability());
  v.Field("adam_beta2", c.adam_beta2, Probability());
  v.Field("adam_eps", c.adam_eps, Above(0));
  v.Field("mtp_loss_weight", c.mtp_loss_weight, AtLeast(0));
  v.Field("intra_op_threads", c.intra_op_threads, Between(0, 4096));
  v.Field("skip_nonfinite_steps", c.skip_nonfinite_steps, None());
  v.Field("skip_train", c.skip_train, None());
}

template <class V> void Visit(V& v, DataSource& c) {
  v.Field("name", c.name, None());
  v.Field("subset", c.subset, OneOf(DolmaSubsets()));
  v.Field("weight", c.weight, Above(0));
  v.Field("paths", c.paths, None());
  v.Field("description", c.description, None());
}

template <class V> void Visit(V& v, DataConfig& c) {
  v.Field("dataset_name", c.dataset_name, None());
  v.Field("dataset_version", c.dataset_version, None());
  v.Field("cache_dir", c.cache_dir, NonEmpty());
  v.Section("preprocessing", [&](V& s) {
    s.Field("num_workers", c.preprocessing.num_workers, Between(1, 1024));
    s.Field("shuffle", c.preprocessing.shuffle, None());
    s.Field("shuffle_seed", c.preprocessing.shuffle_seed, AtLeast(0));
  });
  v.List("sources", c.sources, [](V& s, DataSource& src) { Visit(s, src); });
  v.Section("tokenizer", [&](V& s) {
    s.Field("type", c.tokenizer.type, OneOf({"byte", "sentencepiece"}));
    s.Field("model", c.tokenizer.model, None());
  });
  v.Field("reset_attention_mask", c.reset_attention_mask, None());
}

template <class V> void Visit(V& v, DistributedConfig& c) {
  v.Field("backend", c.backend, OneOf({"nccl", "gloo", "deepspeed"}));
  v.Field("launcher", c.launcher, OneOf({"torchrun", "slurm", "deepspeed", "mpirun"}));
  v.Field("tensor_parallel_size", c.tensor_parallel_size, AtLeast(1));
  v.Field("pipeline_parallel_size", c.pipeline_parallel_size, AtLeast(1));
  v.Field("expert_parallel_size", c.expert_parallel_size, AtLeast(1));
  v.Field("data_parallel_size", c.data_parallel_size, AtLeast(-1));
  v.Field("zero_stage", c.zero_stage, Between(0, 3));
  v.Field("zero_offload", c.zero_offload, None());
  v.Field("overlap_grad_reduce", c.overlap_grad_reduce, None());
  v.Field("overlap_param_gather", c.overlap_param_gather, None());
  v.Field("sequence_parallel", c.sequence_parallel, None());
  v.Field("pipeline_schedule", c.pipeline_schedule, OneOf({"gpipe", "1f1b", "interleaved_1f1b"}));
  v.Field("virtual_pipeline_stages", c.virtual_pipeline_stages, AtLeast(1));
  v.Field("pipeline_layout", c.pipeline_layout, AtLeast(1));
}

template <class V> void Visit(V& v, DeepSpeedConfig& c) {
  const auto devices = [] { return OneOf({"none", "cpu", "nvme"}); };
  v.Field("enabled", c.enabled, None());
  v.Field("config_file", c.config_file, NonEmpty());
  v.Section("fp16", [&](V& s) { s.Field("enabled", c.fp16_enabled, None()); });
  v.Section("bf16", [&](V& s) { s.Field("enabled", c.bf16_enabled, None()); });
  v.Section("zero_optimization", [&](V& s) {
    s.Field("stage", c.zero_stage, Between(0, 3));
    s.Section("offload_optimizer", [&](V& o) { o.Field("device", c.offload_optimizer_device, devices()); });
    s.Section("offload_param", [&](V& o) { o.Field("device", c.offload_param_device, devices()); });
    s.Field("overlap_comm", c.overlap_comm, None());
    s.Field("contiguous_gradients", c.contiguous_gradients, None());
    s.Field("reduce_bucket_size", c.reduce_bucket_size, AtLeast(1));
  });
  v.Field("gradient_accumulation_steps", c.gradient_accumulation_steps, AtLeast(1));
  v.Field("gradient_clipping", c.gradient_clipping, AtLeast(0));
}

template <class V> void Visit(V& v, SlurmConfig& c) {
  v.Field("enabled", c.enabled, None());
  v.Field("partition", c.partition, NonEmpty());
  v.Field("nodes", c.nodes, AtLeast(1));
  v.Field("ntasks_per_node", c.ntasks_per_node, AtLeast(1));
  v.Field("gpus_per_node", c.gpus_per_node, AtLeast(0));
  v.Field("cpus_per_task", c.cpus_per_task, AtLeast(1));
  v.Field("time", c.time, NonEmpty());
  v.Field("mem", c.mem, NonEmpty());
  v.Field("job_name", c.job_name, NonEmpty());
  v.Field("output", c.output, NonEmpty());
  v.Field("error", c.error, NonEmpty());
  v.Field("account", c.account, NonEmpty());
  v.Field("qos", c.qos, NonEmpty());
  v.Field("extra_args", c.extra_args, None());
}

template <class V> void Visit(V& v, LoggingConfig& c) {
  v.Section("wandb", [&](V& s) {
    s.Field("enabled", c.wandb.enabled, None());
    s.Field("project", c.wandb.project, None());
    s.Field("entity", c.wandb.entity, None());
    s.Field("name", c.wandb.name, None());
    s.Field("tags", c.wandb.tags, None());
  });
  v.Section("tensorboard", [&](V& s) {
    s.Field("enabled", c.tensorboard.enabled, None());
    s.Field("log_dir", c.tensorboard.log_dir, NonEmpty());
  });
  v.Field("peak_tflops", c.peak_tflops, AtLeast(0));
}

template <class V> void Visit(V& v, CheckpointingConfig& c) {
  v.Field("enabled", c.enabled, None());
  v.Field("dir", c.dir, NonEmpty());
  v.Field("keep_last_n", c.keep_last_n, AtLeast(0));
  v.Field("keep_best_n", c.keep_best_n, AtLeast(0));
  v.Field("best_metric", c.best_metric, OneOf({"val_loss"}));
  v.Field("async_save", c.async_save, None());
  v.Field("save_optimizer_state", c.save_optimizer_state, None());
  v.Field("save_final", c.save_final, None());
  v.Field("resume_from", c.resume_from, NonEmpty());
  v.Field("init_from_hf", c.init_from_hf, NonEmpty());
}

template <class V> void Visit(V& v, ValidationConfig& c) {
  v.Field("enabled", c.enabled, None());
  v.Field("split_fraction", c.split_fraction, Probability());
  v.List("sources", c.sources, [](V& s, DataSource& src) { Visit(s, src); });
  v.Field("eval_batches", c.eval_batches, AtLeast(1));
  v.Field("micro_batch_size", c.micro_batch_size, AtLeast(0));
  v.Field("sample_prompt", c.sample_prompt, None());
  v.Field("sample_tokens", c.sample_tokens, AtLeast(0));
}

template <class V> void Visit(V& v, WatchdogConfig& c) {
  v.Field("enabled", c.enabled, None());
  v.Field("hang_timeout_s", c.hang_timeout_s, AtLeast(0));
  v.Field("hang_timeout_floor_s", c.hang_timeout_floor_s, AtLeast(1));
  v.Field("step_time_multiple", c.step_time_multiple, AtLeast(1));
  v.Field("startup_timeout_s", c.startup_timeout_s, AtLeast(1));
  v.Field("checkpoint_timeout_s", c.checkpoint_timeout_s, AtLeast(1));
  v.Field("evaluation_timeout_s", c.evaluation_timeout_s, AtLeast(1));
  v.Field("dump_timeout_s", c.dump_timeout_s, AtLeast(0));
  v.Field("straggler_factor", c.straggler_factor, AtLeast(0));
  v.Field("straggler_steps", c.straggler_steps, AtLeast(1));
}

template <class V> void Visit(V& v, Config& c) {
  v.Field("experiment_name", c.experiment_name, NonEmpty());
  v.Field("output_dir", c.output_dir, NonEmpty());
  v.Field("seed", c.seed, AtLeast(0));
  v.Field("max_restarts", c.max_restarts, AtLeast(0));
  v.Section("model", [&](V& s) { Visit(s, c.model); });
  v.Section("training", [&](V& s) { Visit(s, c.training); });
  v.Section("data", [&](V& s) { Visit(s, c.data); });
  v.Section("distributed", [&](V& s) { Visit(s, c.distributed); });
  v.Section("deepspeed", [&](V& s) { Visit(s, c.deepspeed); });
  v.Section("slurm", [&](V& s) { Visit(s, c.slurm); });
  v.Section("checkpointing", [&](V& s) { Visit(s, c.checkpointing); });
  v.Section("logging", [&](V& s) { Visit(s, c.logging); });
  v.Section("validation", [&](V& s) { Visit(s, c.validation); });
  v.Section("watchdog", [&](V& s) { Visit(s, c.watchdog); });
}

}  // namespace dsv3::config::schema
