// DeepSeek-V3 building blocks (arXiv 2412.19437): norms, RoPE, SwiGLU, Multi-head Latent
// Attention with its compressed KV cache, DeepSeekMoE with its router, the decoder layer and
// the multi-token-prediction module. The full model is in model.h.
//
// Submodules and parameters are registered under the names of HF's DeepseekV3 modules
// (self_attn.kv_a_proj_with_mqa, mlp.gate, ...) so the checkpoint adapter
// (hf_state_dict.h) only adds prefixes and splits stacked expert weights.
//
// Shape legend for tensor suffixes:
//   B batch   T query tokens   S key positions (cache)   D d_model   H query heads
//   K key/value heads   C d_latent (kv_lora_rank)   Q q_lora_rank   N qk_nope_head_dim
//   R qk_rope_head_dim   V v_head_dim   E experts   F FFN hidden   X flattened tokens (B*T)
//   k experts per token
//
// RoPE layout: rotary pairs are INTERLEAVED (dims 2i and 2i+1 rotate together), as in
// DeepSeek's reference inference code. HF's DeepseekV3 checkpoints store q_b_proj /
// kv_a_proj_with_mqa in this same layout and permute to split-half at run time, so exported
// weights need no permutation.
//
// Thread safety: modules are not thread-safe; one rank drives one model from one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "dsv3/common/config.h"

namespace dsv3::model {

// The precision for reductions, softmax and routing: fp32, or fp64 when the model runs in
// double (gradient checks).
c10::ScalarType UpcastType(c10::ScalarType activation);

// ------------------------------------------------------------------ tensor parallelism
// The collectives tensor parallelism needs between the ranks of one group (Megatron's
// column/row split of attention heads, FFN columns and vocabulary rows). Implemented by
// dsv3_dist over a communicator; the model sees only this interface.
class TensorParallelGroup {
 public:
  virtual ~TensorParallelGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place over the group, blocking: the sum, or the maximum.
  virtual void AllReduce(torch::Tensor& t, bool max = false) = 0;
  // Every rank's t stacked on a new dim 0, in rank order (no gradient).
  virtual torch::Tensor AllGather(const torch::Tensor& t) = 0;
};

// Megatron's f: identity forward, gradient all-reduced backward, where a replicated
// activation enters a tensor-parallel region (each rank's gradient covers its shard only).
// Megatron's g: the partial sums of a row-parallel layer all-reduced forward, identity
// backward. Both are the identity when tp is null.
torch::Tensor EnterParallel(const torch::Tensor& x, TensorParallelGroup* tp);
torch::Tensor LeaveParallel(const torch::Tensor& x, TensorParallelGroup* tp);

// Sequence parallelism (Megatron's): the residual stream between the parallel regions is
// split by sequence over the group. GatherSequence: x_BtD (this rank's T/tp positions) ->
// x_BTD by all-gather; its gradient is this rank's slice, because every consumer of the
// gathered activation (the f of each parallel region, the replicated router and experts)
// hands back the whole, equal gradient on every rank. ScatterSequence: this rank's slice of
// a whole, equal x_BTD; its gradient is all-gathered.
torch::Tensor GatherSequence(const torch::Tensor& x_BtD, TensorParallelGroup* tp);
torch::Tensor ScatterSequence(const torch::Tensor& x_BTD, TensorParallelGroup* tp);

// A parameter split over the tensor-parallel group: rank r holds block r of `dim`.
struct TensorParallelSplit {
  std::string name;  // as in named_parameters() of the module that reports it
  int64_t dim = 0;
};

// The same from the hidden states and this rank's vocabulary rows of the head (V/tp x D),
// in chunks of `chunk` tokens: each chunk's logits live only while it is scored, and the
// gradients of h and the head come out of the forward (the fused kernels' way, made
// vocabulary-parallel). h's gradient is this rank's share: h must enter through
// EnterParallel, which sums the shares.
torch::Tensor VocabParallelLinearCrossEntropy(const torch::Tensor& h_XD, const torch::Tensor& weight_local_VD,
                                              const torch::Tensor& targets_X, int64_t ignore_index,
                                              TensorParallelGroup* tp, int64_t chunk = 1024);

// Rank tp->rank()'s block of `dim` of `t` (a copy).
torch::Tensor TensorParallelBlock(const torch::Tensor& t, int64_t dim, const TensorParallelGroup& tp);

// Embedding lookup of a vocabulary split by rows: ids outside this rank's rows give zeros,
// and the partial embeddings are summed over the group.
torch::Tensor VocabParallelEmbedding(const torch::Tensor& ids, const torch::Tensor& weight_local,
                                     TensorParallelGroup* tp);

// Mean cross entropy over targets != ignore_index, from this rank's block of vocabulary
// columns of the logits (X x V/tp): the max, the sum of exponentials and the target logit
// are all-reduced, so the full logits are never gathered (Megatron's vocab-parallel loss).
torch::Tensor VocabParallelCrossEntropy(const torch::Tensor& logits_local_XV, const torch::Tensor& targets_X,
                                        int64_t ignore_index, TensorParallelGroup* tp);

// ------------------------------------------------------------------ norms
// RMSNorm (weight) or LayerNorm (weight + bias), computed in fp32 and cast back. With
// `fused`, RMSNorm runs kernels::RmsNorm.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(int64_t dim, double eps, bool layernorm = false, bool fused = false);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  double eps_;
  bool layernorm_, fused_;
};
TORCH_MODULE(Norm);

