// The DeepSeek-V3 model: embedding, decoder layers (dense or MoE by the layer plan of the
// config, see config::LayerPlan), final norm, output head, and the multi-token-prediction
// modules. Built from a resolved config (config::LoadConfigFile), so its parameter count
// equals config::CountParameters exactly.
//
// The model knows nothing of distribution, checkpoint files or data loading; the trainer
// drives it through this interface. Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "dsv3/common/config.h"
#include "dsv3/model/layers.h"

namespace dsv3::model {

// Pipeline parallelism: the part of the model one stage runs, in one model chunk or (the
// interleaved schedule) several.
struct LayerRange {
  int64_t first = 0, end = 0;  // decoder layers [first, end)
};
struct PipelineStage {
  std::vector<LayerRange> chunks;  // in order; empty: every layer
  bool first = true;               // the first chunk starts with the embedding of the input tokens
  bool last = true;                // the last chunk ends with the final norm, head, losses and MTP
};

struct ModelOutput {
  torch::Tensor h_BTD;         // a stage's hidden output for the next stage (not the last stage)
  torch::Tensor logits_BTV;    // main head; undefined with fused_kernels (the chunked loss never
                               // materialises them: use Logits())
  torch::Tensor loss;          // main + mtp_loss_weight * mtp + balance (what to backprop)
  torch::Tensor main_loss;     // next-token cross entropy
  torch::Tensor mtp_loss;      // mean over MTP depths (0 without MTP)
  torch::Tensor balance_loss;  // sum over MoE layers of the weighted balance losses
  int64_t tokens = 0;          // target tokens of the main loss
};

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // nucleus: smallest set of tokens with probability >= top_p
  int64_t top_k = 0;         // only the k most likely tokens (0: all)
  uint64_t seed = 0;         // for temperature > 0
  std::optional<int64_t> eos_token;  // stop after emitting it
  // Called with each new token and its log-probability under the model (temperature 1, before
  // top-k/top-p); returning false stops the generation after that token (stop strings).
  std::function<bool(int64_t token, double logprob)> on_token;
};

class DeepSeekV3Impl : public torch::nn::Module {
 public:
  explicit DeepSeekV3Impl(const config::Config& cfg);

  // tokens_BW: windows of W = T + 1 token ids (int64): inputs are [:, :T], main targets
  // [:, 1:]. MTP depth d (1-based) predicts token i+1+d from position i over the first T-d
  // positions (eq. 21-25). Target id -100 is ignored in the losses.
  // segments_BW (optional, int64): document ids per token from the data loader; with them,
  // positions restart and attention stays inside each document (data.reset_attention_mask).
  ModelOutput forward(const torch::Tensor& tokens_BW, const torch::Tensor& segments_BW = {});

  // forward() of this rank's pipeline stage: from the embeddings (first stage) or h_in_BTD
  // (the previous stage's output) through the stage's layers; the last stage adds the losses
  // and MTP, the others return h_BTD and their layers' balance loss as `loss`.
  // `chunk` picks the model chunk (interleaved schedule).
  ModelOutput ForwardStage(const torch::Tensor& tokens_BW, const torch::Tensor& segments_BW,
                           const torch::Tensor& h_in_BTD, int64_t chunk = 0);
  // Logits() of this rank's stage: the chunk's hidden output, or the logits after the last.
  torch::Tensor LogitsStage(const torch::Tensor& tokens_BT, const torch::Tensor& h_in_BTD, int64_t chunk = 0);

  // Pipeline parallelism: keeps only what `stage` runs. The parameters of the other decoder
  // layers, of the embedding (unless the stage is first, or last with MTP or a tied head,
  // which use it too) and of the final norm, head and MTP modules (unless last) become empty
  // tensors, left out of HeldParameters(). Call after the full weights are in place.
  void SetPipelineStage(const PipelineStage& stage);
  const PipelineStage& pipeline_stage() const { return stage_; }
  // Whether this rank's stage holds parameter `name` (as named by named_parameters()).
  bool Holds(const std::string& name) const;
  // named_parameters() of what this rank holds.
  torch::OrderedDict<std::string, torch::Tensor> HeldParameters() const;

  // Main-head logits for tokens_BT (no losses, no MTP): x -> logits_BTV. segments_BT as in
  // forward() (document ids of the tokens).
  torch::Tensor Logits(const torch::Tensor& tokens_BT, const torch::Tensor& segments_BT = {});

