#include "config_validate.h"

#include <cmath>
#include <optional>
#include <regex>
#include <sstream>

#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/estimator.h"

namespace dsv3::config::internal {
namespace {

std::string Num(double x) {
  std::ostringstream os;
  os.precision(15);
  os << x;
  return os.str();
}
std::string Num(int64_t x) { return std::to_string(x); }

// a x b, or nullopt when the product does not fit in 64 bits: a config may name any
// integer, and the fuzzer found 2222222222222221024 x 32.
std::optional<int64_t> CheckedMul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

class Checker {
 public:
  Checker(const std::set<std::string>& present, std::vector<Diagnostic>& errors,
          std::vector<Diagnostic>& warnings)
      : present_(present), errors_(errors), warnings_(warnings) {
    for (const auto& e : errors_) bad_.insert(e.path);
  }

  bool Given(const std::string& path) const { return present_.count(path) != 0; }
  // True when none of the paths already has an error (so checks do not pile up).
  bool Clean(std::initializer_list<const char*> paths) const {
    for (const char* p : paths) {
      if (bad_.count(p) != 0) return false;
    }
    return true;
  }
  void Error(const std::string& path, std::string message) {
    bad_.insert(path);
    errors_.push_back({path, std::move(message)});
  }
  void Warn(const std::string& path, std::string message) {
    warnings_.push_back({path, std::move(message)});
  }

