#include "dsv3/common/estimator.h"
#include "dsv3/common/parallel_layout.h"

#include <algorithm>

namespace dsv3::config {
namespace {

int64_t NormParams(const ModelConfig& m, int64_t width) {
  return m.norm_type == "layernorm" ? 2 * width : width;  // LayerNorm has a bias
}

int64_t AttentionParams(const ModelConfig& m) {
  const MlaConfig& a = m.mla;
  const int64_t d = a.d_model;
  const int64_t qk_head = a.qk_nope_head_dim + a.qk_rope_head_dim;
  int64_t q = 0;
  if (a.q_lora_rank > 0) {
    // eq. (6)-(8): c_Q = W_DQ h, then RMSNorm, then up-projection to per-head q.
    q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.num_heads * qk_head;
  } else {
    q = d * a.num_heads * qk_head;
  }
  // eq. (1)-(5): [c_KV; k_R] = W_DKV h (one matrix, as HF's kv_a_proj_with_mqa), RMSNorm on
  // c_KV, then W_UK / W_UV stacked in kv_b_proj.
  const int64_t kv = d * (a.d_latent + a.qk_rope_head_dim) + a.d_latent +
                     a.d_latent * a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim);
  const int64_t out = a.num_heads * a.v_head_dim * d;  // eq. (11)
  return q + kv + out;
}

int64_t SwigluParams(int64_t d, int64_t hidden) { return 3 * d * hidden; }

// The attention parameters tensor parallelism splits by heads: the up-projections (q_b or q,
// kv_b) and o_proj; the down-projections and their norms stay whole on every rank.
int64_t HeadSplitAttentionParams(const ModelConfig& m) {
  const MlaConfig& a = m.mla;
  const int64_t d = a.d_model, qk_head = a.qk_nope_head_dim + a.qk_rope_head_dim;
  const int64_t q = (a.q_lora_rank > 0 ? a.q_lora_rank : d) * a.num_heads * qk_head;
  return q + a.d_latent * a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim) + a.num_heads * a.v_head_dim * d;
}

struct BlockParams {
  int64_t attention, ffn, norms, activated_ffn;
};

BlockParams Block(const ModelConfig& m, bool moe) {
  const int64_t d = m.mla.d_model;
  BlockParams b{};
  b.attention = AttentionParams(m);
  b.norms = 2 * NormParams(m, d);
  if (moe) {
    const MoeConfig& e = m.moe;
    const int64_t expert = SwigluParams(d, e.expert_intermediate_size);
    const int64_t shared = e.num_shared_experts * SwigluParams(d, e.shared_intermediate_size);
    const int64_t router = e.num_experts * d;
    b.ffn = router + e.num_experts * expert + shared;
    b.activated_ffn = router + e.num_experts_per_token * expert + shared;
  } else {
    b.ffn = SwigluParams(d, m.dense_intermediate_size);
    b.activated_ffn = b.ffn;
  }
  return b;
}

// Average number of keys a query attends to in a causal window over a sequence of T.
double AverageContext(int64_t seq_length, const std::optional<int64_t>& window) {
  double sum = 0;
  for (int64_t t = 0; t < seq_length; ++t) {
    int64_t visible = t + 1;
    if (window) visible = std::min(visible, *window);
    sum += static_cast<double>(visible);
  }
  return seq_length > 0 ? sum / static_cast<double>(seq_length) : 0.0;
}

}  // namespace

std::vector<bool> LayerPlan(const ModelConfig& m) {
  std::vector<bool> plan(static_cast<size_t>(std::max<int64_t>(m.num_layers, 0)), true);
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const bool dense = i < m.first_k_dense_layers ||
                       (m.dense_layer_interval > 0 && (i + 1) % m.dense_layer_interval == 0);
    plan[static_cast<size_t>(i)] = !dense;
  }
  return plan;
}

