// Multi-head Latent Attention, eq. (1)-(11) of arXiv 2412.19437.
#include <cmath>
#include <limits>

#include "dsv3/common/check.h"
#include "dsv3/model/layers.h"
#include "dsv3/model/torch_compat.h"
#include "fused.h"

namespace dsv3::model {
namespace {

torch::nn::Linear Linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// Largest finite value of float8 e4m3: per-position scales map each row's max onto it.
constexpr double kFp8Max = 448.0;

std::pair<torch::Tensor, torch::Tensor> QuantizeFp8(const torch::Tensor& x) {
  const torch::Tensor xf = x.to(torch::kFloat);
  const torch::Tensor scale = (xf.abs().amax(-1, /*keepdim=*/true) / kFp8Max).clamp_min(1e-12);
  return {(xf / scale).to(compat::Float8E4M3()), scale};
}

}  // namespace

MultiHeadLatentAttentionImpl::MultiHeadLatentAttentionImpl(const config::ModelConfig& cfg) {
  const config::MlaConfig& a = cfg.mla;
  num_heads_ = a.num_heads;
  num_kv_heads_ = a.num_kv_heads;
  d_latent_ = a.d_latent;
  nope_ = a.qk_nope_head_dim;
  rope_ = a.qk_rope_head_dim;
  v_dim_ = a.v_head_dim;
  rope_theta_ = a.rope_theta;
  scale_ = 1.0 / std::sqrt(static_cast<double>(nope_ + rope_));  // eq. (10)
  dropout_ = a.attn_dropout;
  window_ = a.sliding_window;
  use_rope_ = a.use_rope;
  fp8_cache_ = a.use_fp8_kv;
  fused_ = cfg.fused_kernels;
  DSV3_CHECK(nope_ > 0 && rope_ > 0 && v_dim_ > 0)
      << "head dims are unresolved; build the model from a config loaded by config::LoadConfigFile";
  DSV3_CHECK(num_heads_ % num_kv_heads_ == 0) << num_kv_heads_ << " kv heads for " << num_heads_ << " heads";
  if (fp8_cache_ && !compat::kHasFloat8) {
    throw std::runtime_error("/model/mla/use_fp8_kv: true needs float8 tensor types, which this LibTorch (" +
                             compat::TorchVersion() +
                             ") does not have; use a LibTorch >= 2.1 build or set use_fp8_kv to false");
  }
  const int64_t D = a.d_model, H = num_heads_;
  if (a.q_lora_rank > 0) {  // eq. (6)-(7): c_Q = W_DQ h, q_C = W_UQ c_Q
    q_a_proj = register_module("q_a_proj", Linear(D, a.q_lora_rank));
    q_a_layernorm = register_module("q_a_layernorm", Norm(a.q_lora_rank, cfg.norm_eps, false, fused_));
    q_b_proj = register_module("q_b_proj", Linear(a.q_lora_rank, H * (nope_ + rope_)));
  } else {
    q_proj = register_module("q_proj", Linear(D, H * (nope_ + rope_)));
  }
  // eq. (1) and (3) in one matrix: [c_KV; k_R] = [W_DKV; W_KR] h.
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", Linear(D, d_latent_ + rope_));
  kv_a_layernorm = register_module("kv_a_layernorm", Norm(d_latent_, cfg.norm_eps, false, fused_));
  // eq. (2) and (5) stacked per kv head: [k_C; v_C] = [W_UK; W_UV] c_KV.
  kv_b_proj = register_module("kv_b_proj", Linear(d_latent_, num_kv_heads_ * (nope_ + v_dim_)));
  o_proj = register_module("o_proj", Linear(H * v_dim_, D));  // eq. (11)
}

std::pair<torch::Tensor, torch::Tensor> MultiHeadLatentAttentionImpl::Queries(const torch::Tensor& x_BTD,
                                                                             const torch::Tensor& positions) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  // Under tensor parallelism the (replicated) compressed query enters the head-parallel region.
  const torch::Tensor q =
      q_proj.is_empty()
          ? Project(q_b_proj, EnterParallel(q_a_layernorm(Project(q_a_proj, x_BTD, fused_)), tp_.get()), fused_)
          : Project(q_proj, EnterParallel(x_BTD, tp_.get()), fused_);
  const torch::Tensor q_BTHX = q.view({B, T, num_heads_, nope_ + rope_});
  torch::Tensor q_rope_BTHR = q_BTHX.narrow(-1, nope_, rope_);
  if (use_rope_) q_rope_BTHR = Rotate(q_rope_BTHR, positions);  // eq. (8)
  return {q_BTHX.narrow(-1, 0, nope_), q_rope_BTHR};
}

torch::Tensor MultiHeadLatentAttentionImpl::Rotate(const torch::Tensor& x_BTHR, const torch::Tensor& positions) const {
  return UseFused(fused_, x_BTHR) ? kernels::Rope(x_BTHR, positions, rope_theta_)
                                  : ApplyRope(x_BTHR, positions, rope_theta_);
}

