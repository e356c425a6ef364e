// Decoder layer, activation checkpointing and the MTP module.
#include <cstdint>

#include "dsv3/common/check.h"
#include "dsv3/model/layers.h"
#include "dsv3/model/torch_compat.h"

namespace dsv3::model {
namespace {

thread_local bool g_in_recompute = false;

class RecomputeScope {
 public:
  RecomputeScope() : previous_(g_in_recompute) { g_in_recompute = true; }
  ~RecomputeScope() { g_in_recompute = previous_; }

 private:
  bool previous_;
};

// Reentrant checkpoint: forward runs without building a graph (autograd::Function runs
// forward with grad disabled) and keeps only its inputs; backward re-runs the layer with
// grad enabled and backpropagates through that fresh graph, which accumulates parameter
// gradients directly, as PyTorch's reentrant torch.utils.checkpoint does.
struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                                                torch::Tensor positions, torch::Tensor segments,
                                                DecoderLayerImpl* layer, LayerParameters* params) {
    ctx->saved_data["layer"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(layer));
    ctx->saved_data["params"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(params));
    ctx->saved_data["rng"] = compat::GetRngState(x.device());
    ctx->saved_data["positions"] = positions;
    // No segments arrive as an empty tensor: autograd::Function inputs must be defined.
    const bool has_segments = segments.numel() > 0;
    ctx->saved_data["has_segments"] = has_segments;
    if (has_segments) ctx->saved_data["segments"] = segments;
    ctx->save_for_backward({x});
    if (params != nullptr) params->Acquire(*layer);
    LayerOutput out = layer->forward(x, AttentionContext{positions, has_segments ? segments : torch::Tensor()});
    if (params != nullptr) params->Release(*layer);
    // Dense layers have no balance loss; a Function's outputs must all be tensors.
    if (!out.balance_loss.defined()) out.balance_loss = torch::zeros({}, out.h_BTD.options());
    return {out.h_BTD, out.balance_loss};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(static_cast<intptr_t>(ctx->saved_data["layer"].toInt()));
    auto* params = reinterpret_cast<LayerParameters*>(static_cast<intptr_t>(ctx->saved_data["params"].toInt()));
    if (params != nullptr) params->Acquire(*layer);
    const torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    AttentionContext attention{ctx->saved_data["positions"].toTensor(), torch::Tensor()};
    if (ctx->saved_data["has_segments"].toBool()) attention.segments_BT = ctx->saved_data["segments"].toTensor();
    const torch::Device device = x.device();
    const torch::Tensor rng_now = compat::GetRngState(device);
    compat::SetRngState(device, ctx->saved_data["rng"].toTensor());
    LayerOutput out;
    {
      RecomputeScope recompute;
      torch::AutoGradMode grad_on(true);
      out = layer->forward(x, attention);
    }
    compat::SetRngState(device, rng_now);
    std::vector<torch::Tensor> outputs, output_grads;
    if (grads[0].defined()) {
      outputs.push_back(out.h_BTD);
      output_grads.push_back(grads[0]);
    }
    if (grads[1].defined() && out.balance_loss.requires_grad()) {
      outputs.push_back(out.balance_loss);
      output_grads.push_back(grads[1]);
    }
    if (!outputs.empty()) torch::autograd::backward(outputs, output_grads);
    if (params != nullptr) params->Release(*layer);
    return {x.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool InRecompute() { return g_in_recompute; }

DecoderLayerImpl::DecoderLayerImpl(const config::ModelConfig& cfg, bool moe_layer) {
  const int64_t D = cfg.mla.d_model;
  input_layernorm = register_module("input_layernorm", MakeNorm(cfg, D));
  self_attn = register_module("self_attn", MultiHeadLatentAttention(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", MakeNorm(cfg, D));
  if (moe_layer) {
    moe = register_module("mlp", MoE(cfg));
  } else {
    dense_mlp = register_module("mlp", FeedForward(D, cfg.dense_intermediate_size, cfg.fused_kernels));
  }
}

void DecoderLayerImpl::ShardTensorParallel(const std::shared_ptr<TensorParallelGroup>& tp, bool sequence_parallel) {
  tp_ = tp;
  sequence_parallel_ = sequence_parallel && tp->size() > 1;
  self_attn->ShardTensorParallel(tp);
  if (is_moe()) {
    if (!moe->shared_experts.is_empty()) moe->shared_experts->ShardTensorParallel(tp);
  } else {
    dense_mlp->ShardTensorParallel(tp);
  }
}

std::vector<TensorParallelSplit> DecoderLayerImpl::TensorParallelPlan() const {
  std::vector<TensorParallelSplit> out;
  for (auto split : self_attn->TensorParallelPlan()) out.push_back({"self_attn." + split.name, split.dim});
  const FeedForward& ffn = is_moe() ? moe->shared_experts : dense_mlp;
  const std::string prefix = is_moe() ? "mlp.shared_experts." : "mlp.";
  if (!ffn.is_empty()) {
    for (auto split : ffn->TensorParallelPlan()) out.push_back({prefix + split.name, split.dim});
  }
  return out;
}

torch::Tensor DecoderLayerImpl::Mlp(const torch::Tensor& x_BTD, torch::Tensor* balance_loss) {
  if (moe.is_empty()) {
    if (balance_loss != nullptr) *balance_loss = torch::zeros({}, x_BTD.options().dtype(torch::kFloat));
    return dense_mlp(x_BTD);
  }
  MoeOutput out = moe(x_BTD);
  if (balance_loss != nullptr) *balance_loss = out.balance_loss;
  return out.y_BTD;
}

LayerOutput DecoderLayerImpl::forward(const torch::Tensor& x_BTD, const AttentionContext& ctx) {
  // Pre-norm residual blocks: h = x + Attn(norm(x)); out = h + FFN(norm(h)).
  LayerOutput out;
  if (sequence_parallel_) {  // x and h are this rank's slices of the sequence
    TensorParallelGroup* tp = tp_.get();
    const torch::Tensor h = x_BTD + ScatterSequence(self_attn(GatherSequence(input_layernorm(x_BTD), tp), ctx), tp);
    out.h_BTD = h + ScatterSequence(Mlp(GatherSequence(post_attention_layernorm(h), tp), &out.balance_loss), tp);
    return out;
  }
  const torch::Tensor h = x_BTD + self_attn(input_layernorm(x_BTD), ctx);
  out.h_BTD = h + Mlp(post_attention_layernorm(h), &out.balance_loss);
  return out;
}

torch::Tensor DecoderLayerImpl::ForwardCached(const torch::Tensor& x_BTD, LatentCache& cache) {
  const torch::Tensor h = x_BTD + self_attn->ForwardCached(input_layernorm(x_BTD), cache);
  return h + Mlp(post_attention_layernorm(h), nullptr);
}

LayerOutput CheckpointedForward(DecoderLayerImpl& layer, const torch::Tensor& x_BTD, const AttentionContext& ctx,
                                LayerParameters* params) {
  const torch::Tensor segments =
      ctx.segments_BT.defined() ? ctx.segments_BT : torch::empty({0}, ctx.positions.options());
  const torch::autograd::variable_list out = CheckpointFunction::apply(x_BTD, ctx.positions, segments, &layer, params);
  return {out[0], out[1]};
}

MtpModuleImpl::MtpModuleImpl(const config::ModelConfig& cfg, bool moe_block) {
  const int64_t D = cfg.mla.d_model;
  enorm = register_module("enorm", MakeNorm(cfg, D));
  hnorm = register_module("hnorm", MakeNorm(cfg, D));
  eh_proj = register_module("eh_proj", torch::nn::Linear(torch::nn::LinearOptions(2 * D, D).bias(false)));
  block = register_module("block", DecoderLayer(cfg, moe_block));
  norm = register_module("norm", MakeNorm(cfg, D));
}

}  // namespace dsv3::model