 private:
  const std::set<std::string>& present_;
  std::vector<Diagnostic>& errors_;
  std::vector<Diagnostic>& warnings_;
  std::set<std::string> bad_;
};

void CheckModel(Config& c, Checker& ck) {
  ModelConfig& m = c.model;
  MlaConfig& a = m.mla;
  MoeConfig& e = m.moe;
  if (ck.Clean({"/model/mla/d_latent", "/model/mla/d_model"}) && a.d_latent > a.d_model) {
    ck.Error("/model/mla/d_latent", Num(a.d_latent) + " exceeds d_model (" + Num(a.d_model) +
                                        "); the KV latent compresses the hidden state (1/4 to 1/2 of d_model is usual)");
  }
  // Without GQA in the file, every query head has its own key/value head.
  if (!ck.Given("/model/mla/num_kv_heads")) a.num_kv_heads = a.num_heads;
  if (ck.Clean({"/model/mla/num_kv_heads", "/model/mla/num_heads"}) && a.num_heads % a.num_kv_heads != 0) {
    ck.Error("/model/mla/num_kv_heads", Num(a.num_kv_heads) + " does not divide num_heads (" +
                                            Num(a.num_heads) + ")");
  }
  const bool derives_head_dim = a.qk_nope_head_dim == 0 || a.v_head_dim == 0 || a.qk_rope_head_dim == 0;
  if (derives_head_dim && ck.Clean({"/model/mla/num_heads", "/model/mla/d_model"}) &&
      a.d_model % a.num_heads != 0) {
    ck.Error("/model/mla/num_heads", Num(a.num_heads) + " does not divide d_model (" + Num(a.d_model) +
                                         "); pick a divisor, or set qk_nope_head_dim, qk_rope_head_dim and "
                                         "v_head_dim explicitly");
  } else if (derives_head_dim && a.d_model / a.num_heads < 2) {
    ck.Error("/model/mla/num_heads", Num(a.num_heads) + " leaves a head dimension below 2 for d_model (" +
                                         Num(a.d_model) + ")");
  }
  if (a.use_rope && a.qk_rope_head_dim % 2 != 0 && ck.Clean({"/model/mla/qk_rope_head_dim"})) {
    ck.Error("/model/mla/qk_rope_head_dim", Num(a.qk_rope_head_dim) + " is odd; RoPE rotates pairs, use an even size");
  }
  if (a.sliding_window && *a.sliding_window >= a.max_context_length) {
    ck.Warn("/model/mla/sliding_window", Num(*a.sliding_window) + " is not below max_context_length (" +
                                             Num(a.max_context_length) + "): it has no effect");
  }
  if (ck.Clean({"/model/first_k_dense_layers", "/model/num_layers"}) && m.first_k_dense_layers > m.num_layers) {
    ck.Error("/model/first_k_dense_layers", Num(m.first_k_dense_layers) + " exceeds num_layers (" +
                                                Num(m.num_layers) + ")");
  }
  if (ck.Clean({"/model/moe/num_experts_per_token", "/model/moe/num_experts"}) &&
      e.num_experts_per_token > e.num_experts) {
    ck.Error("/model/moe/num_experts_per_token", Num(e.num_experts_per_token) + " exceeds num_experts (" +
                                                     Num(e.num_experts) + ")");
  }
  if (ck.Clean({"/model/moe/n_group", "/model/moe/num_experts"})) {
    if (e.num_experts % e.n_group != 0) {
      ck.Error("/model/moe/n_group", Num(e.n_group) + " does not divide num_experts (" + Num(e.num_experts) + ")");
    } else if (e.n_group > 1 && e.num_experts / e.n_group < 2) {
      ck.Error("/model/moe/n_group", Num(e.n_group) + " groups of " + Num(e.num_experts / e.n_group) +
                                         " expert: a group's score is the sum of its top-2 experts, so groups need at least 2");
    } else if (ck.Clean({"/model/moe/topk_group"}) && e.topk_group > e.n_group) {
      ck.Error("/model/moe/topk_group", Num(e.topk_group) + " exceeds n_group (" + Num(e.n_group) + ")");
    } else if (ck.Clean({"/model/moe/topk_group", "/model/moe/num_experts_per_token"}) &&
               e.num_experts_per_token > e.topk_group * (e.num_experts / e.n_group)) {
      ck.Error("/model/moe/num_experts_per_token",
               Num(e.num_experts_per_token) + " exceeds the " + Num(e.topk_group * (e.num_experts / e.n_group)) +
                   " experts in the topk_group (" + Num(e.topk_group) + ") selected groups");
    }
  }
  if ((e.deep_ep_fp8 || e.deep_ep_async) && !e.use_deep_ep) {
    ck.Warn("/model/moe/use_deep_ep", "false, so deep_ep_fp8 and deep_ep_async have no effect");
  }
  ResolveModelDefaults(m);
}

// World size: given by the launcher, else what the config implies.
int64_t WorldSize(const Config& c, const LoadOptions& options, bool& given) {
  const DistributedConfig& d = c.distributed;
  given = options.world_size.has_value();
  if (given) return *options.world_size;
  if (d.data_parallel_size > 0) return d.data_parallel_size * d.tensor_parallel_size * d.pipeline_parallel_size;
  if (c.slurm.enabled) return c.slurm.nodes * c.slurm.ntasks_per_node;
  return d.tensor_parallel_size * d.pipeline_parallel_size;
}

void CheckParallelism(Config& c, const LoadOptions& options, Checker& ck) {
  DistributedConfig& d = c.distributed;
  DerivedValues& out = c.derived;
  if (options.world_size && *options.world_size < 1) {
    ck.Error("", "world size " + Num(*options.world_size) + " must be >= 1");
    return;
  }
  out.world_size = WorldSize(c, options, out.world_size_given);
  const int64_t model_parallel = d.tensor_parallel_size * d.pipeline_parallel_size;
  if (!ck.Clean({"/distributed/tensor_parallel_size", "/distributed/pipeline_parallel_size",
                 "/distributed/data_parallel_size"})) {
    return;
  }
  if (d.data_parallel_size == 0) {
    ck.Error("/distributed/data_parallel_size", "0 is invalid: use -1 (derive from the world size) or a size >= 1");
    return;
  }
  if (d.data_parallel_size == -1) {
    if (out.world_size % model_parallel != 0) {
      ck.Error("/distributed/data_parallel_size",
               "-1 cannot be derived: world size " + Num(out.world_size) + " is not divisible by tensor_parallel_size (" +
                   Num(d.tensor_parallel_size) + ") x pipeline_parallel_size (" + Num(d.pipeline_parallel_size) + ")");
      return;
    }
    d.data_parallel_size = out.world_size / model_parallel;
  } else if (d.data_parallel_size * model_parallel != out.world_size) {
    ck.Error("/distributed/data_parallel_size",
             Num(d.data_parallel_size) + " x tensor_parallel_size (" + Num(d.tensor_parallel_size) +
                 ") x pipeline_parallel_size (" + Num(d.pipeline_parallel_size) + ") = " +
                 Num(d.data_parallel_size * model_parallel) + " does not match the world size " + Num(out.world_size));
    return;
  }
  const int64_t tp = d.tensor_parallel_size;
  if (tp > 1 && ck.Clean({"/model/mla/num_heads", "/model/mla/num_kv_heads", "/model/vocab_size"})) {
    // Megatron's split: whole heads, whole FFN columns and vocabulary rows per rank.
    const ModelConfig& m = c.model;
    const auto must_divide = [&](const char* what, int64_t n) {
      if (n % tp == 0) return;
      ck.Error("/distributed/tensor_parallel_size",
               Num(tp) + " does not divide " + what + " (" + Num(n) + "); tensor parallelism splits it evenly");
    };
    must_divide("model.mla.num_heads", m.mla.num_heads);
    must_divide("model.mla.num_kv_heads", m.mla.num_kv_heads);
    must_divide("model.vocab_size", m.vocab_size);
    const std::vector<bool> plan = LayerPlan(m);
    bool any_dense = false;
    for (bool moe : plan) any_dense = any_dense || !moe;
    if (any_dense) must_divide("the dense FFN width (model.dense_intermediate_size)", m.dense_intermediate_size);
    if (m.moe.num_shared_experts > 0) {
      must_divide("the shared experts' width (model.moe.num_shared_experts x shared_intermediate_size)",
                  m.moe.num_shared_experts * m.moe.shared_intermediate_size);
    }
  }
  const int64_t virtual_stages = d.pipeline_parallel_size * d.virtual_pipeline_stages;
  if (!d.pipeline_layout.empty() && ck.Clean({"/model/num_layers", "/distributed/pipeline_layout"})) {
    int64_t sum = 0;
    for (int64_t n : d.pipeline_layout) sum += n;
    if (static_cast<int64_t>(d.pipeline_layout.size()) != virtual_stages || sum != c.model.num_layers) {
      ck.Error("/distributed/pipeline_layout",
               "lists " + Num(static_cast<int64_t>(d.pipeline_layout.size())) + " stages of " + Num(sum) +
                   " layers; it needs pipeline_parallel_size (" + Num(d.pipeline_parallel_size) +
                   (d.virtual_pipeline_stages > 1 ? ") x virtual_pipeline_stages (" + Num(d.virtual_pipeline_stages)
                                                  : std::string()) +
                   ") entries summing to model.num_layers (" + Num(c.model.num_layers) + ")");
    }
  } else if (virtual_stages > c.model.num_layers && ck.Clean({"/model/num_layers"})) {
    ck.Error("/distributed/pipeline_parallel_size",
             Num(virtual_stages) + " stages" +
                 (d.virtual_pipeline_stages > 1 ? " (x virtual_pipeline_stages)" : std::string()) + " for " +
                 Num(c.model.num_layers) + " layers (model.num_layers): every stage needs a layer");
  }
  if (d.sequence_parallel && tp > 1 && c.training.seq_length % tp != 0 && ck.Clean({"/training/seq_length"})) {
    ck.Error("/distributed/sequence_parallel", "true needs seq_length (" + Num(c.training.seq_length) +
                                                   ") divisible by tensor_parallel_size (" + Num(tp) + ")");
  }
  if (d.virtual_pipeline_stages > 1 && d.pipeline_schedule != "interleaved_1f1b") {
    ck.Error("/distributed/virtual_pipeline_stages",
             Num(d.virtual_pipeline_stages) + " model chunks per rank need pipeline_schedule \"interleaved_1f1b\" (it is \"" +
                 d.pipeline_schedule + "\")");
  }
  if (ck.Clean({"/distributed/expert_parallel_size", "/model/moe/num_experts"})) {
    const int64_t ep = d.expert_parallel_size;
    if (c.model.moe.num_experts % ep != 0) {
      ck.Error("/distributed/expert_parallel_size",
               Num(ep) + " does not divide num_experts (" + Num(c.model.moe.num_experts) + ")");
    } else if (d.data_parallel_size % ep != 0) {
      ck.Error("/distributed/expert_parallel_size",
               Num(ep) + " does not divide data_parallel_size (" + Num(d.data_parallel_size) +
                   "); expert-parallel groups are formed from data-parallel ranks");
    }
  }
}

void CheckDeepSpeed(Config& c, Checker& ck) {
  DeepSpeedConfig& ds = c.deepspeed;
  DistributedConfig& d = c.distributed;
  TrainingConfig& t = c.training;
  DerivedValues& out = c.derived;
  out.effective_zero_stage = d.zero_stage;
  out.optimizer_offload = d.zero_offload;
  if (!ds.enabled) {
    if (d.zero_offload && d.zero_stage == 0 && ck.Clean({"/distributed/zero_stage"})) {
      ck.Error("/distributed/zero_offload", "true needs zero_stage >= 1 (the offloaded optimizer state is the sharded one)");
    }
    return;
  }
  // With DeepSpeed on, its section governs ZeRO, precision, accumulation and clipping; values
  // given in both places must agree, a value given in one place is taken from there.
  if (ck.Given("/distributed/zero_stage") && ck.Given("/deepspeed/zero_optimization/stage") &&
      d.zero_stage != ds.zero_stage) {
    ck.Error("/deepspeed/zero_optimization/stage", Num(ds.zero_stage) + " disagrees with distributed.zero_stage (" +
                                                       Num(d.zero_stage) + "); give one of them");
  }
  out.effective_zero_stage = ck.Given("/deepspeed/zero_optimization/stage") || !ck.Given("/distributed/zero_stage")
                                 ? ds.zero_stage
                                 : d.zero_stage;
  d.zero_stage = out.effective_zero_stage;
  ds.zero_stage = out.effective_zero_stage;
  if (ds.offload_optimizer_device == "nvme" || ds.offload_param_device == "nvme") {
    ck.Error(ds.offload_param_device == "nvme" ? "/deepspeed/zero_optimization/offload_param/device"
                                               : "/deepspeed/zero_optimization/offload_optimizer/device",
             "\"nvme\" is not supported by dsv3; use \"cpu\" or \"none\"");
  }
  if (ds.offload_param_device == "cpu" && out.effective_zero_stage != 3) {
    ck.Error("/deepspeed/zero_optimization/offload_param/device",
             "\"cpu\" needs ZeRO stage 3 (only sharded parameters can live in host memory), not stage " +
                 Num(out.effective_zero_stage));
  }
  out.optimizer_offload = d.zero_offload || ds.offload_optimizer_device == "cpu";
  if (out.optimizer_offload && out.effective_zero_stage == 0) {
    ck.Error("/deepspeed/zero_optimization/offload_optimizer/device",
             "optimizer offload needs ZeRO stage >= 1 (the offloaded optimizer state is the sharded one)");
  }
  const auto reconcile = [&](const char* ours_path, bool& ours, const char* theirs_path, bool theirs) {
    if (!ck.Given(theirs_path)) return;
    if (ck.Given(ours_path) && ours != theirs) {
      ck.Error(theirs_path, std::string(theirs ? "true" : "false") + " disagrees with " + (ours_path + 1) +
                                " (" + (ours ? "true" : "false") + ")");
    } else {
      ours = theirs;
    }
  };
  reconcile("/training/use_bf16", t.use_bf16, "/deepspeed/bf16/enabled", ds.bf16_enabled);
  reconcile("/training/use_fp16", t.use_fp16, "/deepspeed/fp16/enabled", ds.fp16_enabled);
  if (ck.Given("/deepspeed/fp16/enabled") && ds.fp16_enabled && !ck.Given("/training/use_bf16")) t.use_bf16 = false;
  if (ck.Given("/deepspeed/bf16/enabled") && ds.bf16_enabled && !ck.Given("/training/use_fp16")) t.use_fp16 = false;
  ds.bf16_enabled = t.use_bf16;
  ds.fp16_enabled = t.use_fp16;
  if (ck.Given("/deepspeed/gradient_clipping")) {
    if (ck.Given("/training/grad_clip") && t.grad_clip != ds.gradient_clipping) {
      ck.Error("/deepspeed/gradient_clipping", Num(ds.gradient_clipping) + " disagrees with training.grad_clip (" +
                                                   Num(t.grad_clip) + ")");
    }
    t.grad_clip = ds.gradient_clipping;
  }
  ds.gradient_clipping = t.grad_clip;
}

void CheckTraining(Config& c, const Estimate* estimate, Checker& ck) {
  TrainingConfig& t = c.training;
  DerivedValues& out = c.derived;
  if (t.skip_train && !c.validation.enabled) {
    ck.Error("/training/skip_train", "true needs validation.enabled: evaluating is all such a run does");
  }
  if (t.use_fp16 && t.use_bf16) {
    ck.Error("/training/use_fp16", "true together with use_bf16; choose one mixed-precision mode");
  }
  if (t.use_fp8 && t.use_fp16) {
    ck.Error("/training/use_fp8", "true together with use_fp16; FP8 training keeps bf16 for the rest (set use_bf16)");
  }
  if (ck.Clean({"/training/min_learning_rate", "/training/learning_rate"}) && t.min_learning_rate > t.learning_rate) {
    ck.Error("/training/min_learning_rate", Num(t.min_learning_rate) + " exceeds learning_rate (" + Num(t.learning_rate) + ")");
  }
  if (ck.Clean({"/training/seq_length", "/model/mla/max_context_length"}) &&
      t.seq_length > c.model.mla.max_context_length) {
    ck.Error("/training/seq_length", Num(t.seq_length) + " exceeds model.mla.max_context_length (" +
                                         Num(c.model.mla.max_context_length) + ")");
  }
  if (t.use_mtp && t.num_predict_tokens < 2 && ck.Clean({"/training/num_predict_tokens"})) {
    ck.Error("/training/num_predict_tokens", Num(t.num_predict_tokens) +
                                                 " with use_mtp true: multi-token prediction needs >= 2 "
                                                 "(the next token plus at least one more)");
  }
  const int64_t dp = c.distributed.data_parallel_size;
  if (dp >= 1 && ck.Clean({"/training/global_batch_size", "/training/micro_batch_size"})) {
    const std::optional<int64_t> per_pass = CheckedMul(t.micro_batch_size, dp);
    if (!per_pass) {
      ck.Error("/training/micro_batch_size", Num(t.micro_batch_size) + " x data_parallel_size (" + Num(dp) +
                                                 ") does not fit in 64 bits");
    } else if (t.global_batch_size % *per_pass != 0) {
      ck.Error("/training/global_batch_size",
               Num(t.global_batch_size) + " is not divisible by micro_batch_size (" + Num(t.micro_batch_size) +
                   ") x data_parallel_size (" + Num(dp) + ") = " + Num(*per_pass));
    } else {
      out.gradient_accumulation_steps = t.global_batch_size / *per_pass;
    }
  }
  DeepSpeedConfig& ds = c.deepspeed;
  if (ds.enabled) {
    if (ck.Given("/deepspeed/gradient_accumulation_steps") &&
        ds.gradient_accumulation_steps != out.gradient_accumulation_steps) {
      ck.Error("/deepspeed/gradient_accumulation_steps",
               Num(ds.gradient_accumulation_steps) + " disagrees with global_batch_size / (micro_batch_size x "
               "data_parallel_size) = " + Num(out.gradient_accumulation_steps));
    }
    ds.gradient_accumulation_steps = out.gradient_accumulation_steps;
  }

  // Run length: train_steps and total_training_tokens describe the same thing.
  const std::optional<int64_t> tokens_per_step = CheckedMul(t.global_batch_size, t.seq_length);
  if (!tokens_per_step && ck.Clean({"/training/global_batch_size", "/training/seq_length"})) {
    ck.Error("/training/global_batch_size", Num(t.global_batch_size) + " x seq_length (" + Num(t.seq_length) +
                                                ") tokens per step does not fit in 64 bits");
  }
  out.tokens_per_step = tokens_per_step.value_or(0);
  if (estimate != nullptr) {
    out.chinchilla_tokens = static_cast<int64_t>(std::llround(t.tokens_per_parameter_ratio *
                                                              static_cast<double>(estimate->params.total)));
  }
  if (!ck.Clean({"/training/train_steps", "/training/total_training_tokens", "/training/global_batch_size",
                 "/training/seq_length"})) {
    return;
  }
  const int64_t per_step = out.tokens_per_step;
  const std::optional<int64_t> planned_tokens =
      t.train_steps ? CheckedMul(*t.train_steps, per_step) : std::optional<int64_t>(0);
  if (!planned_tokens) {
    ck.Error("/training/train_steps", Num(*t.train_steps) + " steps x " + Num(per_step) +
                                          " tokens/step does not fit in 64 bits");
    return;
  }
  if (t.train_steps && t.total_training_tokens) {
    const int64_t planned = *planned_tokens;
    if (std::llabs(planned - *t.total_training_tokens) >= per_step) {
      ck.Error("/training/train_steps",
               Num(*t.train_steps) + " steps x " + Num(per_step) + " tokens/step = " + Num(planned) +
                   " tokens, but total_training_tokens is " + Num(*t.total_training_tokens) +
                   "; give one of them or make them agree");
    }
  } else if (t.train_steps) {
    t.total_training_tokens = *planned_tokens;
  } else {
    if (!t.total_training_tokens) {
      if (out.chinchilla_tokens <= 0) return;
      t.total_training_tokens = out.chinchilla_tokens;
    }
    t.train_steps = *t.total_training_tokens / per_step + (*t.total_training_tokens % per_step != 0 ? 1 : 0);
  }
  if (t.lr_warmup_steps >= *t.train_steps) {
    ck.Warn("/training/lr_warmup_steps", Num(t.lr_warmup_steps) + " is not below train_steps (" +
                                             Num(*t.train_steps) + "): the learning rate never leaves warmup");
  }
}

void CheckData(Config& c, Checker& ck) {
  DataConfig& d = c.data;
  if (d.sources.empty() && ck.Clean({"/data/sources"})) {
    ck.Error("/data/sources", "at least one source is required (subset ids: dolma_v1_6_cc, dolma_v1_6_c4, ...)");
  }
  const auto require_subset = [&ck](const std::vector<DataSource>& sources, const std::string& list) {
    for (size_t i = 0; i < sources.size(); ++i) {
      const std::string path = list + "/" + std::to_string(i) + "/subset";
      if (sources[i].subset.empty() && ck.Clean({path.c_str()})) {
        ck.Error(path, "is required: the Dolma subset id of the source (dolma_v1_6_cc, dolma_v1_6_c4, ...)");
      }
    }
  };
  require_subset(d.sources, "/data/sources");
  require_subset(c.validation.sources, "/validation/sources");
  std::set<std::string> names;
  double sum = 0;
  for (size_t i = 0; i < d.sources.size(); ++i) {
    DataSource& s = d.sources[i];
    if (s.name.empty()) s.name = s.subset;
    const std::string path = "/data/sources/" + std::to_string(i);
    if (!names.insert(s.name).second) {
      ck.Error(path + "/name", "\"" + s.name + "\" names two sources; give each source its own name");
    }
    sum += s.weight;
  }
  c.derived.source_weight_sum = sum;
  // Already-normalized weights are left bit-identical, so resolving is idempotent.
  if (sum > 0 && std::fabs(sum - 1.0) > 1e-12) {
    for (auto& s : d.sources) s.weight /= sum;
    if (std::fabs(sum - 1.0) > 1e-6) {
      ck.Warn("/data/sources", "weights sum to " + Num(sum) + "; normalized to 1");
    }
  }
  for (size_t i = 0; i < c.validation.sources.size(); ++i) {
    DataSource& s = c.validation.sources[i];
    if (s.name.empty()) s.name = s.subset;
  }
  // The byte tokenizer's 256 bytes + BOS, EOS, PAD (worker/data/tokenizer.h).
  constexpr int64_t kByteTokenizerVocab = 259;
  if (d.tokenizer.type == "byte" && c.model.vocab_size < kByteTokenizerVocab && ck.Clean({"/model/vocab_size"})) {
    ck.Error("/model/vocab_size", std::to_string(c.model.vocab_size) + " does not cover the byte tokenizer's " +
                                      std::to_string(kByteTokenizerVocab) + " ids (256 bytes + BOS, EOS, PAD)");
  }
  if (d.tokenizer.type == "sentencepiece" && d.tokenizer.model.empty() && ck.Clean({"/data/tokenizer/type"})) {
    ck.Error("/data/tokenizer/model", "is required with type \"sentencepiece\" (the .model file)");
  }
}

void CheckSlurm(Config& c, Checker& ck) {
  const SlurmConfig& s = c.slurm;
  // sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
  static const std::regex kTime(R"(^(UNLIMITED|infinite|\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$)");
  if (ck.Clean({"/slurm/time"}) && !std::regex_match(s.time, kTime)) {
    ck.Error("/slurm/time", "\"" + s.time + "\" is not a Slurm time limit (minutes, HH:MM:SS or D-HH:MM:SS)");
  }
  static const std::regex kMem(R"(^\d+[KMGT]?$)");
  if (ck.Clean({"/slurm/mem"}) && !std::regex_match(s.mem, kMem)) {
    ck.Error("/slurm/mem", "\"" + s.mem + "\" is not a Slurm memory size (a number with an optional K, M, G or T)");
  }
  for (size_t i = 0; i < s.extra_args.size(); ++i) {
    if (s.extra_args[i].empty() || s.extra_args[i][0] != '-') {
      ck.Error("/slurm/extra_args/" + std::to_string(i),
               "\"" + s.extra_args[i] + "\" is not an sbatch option (options start with '-', e.g. --exclusive)");
    }
  }
  const int64_t tp = c.distributed.tensor_parallel_size;
  if (s.enabled && tp > 1 && s.ntasks_per_node % tp != 0) {
    ck.Warn("/slurm/ntasks_per_node", Num(s.ntasks_per_node) + " is not a multiple of tensor_parallel_size (" +
                                          Num(tp) + "): some tensor-parallel groups would span two nodes");
  }
  if (!s.gpus_per_node && c.distributed.backend == "gloo") {
    c.slurm.gpus_per_node = 0;  // a CPU job asks Slurm for no GPUs
  } else if (s.gpus_per_node && *s.gpus_per_node > 0 && c.distributed.backend == "gloo") {
    ck.Warn("/slurm/gpus_per_node", Num(*s.gpus_per_node) + " GPU(s) per node for a job whose backend is \"gloo\", " +
                                        "which trains on the CPUs: Slurm would hold GPUs that sit idle (leave " +
                                        "gpus_per_node out or set 0)");
  }
  if (s.enabled && s.gpus_per_node && *s.gpus_per_node > 0 && *s.gpus_per_node != s.ntasks_per_node) {
    ck.Warn("/slurm/ntasks_per_node", Num(s.ntasks_per_node) + " differs from gpus_per_node (" +
                                          Num(*s.gpus_per_node) +
                                          "); dsv3 runs one rank per task, one task per GPU is usual");
  }
}

}  // namespace

void ValidateAndDerive(Config& c, const std::set<std::string>& present, const LoadOptions& options,
                       std::vector<Diagnostic>& errors, std::vector<Diagnostic>& warnings) {
  Checker ck(present, errors, warnings);
  CheckModel(c, ck);
  CheckParallelism(c, options, ck);
  CheckDeepSpeed(c, ck);
  if (c.distributed.pipeline_parallel_size > 1 && c.derived.effective_zero_stage == 3) {
    ck.Error(c.deepspeed.enabled ? "/deepspeed/zero_optimization/stage" : "/distributed/zero_stage",
             "3 with pipeline_parallel_size " + Num(c.distributed.pipeline_parallel_size) +
                 ": ZeRO-3 would gather every layer again for each micro-batch in flight; use ZeRO-1 or 2 inside "
                 "the stages (as DeepSeek-V3 and Megatron do)");
  }
  // Chinchilla tokens need the parameter count; only a sound model section has one.
  std::optional<Estimate> estimate;
  bool model_ok = true;
  for (const auto& e : errors) model_ok = model_ok && e.path.rfind("/model", 0) != 0;
  if (model_ok) estimate = EstimateConfig(c);
  CheckTraining(c, estimate ? &*estimate : nullptr, ck);
  const DistributedConfig& dc = c.distributed;
  if (dc.pipeline_parallel_size > 1 && dc.pipeline_schedule == "interleaved_1f1b" &&
      c.derived.gradient_accumulation_steps % dc.pipeline_parallel_size != 0 &&
      ck.Clean({"/training/global_batch_size", "/training/micro_batch_size"})) {
    ck.Error("/distributed/pipeline_schedule",
             "\"interleaved_1f1b\" runs the micro-batches in groups of pipeline_parallel_size (" +
                 Num(dc.pipeline_parallel_size) + "); " + Num(c.derived.gradient_accumulation_steps) +
                 " micro-batches per data-parallel rank (global_batch_size / (micro_batch_size x data_parallel_size)) "
                 "is not a multiple");
  }
  CheckData(c, ck);
  CheckSlurm(c, ck);
  if (c.logging.wandb.enabled) {
    ck.Error("/logging/wandb/enabled",
             "true is not supported: Weights & Biases needs its network service; use logging.tensorboard "
             "(real TensorBoard event files) instead");
  }
  c.checkpointing.dir = CheckpointDir(c.checkpointing.dir, c.output_dir);
  if (c.validation.micro_batch_size == 0) c.validation.micro_batch_size = c.training.micro_batch_size;
  c.derived.layer_is_moe = LayerPlan(c.model);
}

}  // namespace dsv3::config::internal