Norm MakeNorm(const config::ModelConfig& cfg, int64_t dim);

// ------------------------------------------------------------------ RoPE
// Rotates interleaved pairs of the last dim of x_BTHR (R even) by position x frequency,
// frequency_i = theta^(-2i/R). `positions` are token positions, shared by the batch (T) or
// per row (B x T, when positions restart at document boundaries).
torch::Tensor ApplyRope(const torch::Tensor& x_BTHR, const torch::Tensor& positions, double theta);

// Where a forward pass attends: positions for RoPE (T, or B x T) and optional document ids
// (B x T, int64): with them, a token attends only to earlier tokens of its own document.
struct AttentionContext {
  torch::Tensor positions;
  torch::Tensor segments_BT;  // undefined: one document per row
};

// ------------------------------------------------------------------ SwiGLU FFN
class FeedForwardImpl : public torch::nn::Module {
 public:
  // fused: tiled GEMMs and kernels::SwiGlu.
  FeedForwardImpl(int64_t dim, int64_t hidden, bool fused = false);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  // Keeps this rank's block of the hidden columns: gate/up column-parallel, down
  // row-parallel, the output summed over the group.
  void ShardTensorParallel(std::shared_ptr<TensorParallelGroup> tp);
  std::vector<TensorParallelSplit> TensorParallelPlan() const;
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  bool fused_;
  std::shared_ptr<TensorParallelGroup> tp_;
};
TORCH_MODULE(FeedForward);

// ------------------------------------------------------------------ MLA
// The compressed KV cache of one layer: only c_KV (after its norm) and the shared RoPE key
// are kept, S positions each. With use_fp8_kv, both are stored in float8 e4m3 with one fp32
// scale per position.
struct LatentCache {
  torch::Tensor c_kv_BSC, k_rope_BSR;
  torch::Tensor c_kv_scale_BS1, k_rope_scale_BS1;  // fp8 only
  int64_t length = 0;
};

class MultiHeadLatentAttentionImpl : public torch::nn::Module {
 public:
  explicit MultiHeadLatentAttentionImpl(const config::ModelConfig& cfg);

  // Training path (eq. 1-11): keys/values are up-projected for every head. x_BTD -> y_BTD.
  torch::Tensor forward(const torch::Tensor& x_BTD, const AttentionContext& ctx);