void ResolveModelDefaults(ModelConfig& m) {
  MlaConfig& a = m.mla;
  const int64_t head_dim = a.num_heads > 0 ? a.d_model / a.num_heads : 0;
  if (a.qk_nope_head_dim == 0) a.qk_nope_head_dim = head_dim;
  if (a.v_head_dim == 0) a.v_head_dim = head_dim;
  if (a.qk_rope_head_dim == 0) a.qk_rope_head_dim = std::max<int64_t>(2, (head_dim / 2) & ~int64_t{1});
  MoeConfig& e = m.moe;
  if (e.shared_intermediate_size == 0) e.shared_intermediate_size = e.expert_intermediate_size;
  if (m.dense_intermediate_size == 0) {
    // Same activated FFN width as an MoE layer: DeepSeek-V3's 18432 = (8 + 1) x 2048.
    m.dense_intermediate_size = e.num_experts_per_token * e.expert_intermediate_size +
                                e.num_shared_experts * e.shared_intermediate_size;
  }
}

ParamCounts CountParameters(const ModelConfig& model_in, bool use_mtp, int64_t num_predict_tokens) {
  ModelConfig m = model_in;
  ResolveModelDefaults(m);
  const int64_t d = m.mla.d_model;
  ParamCounts p;
  p.embedding = m.vocab_size * d;
  p.lm_head = m.tie_word_embeddings ? 0 : m.vocab_size * d;
  p.final_norm = NormParams(m, d);
  p.one_routed_expert = SwigluParams(d, m.moe.expert_intermediate_size);

  const std::vector<bool> plan = LayerPlan(m);
  for (size_t i = 0; i < plan.size(); ++i) {
    const BlockParams b = Block(m, plan[i]);
    LayerParams l;
    l.index = static_cast<int64_t>(i);
    l.moe = plan[i];
    l.attention = b.attention;
    l.ffn = b.ffn;
    l.norms = b.norms;
    l.total = b.attention + b.ffn + b.norms;
    l.activated = b.attention + b.activated_ffn + b.norms;
    p.attention += b.attention;
    p.layer_norms += b.norms;
    if (plan[i]) {
      p.router += m.moe.num_experts * d;
      p.routed_experts += m.moe.num_experts * p.one_routed_expert;
      p.shared_experts += m.moe.num_shared_experts * SwigluParams(d, m.moe.shared_intermediate_size);
    } else {
      p.dense_ffn += b.ffn;
    }
    p.main_total += l.total;
    p.main_activated += l.activated;
    p.layers.push_back(l);
  }
  const int64_t shared_io = p.embedding + p.lm_head + p.final_norm;
  p.main_total += shared_io;
  p.main_activated += shared_io;

  p.mtp_modules = use_mtp ? std::max<int64_t>(0, num_predict_tokens - 1) : 0;
  if (p.mtp_modules > 0) {
    // The MTP block is an MoE block whenever the main model has MoE layers (as in V3).
    const bool moe = std::find(plan.begin(), plan.end(), true) != plan.end();
    const BlockParams b = Block(m, moe);
    const int64_t extra = 3 * NormParams(m, d) + 2 * d * d;  // enorm, hnorm, out norm, eh_proj
    const int64_t module = b.attention + b.ffn + b.norms + extra;
    const int64_t module_active = b.attention + b.activated_ffn + b.norms + extra;
    p.mtp_total = p.mtp_modules * module;
    p.mtp_activated = p.mtp_modules * module_active;
    p.mtp_hf_stored = p.mtp_modules * (module + p.embedding + m.vocab_size * d);
  }
  p.total = p.main_total + p.mtp_total;
  p.activated = p.main_activated + p.mtp_activated;
  return p;
}