torch::Tensor MultiHeadLatentAttentionImpl::VisibleMask(const torch::Tensor& query_idx_T, const torch::Tensor& key_idx_S,
                                                       const torch::Tensor& segments_BT) const {
  const torch::Tensor distance_TS = query_idx_T.unsqueeze(1) - key_idx_S.unsqueeze(0);
  torch::Tensor visible = distance_TS >= 0;
  if (window_) visible = visible & (distance_TS < *window_);
  if (segments_BT.defined()) {  // same document only (Megatron's --reset-attention-mask)
    visible = (visible.unsqueeze(0) & (segments_BT.unsqueeze(2) == segments_BT.unsqueeze(1))).unsqueeze(1);
  }
  return visible;
}

torch::Tensor MultiHeadLatentAttentionImpl::forward(const torch::Tensor& x_BTD, const AttentionContext& ctx) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1), H = num_heads_;
  auto [q_nope_BTHN, q_rope_BTHR] = Queries(x_BTD, ctx.positions);

  const torch::Tensor kv_a = Project(kv_a_proj_with_mqa, x_BTD, fused_);
  const torch::Tensor c_kv_BTC = EnterParallel(kv_a_layernorm(kv_a.narrow(-1, 0, d_latent_)), tp_.get());
  torch::Tensor k_rope_BT1R = EnterParallel(kv_a.narrow(-1, d_latent_, rope_), tp_.get()).unsqueeze(2);
  if (use_rope_) k_rope_BT1R = Rotate(k_rope_BT1R, ctx.positions);  // eq. (3)

  const torch::Tensor kv_BTKX = Project(kv_b_proj, c_kv_BTC, fused_).view({B, T, num_kv_heads_, nope_ + v_dim_});
  torch::Tensor k_nope_BTKN = kv_BTKX.narrow(-1, 0, nope_);
  torch::Tensor v_BTKV = kv_BTKX.narrow(-1, nope_, v_dim_);
  if (num_kv_heads_ < H) {  // each kv head serves H/K consecutive query heads
    k_nope_BTKN = k_nope_BTKN.repeat_interleave(H / num_kv_heads_, 2);
    v_BTKV = v_BTKV.repeat_interleave(H / num_kv_heads_, 2);
  }
  // eq. (4) and (9): per-head key = [k_C; k_R] with k_R shared by all heads.
  const torch::Tensor q_BTHX = torch::cat({q_nope_BTHN, q_rope_BTHR}, -1);
  const torch::Tensor k_BTHX = torch::cat({k_nope_BTKN, k_rope_BT1R.expand({B, T, H, rope_})}, -1);
  const torch::Tensor o_BTHV = Attend(q_BTHX, k_BTHX, v_BTKV, ctx.segments_BT);  // eq. (10)
  return LeaveParallel(Project(o_proj, o_BTHV.reshape({B, T, H * v_dim_}), fused_), tp_.get());
}

torch::Tensor MultiHeadLatentAttentionImpl::Attend(const torch::Tensor& q_BTHX, const torch::Tensor& k_BTHX,
                                                   const torch::Tensor& v_BTHV, const torch::Tensor& segments_BT) {
  const bool dropout = dropout_ > 0 && is_training();
  if (UseFused(fused_, q_BTHX) && !dropout) {
    return kernels::Attention(q_BTHX, k_BTHX, v_BTHV, scale_, kernels::AttentionMask{window_, segments_BT});
  }
  const int64_t T = q_BTHX.size(1);
  torch::Tensor scores_BHTS =
      torch::matmul(q_BTHX.transpose(1, 2), k_BTHX.permute({0, 2, 3, 1})).to(UpcastType(q_BTHX.scalar_type())) *
      scale_;
  const torch::Tensor index_T = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(q_BTHX.device()));
  scores_BHTS = scores_BHTS.masked_fill(VisibleMask(index_T, index_T, segments_BT).logical_not(),
                                        -std::numeric_limits<float>::infinity());
  torch::Tensor probs_BHTS = torch::softmax(scores_BHTS, -1).to(q_BTHX.scalar_type());
  probs_BHTS = torch::dropout(probs_BHTS, dropout_, is_training());
  return torch::matmul(probs_BHTS, v_BTHV.transpose(1, 2)).transpose(1, 2);
}

void MultiHeadLatentAttentionImpl::AppendToCache(LatentCache& cache, const torch::Tensor& c_kv_BTC,
                                                 const torch::Tensor& k_rope_BTR) const {
  torch::Tensor c_kv = c_kv_BTC, k_rope = k_rope_BTR, c_scale, k_scale;
  if (fp8_cache_) {
    std::tie(c_kv, c_scale) = QuantizeFp8(c_kv_BTC);
    std::tie(k_rope, k_scale) = QuantizeFp8(k_rope_BTR);
  }
  const auto append = [](torch::Tensor& stored, const torch::Tensor& fresh) {
    stored = stored.defined() ? torch::cat({stored, fresh}, 1) : fresh;
  };
  append(cache.c_kv_BSC, c_kv);
  append(cache.k_rope_BSR, k_rope);
  if (fp8_cache_) {
    append(cache.c_kv_scale_BS1, c_scale);
    append(cache.k_rope_scale_BS1, k_scale);
  }
  cache.length += c_kv_BTC.size(1);
}