  // Inference path: appends the T new tokens' c_KV and k_R to `cache`, then attends over the
  // whole cache with W_UK absorbed into the query and W_UV into the output, so per-head keys
  // and values are never materialized. Equal to forward() up to rounding.
  torch::Tensor ForwardCached(const torch::Tensor& x_BTD, LatentCache& cache);

  // Megatron-Core's plan for MLA: this rank keeps its block of heads (and kv heads) of the
  // up-projections (q_b_proj or q_proj, kv_b_proj: column-parallel) and of o_proj
  // (row-parallel, output summed over the group); the down-projections and their norms stay
  // whole on every rank, their outputs entering the parallel region through
  // EnterParallel, so their gradients come out whole and equal on every rank.
  void ShardTensorParallel(std::shared_ptr<TensorParallelGroup> tp);
  std::vector<TensorParallelSplit> TensorParallelPlan() const;

  torch::nn::Linear q_proj{nullptr};                          // q_lora_rank == 0
  torch::nn::Linear q_a_proj{nullptr}, q_b_proj{nullptr};     // q_lora_rank > 0
  Norm q_a_layernorm{nullptr};
  torch::nn::Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  Norm kv_a_layernorm{nullptr};

 private:
  // q_nope_BTHN and the RoPE-rotated q_rope_BTHR for tokens at `positions`.
  std::pair<torch::Tensor, torch::Tensor> Queries(const torch::Tensor& x_BTD, const torch::Tensor& positions);
  // Causal (and sliding-window) mask over token indices: true where query index may see key
  // index. T x S, or B x 1 x T x S when segments_BT restrict it to a document.
  torch::Tensor VisibleMask(const torch::Tensor& query_idx_T, const torch::Tensor& key_idx_S,
                            const torch::Tensor& segments_BT = {}) const;
  void AppendToCache(LatentCache& cache, const torch::Tensor& c_kv_BTC, const torch::Tensor& k_rope_BTR) const;
  torch::Tensor Rotate(const torch::Tensor& x_BTHR, const torch::Tensor& positions) const;
  // softmax(q k^T * scale) v under the causal/window/document mask: per-head q_BTHX, k_BTHX,
  // v_BTHV -> o_BTHV; kernels::Attention when fused (and no attention dropout applies).
  torch::Tensor Attend(const torch::Tensor& q_BTHX, const torch::Tensor& k_BTHX, const torch::Tensor& v_BTHV,
                       const torch::Tensor& segments_BT);

  int64_t num_heads_, num_kv_heads_, d_latent_, nope_, rope_, v_dim_;
  double rope_theta_, scale_, dropout_;
  std::optional<int64_t> window_;
  bool use_rope_, fp8_cache_, fused_;
  std::shared_ptr<TensorParallelGroup> tp_;  // null: all heads here
};
TORCH_MODULE(MultiHeadLatentAttention);

// ------------------------------------------------------------------ MoE
struct Routing {
  torch::Tensor expert_XK;  // selected experts (int64)
  torch::Tensor gate_XK;    // their gate values (eq. 13: from the scores, never the bias)
  torch::Tensor probs_XE;   // scores normalised per token, for the balance losses
  torch::Tensor keep_XK;    // false where capacity dropped the assignment
};

// The router ("gate" in HF): affinity scores, optional noise, aux-loss-free bias for
// selection, group-limited top-k, normalised and scaled gates, capacity dropping.
class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(const config::ModelConfig& cfg);  // fused_kernels: kernels::CapacityKeep
  // noise_std: the already annealed router noise (0 outside training).
  Routing Route(const torch::Tensor& x_XD, double noise_std, bool apply_capacity);
  torch::Tensor weight;                   // E x D
  torch::Tensor e_score_correction_bias;  // E, buffer: selection only (eq. 16)

  const config::MoeConfig& options() const { return moe_; }

 private:
  config::MoeConfig moe_;
  bool fused_;
};
TORCH_MODULE(Router);