namespace {

// The tensors autograd keeps per token of one micro-batch, layer by layer, as the model (and
// with fused kernels, dsv3_kernels) saves them; elements in the activation dtype unless noted.
void EstimateActivations(const Config& c, const ParamCounts& p, MemoryEstimate& mem) {
  const ModelConfig& m = c.model;
  const MlaConfig& a = m.mla;
  const MoeConfig& e = m.moe;
  const double tokens = static_cast<double>(c.training.micro_batch_size * c.training.seq_length);
  const double T = static_cast<double>(c.training.seq_length);
  const double act = static_cast<double>(mem.weight_bytes), f32 = 4;
  const double D = static_cast<double>(a.d_model), H = static_cast<double>(a.num_heads);
  const double qk = static_cast<double>(a.qk_nope_head_dim + a.qk_rope_head_dim);
  const double v = static_cast<double>(a.v_head_dim), C = static_cast<double>(a.d_latent);
  const double R = static_cast<double>(a.qk_rope_head_dim), Q = static_cast<double>(a.q_lora_rank);
  const bool fused = m.fused_kernels;
  const double context = a.sliding_window ? std::min<double>(T, static_cast<double>(*a.sliding_window)) : T;
  // Attention core per token: fp32 scores and probabilities of the visible keys (reference),
  // or q, k, v in fp32, the output and the log-sum-exp (flash-style kernel).
  const double attention_core = fused ? f32 * H * (2 * qk + 2 * v + 1) : (f32 + act) * H * context;
  // Projections and norms around it: the norm input, q (and the low-rank path), kv_a, the
  // normalized latent, kv_b's output, q and k concatenated per head, o_proj's input.
  const double attention_rest = act * (2 * D + Q * 2 + H * qk + (C + R) + C +
                                       static_cast<double>(a.num_kv_heads) * (qk - R + v) + 2 * H * qk + H * v);
  const auto ffn = [&](bool moe) {
    if (!moe) return act * (D + 3 * static_cast<double>(m.dense_intermediate_size));
    const double k = static_cast<double>(e.num_experts_per_token), F = static_cast<double>(e.expert_intermediate_size);
    const double shared = static_cast<double>(e.num_shared_experts * e.shared_intermediate_size);
    // Router (fp32 logits and scores), dispatched rows, gate/up/SwiGLU per assignment, the
    // experts' outputs, the shared experts.
    return f32 * 3 * static_cast<double>(e.num_experts) + act * (D + k * D * 2 + 3 * k * F + (shared > 0 ? 3 * shared : 0));
  };
  const std::vector<bool> plan = LayerPlan(m);
  double per_token = 0, attention = 0;
  const auto layer = [&](bool moe) {
    attention += attention_core;
    return attention_core + attention_rest + ffn(moe) + act * D;  // + the residual
  };
  double largest_layer = 0;
  for (bool moe : plan) {
    const double l = layer(moe);
    largest_layer = std::max(largest_layer, l);
    per_token += m.gradient_checkpointing ? act * D : l;  // checkpointing keeps each layer's input
  }
  const bool any_moe = std::find(plan.begin(), plan.end(), true) != plan.end();
  const double heads = 1 + static_cast<double>(p.mtp_modules);
  for (int64_t i = 0; i < p.mtp_modules; ++i) {
    const double l = layer(any_moe) + act * 4 * D;  // + the two norms and eh_proj's input
    largest_layer = std::max(largest_layer, l);
    per_token += m.gradient_checkpointing ? act * D : l;
  }
  double bytes = per_token * tokens;
  if (m.gradient_checkpointing) bytes += largest_layer * tokens;  // one layer recomputed at a time
  // Loss: the reference keeps the logits (activation dtype), their fp32 copy and log-softmax
  // per head; the chunked kernel keeps one 1024-token chunk of fp32 logits and the gradients of
  // the hidden states and the head weight.
  const double V = static_cast<double>(m.vocab_size);
  // Under tensor parallelism each rank scores its V / tp block of the vocabulary (fused: in
  // chunks, as above; reference: the block's logits and fp32 softmax per head).
  const double tp = static_cast<double>(std::max<int64_t>(1, c.distributed.tensor_parallel_size));
  const double Vr = V / tp;
  const double loss = fused ? f32 * std::min(tokens, 1024.0) * Vr + heads * act * tokens * D + f32 * Vr * D
                      : tp > 1 ? heads * tokens * Vr * (act + f32)
                               : heads * tokens * V * (act + 2 * f32);
  // Tensor parallelism splits the layers' activations across its ranks (roughly: by heads and FFN width).
  const double tp_share = 1.0 / tp;
  mem.activations_attention = attention * tokens * tp_share;
  mem.activations_loss = loss;
  mem.activations = bytes * tp_share + loss;
}

}  // namespace