torch::Tensor MultiHeadLatentAttentionImpl::ForwardCached(const torch::Tensor& x_BTD, LatentCache& cache) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1), H = num_heads_, K = num_kv_heads_, G = H / K;
  const auto dtype = x_BTD.scalar_type();
  const auto iopts = torch::TensorOptions().dtype(torch::kLong).device(x_BTD.device());
  const torch::Tensor positions_T = torch::arange(cache.length, cache.length + T, iopts);
  auto [q_nope_BTHN, q_rope_BTHR] = Queries(x_BTD, positions_T);

  const torch::Tensor kv_a = Project(kv_a_proj_with_mqa, x_BTD, fused_);
  const torch::Tensor c_kv_BTC = kv_a_layernorm(kv_a.narrow(-1, 0, d_latent_));
  torch::Tensor k_rope_BT1R = kv_a.narrow(-1, d_latent_, rope_).unsqueeze(2);
  if (use_rope_) k_rope_BT1R = Rotate(k_rope_BT1R, positions_T);
  AppendToCache(cache, c_kv_BTC, k_rope_BT1R.squeeze(2));

  torch::Tensor c_kv_BSC = cache.c_kv_BSC, k_rope_BSR = cache.k_rope_BSR;
  if (fp8_cache_) {
    c_kv_BSC = c_kv_BSC.to(torch::kFloat) * cache.c_kv_scale_BS1;
    k_rope_BSR = k_rope_BSR.to(torch::kFloat) * cache.k_rope_scale_BS1;
  }
  c_kv_BSC = c_kv_BSC.to(dtype);
  k_rope_BSR = k_rope_BSR.to(dtype);
  const int64_t S = c_kv_BSC.size(1);

  // Absorb W_UK into the query: q_C^T k_C = q_C^T W_UK c_KV = (W_UK^T q_C)^T c_KV.
  const torch::Tensor w_KXC = kv_b_proj->weight.view({K, nope_ + v_dim_, d_latent_});
  const torch::Tensor w_uk_KNC = w_KXC.narrow(1, 0, nope_);
  const torch::Tensor w_uv_KVC = w_KXC.narrow(1, nope_, v_dim_);
  const torch::Tensor q_lat_BTHC =
      torch::einsum("btkgn,knc->btkgc", {q_nope_BTHN.reshape({B, T, K, G, nope_}), w_uk_KNC}).reshape({B, T, H, d_latent_});
  torch::Tensor scores_BHTS = (torch::einsum("bthc,bsc->bhts", {q_lat_BTHC, c_kv_BSC}) +
                               torch::einsum("bthr,bsr->bhts", {q_rope_BTHR, k_rope_BSR}))
                                  .to(UpcastType(dtype)) *
                              scale_;
  const torch::Tensor key_pos_S = torch::arange(S, iopts);
  scores_BHTS = scores_BHTS.masked_fill(VisibleMask(positions_T, key_pos_S).logical_not(),
                                        -std::numeric_limits<float>::infinity());
  const torch::Tensor probs_BHTS = torch::softmax(scores_BHTS, -1).to(dtype);
  // Absorb W_UV into the output: sum_s p_s W_UV c_s = W_UV (sum_s p_s c_s).
  const torch::Tensor o_lat_BTKGC =
      torch::einsum("bhts,bsc->bthc", {probs_BHTS, c_kv_BSC}).reshape({B, T, K, G, d_latent_});
  const torch::Tensor o_BTHV =
      torch::einsum("btkgc,kvc->btkgv", {o_lat_BTKGC, w_uv_KVC}).reshape({B, T, H * v_dim_});
  return LeaveParallel(Project(o_proj, o_BTHV, fused_), tp_.get());
}

std::vector<TensorParallelSplit> MultiHeadLatentAttentionImpl::TensorParallelPlan() const {
  return {{q_proj.is_empty() ? "q_b_proj.weight" : "q_proj.weight", 0}, {"kv_b_proj.weight", 0}, {"o_proj.weight", 1}};
}

void MultiHeadLatentAttentionImpl::ShardTensorParallel(std::shared_ptr<TensorParallelGroup> tp) {
  DSV3_CHECK(num_heads_ % tp->size() == 0 && num_kv_heads_ % tp->size() == 0)
      << num_heads_ << " heads (" << num_kv_heads_ << " kv heads) over " << tp->size() << " tensor-parallel ranks";
  torch::NoGradGuard no_grad;
  // Rows of the up-projections are grouped by head, o_proj's columns too: block r of each
  // holds heads [r H/tp, (r+1) H/tp), which use kv heads [r K/tp, (r+1) K/tp) under GQA.
  auto params = named_parameters();
  for (const auto& split : TensorParallelPlan()) {
    torch::Tensor& w = params[split.name];
    w.set_data(TensorParallelBlock(w, split.dim, *tp));
  }
  num_heads_ /= tp->size();
  num_kv_heads_ /= tp->size();
  tp_ = std::move(tp);
}

}  // namespace dsv3::model