// Expert weights stacked over experts: expert e computes down_e(silu(gate_e x) * up_e x).
class GroupedExpertsImpl : public torch::nn::Module {
 public:
  GroupedExpertsImpl(int64_t num_experts, int64_t dim, int64_t hidden);
  torch::Tensor gate_proj, up_proj;  // E x F x D
  torch::Tensor down_proj;           // E x D x F
};
TORCH_MODULE(GroupedExperts);

// The balance losses of one routing over B sequences of T tokens, weighted as configured:
// router_aux_loss_weight x (balance_loss_type "load": E * sum_i f_i P_i, Switch style, f_i
// the fraction of assignments to expert i, P_i its mean probability; "entropy":
// log E - H(mean routing distribution)) + seq_aux_loss_weight x the sequence-wise loss of
// eq. (17)-(20). Differentiable through probs_XE.
torch::Tensor ComputeBalanceLoss(const config::MoeConfig& moe, const Routing& routing, int64_t batch, int64_t seq);

struct MoeOutput {
  torch::Tensor y_BTD;
  torch::Tensor balance_loss;  // weighted sum of the configured balance losses (scalar)
};

// Expert parallelism: moves token rows between the ranks of an expert-parallel group.
// Implemented by dsv3_dist over a communicator; the model sees only this interface.
class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // All-to-all of rows: send_rows[r] rows of x_ND go to rank r (in order); returns the
  // rows received, recv_rows[r] from rank r, in rank order. Blocking.
  virtual torch::Tensor Exchange(const torch::Tensor& x_ND, const std::vector<int64_t>& send_rows,
                                 const std::vector<int64_t>& recv_rows) = 0;
  // All-to-all of equal chunks of an int64 vector (chunk r to rank r).
  virtual torch::Tensor ExchangeCounts(const torch::Tensor& counts) = 0;
};

// Per-layer statistics accumulated over forward passes until taken.
struct MoeStats {
  torch::Tensor tokens_per_expert_E;  // int64, assignments kept after capacity
  int64_t assignments = 0;            // tokens x k
  int64_t dropped = 0;                // assignments dropped by capacity
};

class MoEImpl : public torch::nn::Module {
 public:
  explicit MoEImpl(const config::ModelConfig& cfg);
  MoeOutput forward(const torch::Tensor& x_BTD);

  // Linear annealing of router_noise_std: 1 at the start of training, 0 at the end.
  void SetNoiseScale(double scale) { noise_scale_ = scale; }
  // Statistics since the last call; resets them.
  MoeStats TakeStats();
  // Aux-loss-free balancing (paper §2.1.2): b_i += speed * sign(mean load - load_i), with
  // `load_E` the global batch's per-expert token counts. Call after each optimizer step.
  void UpdateBias(const torch::Tensor& load_E);
  // Keeps only this rank's num_experts / size experts (a contiguous block) and runs routed
  // tokens through the group with all-to-all; routing and capacity stay per rank.
  void ShardExperts(std::shared_ptr<ExpertExchange> exchange);
  // The first global expert held here (0 without expert parallelism).
  int64_t expert_offset() const { return expert_offset_; }

  Router gate{nullptr};
  GroupedExperts experts{nullptr};
  FeedForward shared_experts{nullptr};  // num_shared_experts x shared size, as one SwiGLU

 private:
  config::MoeConfig moe_;
  bool fused_;
  // The experts held here on rows sorted by expert (counts_L: rows per held expert, int64 on
  // the CPU); outputs in the same row order.
  torch::Tensor RunExperts(const torch::Tensor& x_AD, const torch::Tensor& counts_L);
  // The same through the expert-parallel group: rows sorted by global expert (counts_E)
  // travel to the ranks holding their experts and come back.
  torch::Tensor RunParallelExperts(const torch::Tensor& x_AD, const torch::Tensor& counts_E);
  // The held experts as three grouped GEMMs (kernels::GroupedLinear) over rows sorted by
  // expert, offsets_E1 (E + 1, on x's device) delimiting each expert's rows.
  torch::Tensor RunGroupedExperts(const torch::Tensor& x_AD, const torch::Tensor& offsets_E1);