Estimate EstimateConfig(const Config& c) {
  Estimate est;
  const ModelConfig& m = c.model;
  const TrainingConfig& t = c.training;
  est.params = CountParameters(m, t.use_mtp, t.num_predict_tokens);
  const ParamCounts& p = est.params;

  // ---- FLOPs: 6 per multiply-accumulate-parameter per token for forward + backward.
  const MlaConfig& a = m.mla;
  const double context = AverageContext(t.seq_length, a.sliding_window);
  const double attn_per_layer =
      6.0 * static_cast<double>(a.num_heads) *
      static_cast<double>(a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) * context;
  int64_t main_norms = p.final_norm;
  for (const auto& l : p.layers) main_norms += l.norms;
  const int64_t latent_norms = a.d_latent + (a.q_lora_rank > 0 ? a.q_lora_rank : 0);
  const int64_t main_matmul = p.main_activated - p.embedding - main_norms -
                              latent_norms * static_cast<int64_t>(p.layers.size()) +
                              (m.tie_word_embeddings ? p.embedding : 0);  // tied head still multiplies
  est.flops.dense_matmul = 6.0 * static_cast<double>(main_matmul);
  est.flops.attention = attn_per_layer * static_cast<double>(p.layers.size());
  if (p.mtp_modules > 0) {
    const int64_t module_active = p.mtp_activated / p.mtp_modules;
    const int64_t d = a.d_model;
    const int64_t module_norms = 5 * (m.norm_type == "layernorm" ? 2 * d : d) + latent_norms;
    const int64_t module_matmul = module_active - module_norms + m.vocab_size * d;  // + shared head
    est.flops.mtp = static_cast<double>(p.mtp_modules) * (6.0 * static_cast<double>(module_matmul) + attn_per_layer);
  }
  est.flops.total = est.flops.dense_matmul + est.flops.attention + est.flops.mtp;
  est.flops.forward = (est.flops.dense_matmul + est.flops.attention) / 3.0;

  // ---- Memory per GPU.
  MemoryEstimate& mem = est.memory;
  const bool mixed = t.use_bf16 || t.use_fp16 || t.use_fp8;
  mem.weight_bytes = mixed ? 2 : 4;
  const int moments = t.optimizer == "sgd" ? 0 : 8;  // Adam: fp32 m and v
  mem.optimizer_bytes = moments + (mixed ? 4 : 0);   // + fp32 master weights
  const DistributedConfig& dist = c.distributed;
  const double dp = static_cast<double>(std::max<int64_t>(1, dist.data_parallel_size));
  const double ep = static_cast<double>(dist.expert_parallel_size);
  const double expert_dp = std::max(1.0, dp / ep);  // replicas of each expert
  const int64_t mtp_experts = p.mtp_modules > 0 && p.routed_experts > 0
                                  ? p.mtp_modules * m.moe.num_experts * p.one_routed_expert
                                  : 0;
  // Per rank, as dsv3 lays the model out (train/parallelize): tensor parallelism splits heads,
  // the dense and shared FFN columns and the vocabulary ("split"); routed experts are split
  // by expert parallelism only; the rest (MLA's down-projections, norms, routers: "whole") is
  // on every tensor-parallel rank. Pipeline stages hold their layers (config::StageLayers),
  // the first the embedding, the last the norm, head and MTP (and the embedding again when
  // MTP or a tied head needs it): the figures are those of the largest stage.
  const double tp = static_cast<double>(dist.tensor_parallel_size);
  const int64_t d = m.mla.d_model;
  const int64_t shared_per_layer = m.moe.num_shared_experts * SwigluParams(d, m.moe.shared_intermediate_size);
  const int64_t head_split = HeadSplitAttentionParams(m);
  struct Share {
    double split = 0, whole = 0, experts = 0;
  };
  const auto add_layer = [&](Share& sh, int64_t total, bool moe) {
    const int64_t experts = moe ? m.moe.num_experts * p.one_routed_expert : 0;
    const int64_t split = head_split + (moe ? shared_per_layer : SwigluParams(d, m.dense_intermediate_size));
    sh.experts += static_cast<double>(experts);
    sh.split += static_cast<double>(split);
    sh.whole += static_cast<double>(std::max<int64_t>(0, total - experts - split));
  };
  const std::vector<int64_t> stage_layers = StageLayers(c);
  const size_t stages = static_cast<size_t>(std::max<int64_t>(1, dist.pipeline_parallel_size));
  std::vector<Share> shares(stages);
  size_t layer = 0;
  for (size_t k = 0; k < stage_layers.size(); ++k) {  // virtual stage k runs on stage k % pp
    for (int64_t i = 0; i < stage_layers[k] && layer < p.layers.size(); ++i, ++layer) {
      add_layer(shares[k % stages], p.layers[layer].total, p.layers[layer].moe);
    }
  }
  shares.front().split += static_cast<double>(p.embedding);
  Share& last = shares.back();
  last.split += static_cast<double>(p.lm_head);
  last.whole += static_cast<double>(p.final_norm);
  if (p.mtp_modules > 0) {
    // Each MTP module: a decoder block (MoE when the model has MoE layers) plus eh_proj and norms.
    const int64_t per_module = p.mtp_total / p.mtp_modules;
    const bool moe_block = mtp_experts > 0;
    for (int64_t k = 0; k < p.mtp_modules; ++k) add_layer(last, per_module, moe_block);
  }
  if (shares.size() > 1 && (p.mtp_modules > 0 || m.tie_word_embeddings)) last.split += static_cast<double>(p.embedding);
  const int stage = static_cast<int>(c.derived.effective_zero_stage);
  // ZeRO shards each kind over its replicas: blocks over dp, whole weights over dp x tp,
  // experts over their dp / ep replicas x tp.
  const auto per_rank = [&](const Share& sh, double bytes_per_param, bool shard) {
    const double split = sh.split / tp, experts = sh.experts / ep;
    return shard ? bytes_per_param * (split / dp + sh.whole / (dp * tp) + experts / (expert_dp * tp))
                 : bytes_per_param * (split + sh.whole + experts);
  };
  const auto state_bytes = [&](const Share& sh) {
    return per_rank(sh, mem.weight_bytes, stage >= 3) + per_rank(sh, mem.weight_bytes, stage >= 2) +
           per_rank(sh, mem.optimizer_bytes, stage >= 1);
  };
  size_t largest = 0;
  for (size_t s = 1; s < shares.size(); ++s) {
    if (state_bytes(shares[s]) > state_bytes(shares[largest])) largest = s;
  }
  const Share& mine = shares[largest];
  mem.pipeline_stage = static_cast<int64_t>(largest);
  mem.params_on_gpu = static_cast<int64_t>(mine.split / tp + mine.whole + mine.experts / ep);
  const auto sharded = [&](double bytes_per_param, bool shard) { return per_rank(mine, bytes_per_param, shard); };
  mem.weights = sharded(mem.weight_bytes, stage >= 3);
  mem.gradients = sharded(mem.weight_bytes, stage >= 2);
  const double optimizer = sharded(mem.optimizer_bytes, stage >= 1);
  if (c.derived.optimizer_offload) {
    mem.host_optimizer = optimizer;
  } else {
    mem.optimizer = optimizer;
  }
  mem.total = mem.weights + mem.gradients + mem.optimizer;
  EstimateActivations(c, p, mem);
  return est;
}

}  // namespace dsv3::config
