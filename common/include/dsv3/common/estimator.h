// Parameter, FLOP and memory estimates from a config, using the same layer plan and
// tensor shapes that the model builds (worker/model/), so counts are exact, not approximate.
//
// Parameter layout per transformer block (names as in HF DeepSeek-V3):
//   input_layernorm, post_attention_layernorm     norm(d) each (rmsnorm: d, layernorm: 2d)
//   q_proj                 d x H*(nope+rope)         when q_lora_rank == 0
//   q_a_proj, q_a_layernorm, q_b_proj  d x r_q, r_q, r_q x H*(nope+rope)  when q_lora_rank > 0
//   kv_a_proj_with_mqa     d x (d_latent + rope);   kv_a_layernorm  d_latent (always RMSNorm)
//   kv_b_proj              d_latent x Hkv*(nope+v); o_proj  H*v x d
//   dense FFN (SwiGLU)     3 x d x dense_intermediate_size
//   MoE                    router E x d; E routed experts 3 x d x expert_size;
//                          S shared experts 3 x d x shared_size
// No linear layer has a bias. The aux-loss-free routing bias is a buffer, not a parameter.
// MTP module k: enorm, hnorm, eh_proj (2d x d), one block, its output norm; the embedding
// and output head are shared with the main model (HF checkpoints store copies of both per
// module: `mtp_hf_stored` counts them as stored).
#pragma once

#include <cstdint>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::config {

struct LayerParams {
  int64_t index = 0;
  bool moe = false;
  int64_t attention = 0;  // MLA projections and latent norms
  int64_t ffn = 0;        // dense FFN, or router + routed + shared experts
  int64_t norms = 0;      // the block's two norms
  int64_t total = 0;
  int64_t activated = 0;  // per token: only num_experts_per_token routed experts
};

struct ParamCounts {
  int64_t embedding = 0;
  int64_t lm_head = 0;  // 0 when tied
  int64_t final_norm = 0;
  std::vector<LayerParams> layers;
  // Sums over the main model's layers.
  int64_t attention = 0, dense_ffn = 0, router = 0, routed_experts = 0, shared_experts = 0,
          layer_norms = 0;
  int64_t one_routed_expert = 0;
  int64_t main_total = 0;      // the model without MTP modules
  int64_t main_activated = 0;  // per token, embedding lookup included
  int64_t mtp_modules = 0;     // num_predict_tokens - 1 when use_mtp, else 0
  int64_t mtp_total = 0;       // all MTP modules (shared embedding/head not repeated)
  int64_t mtp_activated = 0;
  int64_t mtp_hf_stored = 0;   // as HF stores them, with a copy of embedding + head each
  int64_t total = 0;           // trained parameters: main + MTP
  int64_t activated = 0;
};

struct FlopsEstimate {
  // Training FLOPs (forward + backward = 3x forward) per trained token.
  double dense_matmul = 0;  // 6 x activated matmul parameters of the main model
  double attention = 0;     // 6 x H x (qk_dim + v_dim) x average context, summed over layers
  double mtp = 0;           // the MTP modules' share (their matmuls, attention and head)
  double total = 0;
  double forward = 0;       // total / 3: what inference of the main model costs per token
};

// Per-GPU bytes for model state under the configured precision, ZeRO stage and parallel
// sizes, and the activations autograd keeps for one micro-batch (an estimate from the tensors
// the model saves, which depends on model.fused_kernels and gradient_checkpointing).
struct MemoryEstimate {
  int64_t params_on_gpu = 0;  // parameters this GPU holds before ZeRO-3 sharding
  int64_t pipeline_stage = 0; // the stage these figures are for: the one with the most state
  double weights = 0;         // compute-precision weights
  double gradients = 0;
  double optimizer = 0;       // fp32 master copy (mixed precision) + optimizer moments
  double host_optimizer = 0;  // optimizer state kept in host memory with offload
  double total = 0;           // on the GPU, model state only (without activations)
  // Activations of one micro-batch (micro_batch_size x seq_length) between forward and
  // backward. The attention share is the T x T scores and probabilities without fused
  // kernels, O(T) per head with them; the loss share is the [tokens, vocab] logits and their
  // log-softmax per head without fused kernels, one chunk with them.
  double activations = 0;
  double activations_attention = 0;
  double activations_loss = 0;
  int weight_bytes = 4;       // bytes per weight and per gradient element
  int optimizer_bytes = 0;    // bytes of optimizer state per parameter
};

struct Estimate {
  ParamCounts params;
  FlopsEstimate flops;
  MemoryEstimate memory;
};

// Layer plan: true where layer i is an MoE layer. Dense are the first first_k_dense_layers
// and, with dense_layer_interval N > 0, every layer with (i + 1) % N == 0 ("every Nth").
std::vector<bool> LayerPlan(const ModelConfig& model);

// Fills head dimensions, dense/shared FFN sizes left at 0 ("derive") from the others.
// Idempotent. Called by the loader; the estimator and the model rely on it having run.
void ResolveModelDefaults(ModelConfig& model);

ParamCounts CountParameters(const ModelConfig& model, bool use_mtp, int64_t num_predict_tokens);

// Everything, from a config resolved by LoadConfigFile/LoadConfigText.
Estimate EstimateConfig(const Config& config);

}  // namespace dsv3::config