  double noise_scale_ = 1.0;
  MoeStats stats_;
  std::shared_ptr<ExpertExchange> exchange_;
  int64_t expert_offset_ = 0;
};
TORCH_MODULE(MoE);

// ------------------------------------------------------------------ decoder layer
struct LayerOutput {
  torch::Tensor h_BTD;
  torch::Tensor balance_loss;  // 0 for dense layers
};

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const config::ModelConfig& cfg, bool moe);
  LayerOutput forward(const torch::Tensor& x_BTD, const AttentionContext& ctx);
  // forward() through the attention cache (inference).
  torch::Tensor ForwardCached(const torch::Tensor& x_BTD, LatentCache& cache);
  bool is_moe() const { return !moe.is_empty(); }
  // Tensor parallelism: attention heads, the dense FFN or the shared experts are split; the
  // router and the routed experts stay whole (experts split by expert parallelism instead).
  // With sequence_parallel, forward() takes and returns this rank's slice of the sequence:
  // the norms and the residual adds run on T/tp positions, gathered for attention and the
  // MLP and scattered after them.
  void ShardTensorParallel(const std::shared_ptr<TensorParallelGroup>& tp, bool sequence_parallel = false);
  bool sequence_parallel() const { return sequence_parallel_; }
  std::vector<TensorParallelSplit> TensorParallelPlan() const;  // names relative to the layer

  Norm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  MultiHeadLatentAttention self_attn{nullptr};
  FeedForward dense_mlp{nullptr};  // registered as "mlp" when dense
  MoE moe{nullptr};                // registered as "mlp" when MoE

 private:
  torch::Tensor Mlp(const torch::Tensor& x_BTD, torch::Tensor* balance_loss);
  std::shared_ptr<TensorParallelGroup> tp_;
  bool sequence_parallel_ = false;
};
TORCH_MODULE(DecoderLayer);

// Parameter sharding (ZeRO-3): a decoder layer's parameters exist only while it runs.
// Implemented by dsv3_dist; layers it does not manage are left alone.
class LayerParameters {
 public:
  virtual ~LayerParameters() = default;
  virtual void Acquire(DecoderLayerImpl& layer) = 0;  // gathers the layer's parameters
  virtual void Release(DecoderLayerImpl& layer) = 0;  // frees them
};

// Runs layer.forward with activation checkpointing: only the input is kept; the backward
// pass re-runs the layer under grad mode with the RNG state of the first run restored, so
// dropout and router noise repeat exactly, and MoE statistics are not counted twice. With
// `params`, the layer's parameters are acquired for the forward and again for the
// recompute, and released after each.
LayerOutput CheckpointedForward(DecoderLayerImpl& layer, const torch::Tensor& x_BTD, const AttentionContext& ctx,
                                LayerParameters* params = nullptr);

// True while a checkpointed layer is being recomputed in the backward pass.
bool InRecompute();

// ------------------------------------------------------------------ MTP module
// Multi-token prediction depth k (eq. 21-22): h' = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]),
// then one decoder layer; `norm` precedes the shared output head. The embedding half comes
// first, as in HF's and Megatron's layers (the paper writes [h; Emb]: the same up to a
// column permutation of eh_proj).
class MtpModuleImpl : public torch::nn::Module {
 public:
  MtpModuleImpl(const config::ModelConfig& cfg, bool moe);
  Norm enorm{nullptr}, hnorm{nullptr}, norm{nullptr};
  torch::nn::Linear eh_proj{nullptr};
  DecoderLayer block{nullptr};
};
TORCH_MODULE(MtpModule);

}  // namespace dsv3::model