  // Logits through the compressed KV caches (one per layer), appending tokens_BT to them.
  // positions continue from the caches' length. Inference only (eval mode, no grad).
  torch::Tensor LogitsCached(const torch::Tensor& tokens_BT, std::vector<LatentCache>& caches);

  // Greedy or sampled continuation of `prompt` (batch 1) through the cached path.
  // Returns only the new tokens.
  std::vector<int64_t> Generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                const SamplingOptions& options = {});

  // Router noise annealing: fraction of training done in [0, 1].
  void SetTrainingProgress(double fraction);
  // MoE statistics per MoE layer (main layers, then MTP blocks) since the last call.
  std::vector<MoeStats> TakeMoeStats();
  // Aux-loss-free bias update from the global batch's loads, one tensor per MoE layer in
  // the order of TakeMoeStats().
  void UpdateRouterBiases(const std::vector<torch::Tensor>& loads_E);
  std::vector<MoE> MoeLayers() const;
  // Expert parallelism: every MoE layer keeps its block of experts (see MoEImpl).
  void ShardExperts(const std::shared_ptr<ExpertExchange>& exchange);
  // Tensor parallelism (Megatron-Core's plan): every decoder layer's heads and FFN columns
  // (DecoderLayerImpl::ShardTensorParallel), and the vocabulary rows of the embedding and the
  // output head, split over `tp`; the loss is vocabulary-parallel, logits (Logits(),
  // generation) are gathered. Call with the full weights in place, before anything else is
  // built on the parameters.
  // With sequence_parallel, the decoder layers run on sequence slices (DecoderLayerImpl), the
  // stream scattered after the embedding and gathered before the final norm (the MTP blocks
  // run on whole sequences: their lengths T - d need not divide).
  void ShardTensorParallel(const std::shared_ptr<TensorParallelGroup>& tp, bool sequence_parallel = false);
  // The parameters split over the tensor-parallel group (named as in named_parameters()),
  // whether sharded yet or not; the rest is replicated on every tensor-parallel rank.
  std::vector<TensorParallelSplit> TensorParallelPlan() const;
  // Parameter sharding: every decoder layer runs between Acquire and Release (with grad:
  // checkpointed, so the backward pass acquires it again). Null: parameters stay put.
  void SetLayerParameters(std::shared_ptr<LayerParameters> params) { layer_params_ = std::move(params); }

  int64_t NumParameters() const;
  const config::Config& config() const { return cfg_; }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  Norm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_word_embeddings
  torch::nn::ModuleList mtp{nullptr};

 private:
  // Token embeddings (vocabulary-parallel under tensor parallelism).
  torch::Tensor Embed(const torch::Tensor& ids);
  // Full logits (gathered over the tensor-parallel group: inference only).
  torch::Tensor Head(const torch::Tensor& h_BTD);
  // This rank's vocabulary block of the logits.
  torch::Tensor LocalHead(const torch::Tensor& h_BTD);
  const torch::Tensor& HeadWeight() const;  // lm_head's, or the embedding's when tied
  // Cross entropy of the head on h_BTD against targets_BT (fused: chunked, no logits; else
  // through Head(), whose logits go to *logits_BTV when given).
  torch::Tensor HeadLoss(const torch::Tensor& h_BTD, const torch::Tensor& targets_BT, torch::Tensor* logits_BTV);
  // Positions (restarting per document when segments are given) and document ids.
  static AttentionContext MakeContext(int64_t T, const torch::Device& device, const torch::Tensor& segments);
  // Decoder stack over embeddings; adds the layers' balance losses to *balance.
  torch::Tensor Trunk(const torch::Tensor& x_BTD, const AttentionContext& ctx, torch::Tensor* balance,
                      int64_t chunk = 0);
  bool FirstChunk(int64_t chunk) const { return stage_.first && chunk == 0; }
  bool LastChunk(int64_t chunk) const {
    return stage_.last && chunk + 1 == static_cast<int64_t>(stage_.chunks.size());
  }
  LayerOutput RunLayer(DecoderLayerImpl& layer, const torch::Tensor& x_BTD, const AttentionContext& ctx);
  void InitWeights();

  config::Config cfg_;
  std::shared_ptr<LayerParameters> layer_params_;
  std::shared_ptr<TensorParallelGroup> tp_;  // null: the whole model here
  PipelineStage stage_;                      // every layer until SetPipelineStage
  bool sequence_parallel_ = false;
};
TORCH_MODULE(DeepSeekV3);

}  // namespace dsv3::model
