// The full DeepSeek-V3 model: trunk, heads, losses, MTP (eq. 21-25) and generation.
#include "dsv3/model/model.h"

#include <algorithm>
#include <random>

#include "dsv3/common/check.h"
#include "dsv3/common/estimator.h"
#include "fused.h"

namespace dsv3::model {
namespace {

constexpr int64_t kIgnoreIndex = -100;

torch::Tensor CrossEntropy(const torch::Tensor& logits_BTV, const torch::Tensor& targets_BT) {
  return torch::nn::functional::cross_entropy(
      logits_BTV.reshape({-1, logits_BTV.size(-1)}).to(UpcastType(logits_BTV.scalar_type())), targets_BT.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

// Greedy argmax, or temperature + nucleus sampling with a seeded generator (on the CPU, so
// the same seed gives the same text on every device).
int64_t PickToken(const torch::Tensor& logits_V, const SamplingOptions& options, std::mt19937_64& rng) {
  const torch::Tensor logits = logits_V.to(torch::kCPU).to(torch::kDouble);
  if (options.temperature <= 0) return logits.argmax().item<int64_t>();
  const torch::Tensor probs = torch::softmax(logits / options.temperature, -1);
  const auto sorted = probs.sort(-1, /*descending=*/true);
  const torch::Tensor p = std::get<0>(sorted), idx = std::get<1>(sorted);
  const double* pp = p.data_ptr<double>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  // Top-k, then the nucleus: the smallest prefix whose mass reaches top_p.
  const int64_t k = options.top_k > 0 ? std::min(options.top_k, p.numel()) : p.numel();
  int64_t n = 0;
  double mass = 0;
  while (n < k && (n == 0 || mass < options.top_p)) mass += pp[n++];
  double u = std::uniform_real_distribution<double>(0.0, mass)(rng);
  for (int64_t i = 0; i < n; ++i) {
    u -= pp[i];
    if (u <= 0) return ip[i];
  }
  return ip[n - 1];
}

}  // namespace

DeepSeekV3Impl::DeepSeekV3Impl(const config::Config& cfg) : cfg_(cfg) {
  config::ModelConfig& m = cfg_.model;
  config::ResolveModelDefaults(m);
  const int64_t D = m.mla.d_model;
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(m.vocab_size, D));
  layers = register_module("layers", torch::nn::ModuleList());
  const std::vector<bool> plan = config::LayerPlan(m);
  for (bool moe : plan) layers->push_back(DecoderLayer(m, moe));
  norm = register_module("norm", MakeNorm(m, D));
  if (!m.tie_word_embeddings) {
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(D, m.vocab_size).bias(false)));
  }
  mtp = register_module("mtp", torch::nn::ModuleList());
  if (cfg_.training.use_mtp) {
    const bool moe = std::find(plan.begin(), plan.end(), true) != plan.end();
    for (int64_t d = 1; d < cfg_.training.num_predict_tokens; ++d) mtp->push_back(MtpModule(m, moe));
  }
  stage_.chunks = {{0, static_cast<int64_t>(layers->size())}};
  InitWeights();
}

void DeepSeekV3Impl::InitWeights() {
  torch::NoGradGuard no_grad;
  // Every matrix ~ N(0, init_method_std); norms start at 1 (weight) and 0 (bias).
  for (auto& p : named_parameters()) {
    if (p.value().dim() >= 2) p.value().normal_(0.0, cfg_.model.init_method_std);
  }
}

int64_t DeepSeekV3Impl::NumParameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

const torch::Tensor& DeepSeekV3Impl::HeadWeight() const {
  return lm_head.is_empty() ? embed_tokens->weight : lm_head->weight;
}

torch::Tensor DeepSeekV3Impl::Embed(const torch::Tensor& ids) {
  return tp_ ? VocabParallelEmbedding(ids, embed_tokens->weight, tp_.get()) : embed_tokens(ids);
}

torch::Tensor DeepSeekV3Impl::LocalHead(const torch::Tensor& h_BTD) {
  if (UseFused(cfg_.model.fused_kernels, h_BTD)) return kernels::Linear(h_BTD, HeadWeight());
  if (lm_head.is_empty()) return torch::matmul(h_BTD, embed_tokens->weight.t());
  return lm_head(h_BTD);
}

torch::Tensor DeepSeekV3Impl::Head(const torch::Tensor& h_BTD) {
  torch::Tensor local = LocalHead(h_BTD);
  if (!tp_) return local;
  // tp x B x T x V/tp -> B x T x V: rank r's block holds vocabulary rows [r V/tp, (r+1) V/tp).
  const torch::Tensor blocks = tp_->AllGather(local.contiguous());
  std::vector<int64_t> shape = local.sizes().vec();
  shape.back() *= tp_->size();
  return blocks.movedim(0, -2).reshape(shape);
}

torch::Tensor DeepSeekV3Impl::HeadLoss(const torch::Tensor& h_BTD, const torch::Tensor& targets_BT,
                                       torch::Tensor* logits_BTV) {
  if (tp_) {
    // The hidden state enters the vocabulary-parallel head; each rank scores its block of
    // the vocabulary and the loss combines the blocks without gathering them (fused: a chunk
    // of tokens at a time, never the whole block of logits).
    const torch::Tensor h = EnterParallel(h_BTD, tp_.get());
    if (UseFused(cfg_.model.fused_kernels, h_BTD)) {
      return VocabParallelLinearCrossEntropy(h.reshape({-1, h.size(-1)}), HeadWeight(), targets_BT.reshape({-1}),
                                             kIgnoreIndex, tp_.get());
    }
    return VocabParallelCrossEntropy(LocalHead(h).reshape({-1, HeadWeight().size(0)}), targets_BT.reshape({-1}),
                                     kIgnoreIndex, tp_.get());
  }
  if (UseFused(cfg_.model.fused_kernels, h_BTD)) {
    // Chunked linear + cross-entropy: the logits are never materialised.
    return kernels::LinearCrossEntropy(h_BTD.reshape({-1, h_BTD.size(-1)}), HeadWeight(), targets_BT.reshape({-1}),
                                       kIgnoreIndex);
  }
  torch::Tensor logits = Head(h_BTD);
  if (logits_BTV != nullptr) *logits_BTV = logits;
  return CrossEntropy(logits, targets_BT);
}

LayerOutput DeepSeekV3Impl::RunLayer(DecoderLayerImpl& layer, const torch::Tensor& x_BTD,
                                     const AttentionContext& ctx) {
  if (layer_params_) {
    if (torch::GradMode::is_enabled()) return CheckpointedForward(layer, x_BTD, ctx, layer_params_.get());
    layer_params_->Acquire(layer);
    LayerOutput out = layer.forward(x_BTD, ctx);
    layer_params_->Release(layer);
    return out;
  }
  if (cfg_.model.gradient_checkpointing && is_training() && torch::GradMode::is_enabled()) {
    return CheckpointedForward(layer, x_BTD, ctx);
  }
  return layer.forward(x_BTD, ctx);
}

torch::Tensor DeepSeekV3Impl::Trunk(const torch::Tensor& x_BTD, const AttentionContext& ctx, torch::Tensor* balance,
                                    int64_t chunk) {
  const LayerRange range = stage_.chunks.at(static_cast<size_t>(chunk));
  // Sequence parallelism: the layers pass this rank's slice of the sequence along.
  TensorParallelGroup* sp = sequence_parallel_ ? tp_.get() : nullptr;
  torch::Tensor h = ScatterSequence(x_BTD, sp);
  for (int64_t i = range.first; i < range.end; ++i) {
    LayerOutput out = RunLayer(*(*layers)[static_cast<size_t>(i)]->as<DecoderLayerImpl>(), h, ctx);
    h = out.h_BTD;
    if (balance != nullptr) *balance = *balance + out.balance_loss;
  }
  return GatherSequence(h, sp);
}

ModelOutput DeepSeekV3Impl::forward(const torch::Tensor& tokens_BW, const torch::Tensor& segments_BW) {
  return ForwardStage(tokens_BW, segments_BW, torch::Tensor());
}

ModelOutput DeepSeekV3Impl::ForwardStage(const torch::Tensor& tokens_BW, const torch::Tensor& segments_BW,
                                         const torch::Tensor& h_in_BTD, int64_t chunk) {
  DSV3_CHECK(FirstChunk(chunk) || h_in_BTD.defined()) << "a stage after the first needs the previous stage's output";
  DSV3_CHECK(tokens_BW.dim() == 2 && tokens_BW.size(1) >= 2) << "expected B x (T+1) token windows, got "
                                                            << tokens_BW.sizes();
  const int64_t T = tokens_BW.size(1) - 1;
  DSV3_CHECK(T <= cfg_.model.mla.max_context_length)
      << T << " tokens exceed max_context_length " << cfg_.model.mla.max_context_length;
  const torch::Tensor inputs_BT = tokens_BW.narrow(1, 0, T);
  const torch::Tensor targets_BT = tokens_BW.narrow(1, 1, T);
  if (segments_BW.defined()) {
    DSV3_CHECK(segments_BW.sizes() == tokens_BW.sizes()) << "segments " << segments_BW.sizes() << " for tokens "
                                                         << tokens_BW.sizes();
  }
  const AttentionContext ctx = MakeContext(T, tokens_BW.device(), segments_BW);
  ModelOutput out;
  out.balance_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(tokens_BW.device()));
  const torch::Tensor h_BTD = Trunk(FirstChunk(chunk) ? Embed(inputs_BT) : h_in_BTD, ctx, &out.balance_loss, chunk);
  if (!LastChunk(chunk)) {
    out.h_BTD = h_BTD;
    out.main_loss = torch::zeros_like(out.balance_loss);
    out.mtp_loss = torch::zeros_like(out.balance_loss);
    out.loss = out.balance_loss;
    return out;
  }
  out.main_loss = HeadLoss(norm(h_BTD), targets_BT, &out.logits_BTV);
  out.tokens = (targets_BT != kIgnoreIndex).sum().item<int64_t>();

  // MTP (eq. 21-24): depth d combines h^{d-1}_i with Emb(t_{i+d}) and predicts t_{i+d+1}.
  out.mtp_loss = torch::zeros_like(out.balance_loss);
  torch::Tensor previous_BTD = h_BTD;
  int64_t depths = 0;
  for (const auto& module : *mtp) {
    auto& m = *module->as<MtpModuleImpl>();
    const int64_t d = depths + 1;
    const int64_t L = T - d;
    if (L <= 0) break;
    const torch::Tensor emb_BLD = Embed(tokens_BW.narrow(1, d, L));
    const torch::Tensor joined =
        m.eh_proj(torch::cat({m.enorm(emb_BLD), m.hnorm(previous_BTD.narrow(1, 0, L))}, -1));
    const AttentionContext depth_ctx{ctx.positions.dim() == 2 ? ctx.positions.narrow(1, 0, L) : ctx.positions.narrow(0, 0, L),
                                     ctx.segments_BT.defined() ? ctx.segments_BT.narrow(1, 0, L) : torch::Tensor()};
    LayerOutput block = RunLayer(*m.block, joined, depth_ctx);
    out.balance_loss = out.balance_loss + block.balance_loss;
    out.mtp_loss = out.mtp_loss + HeadLoss(m.norm(block.h_BTD), tokens_BW.narrow(1, d + 1, L), nullptr);
    previous_BTD = block.h_BTD;
    ++depths;
  }
  if (depths > 0) out.mtp_loss = out.mtp_loss / static_cast<double>(depths);  // eq. (25)
  out.loss = out.main_loss + cfg_.training.mtp_loss_weight * out.mtp_loss + out.balance_loss;
  return out;
}

AttentionContext DeepSeekV3Impl::MakeContext(int64_t T, const torch::Device& device, const torch::Tensor& segments) {
  const auto iopts = torch::TensorOptions().dtype(torch::kLong).device(device);
  AttentionContext ctx{torch::arange(T, iopts), torch::Tensor()};
  if (segments.defined()) {
    // Positions restart where a document starts: index minus the index of its first token.
    ctx.segments_BT = segments.narrow(1, 0, T).to(torch::kLong);
    const torch::Tensor index = torch::arange(T, iopts).unsqueeze(0).expand_as(ctx.segments_BT);
    torch::Tensor starts = torch::ones_like(ctx.segments_BT, ctx.segments_BT.options().dtype(torch::kBool));
    if (T > 1) starts.narrow(1, 1, T - 1).copy_(ctx.segments_BT.narrow(1, 1, T - 1) != ctx.segments_BT.narrow(1, 0, T - 1));
    ctx.positions = index - std::get<0>(torch::cummax(index * starts.to(torch::kLong), 1));
  }
  return ctx;
}

torch::Tensor DeepSeekV3Impl::LogitsStage(const torch::Tensor& tokens_BT, const torch::Tensor& h_in_BTD,
                                          int64_t chunk) {
  const torch::Tensor h = Trunk(FirstChunk(chunk) ? Embed(tokens_BT) : h_in_BTD,
                                MakeContext(tokens_BT.size(1), tokens_BT.device(), torch::Tensor()), nullptr, chunk);
  return LastChunk(chunk) ? Head(norm(h)) : h;
}

bool DeepSeekV3Impl::Holds(const std::string& name) const {
  if (name.rfind("layers.", 0) == 0) {
    const int64_t i = std::stoll(name.substr(7, name.find('.', 7) - 7));
    for (const LayerRange& r : stage_.chunks) {
      if (i >= r.first && i < r.end) return true;
    }
    return false;
  }
  if (name.rfind("embed_tokens.", 0) == 0) return stage_.first || (stage_.last && (!mtp->is_empty() || lm_head.is_empty()));
  return stage_.last;  // norm, lm_head, mtp
}

torch::OrderedDict<std::string, torch::Tensor> DeepSeekV3Impl::HeldParameters() const {
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& p : named_parameters()) {
    if (Holds(p.key())) out.insert(p.key(), p.value());
  }
  return out;
}

void DeepSeekV3Impl::SetPipelineStage(const PipelineStage& stage) {
  DSV3_CHECK(!stage.chunks.empty()) << "a pipeline stage without layers";
  for (const LayerRange& r : stage.chunks) {
    DSV3_CHECK(r.first >= 0 && r.first < r.end && r.end <= static_cast<int64_t>(layers->size()))
        << "pipeline stage of layers [" << r.first << ", " << r.end << ") of " << layers->size();
  }
  stage_ = stage;
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (!Holds(p.key())) p.value().set_data(torch::empty({0}, p.value().options()));
  }
}

torch::Tensor DeepSeekV3Impl::Logits(const torch::Tensor& tokens_BT, const torch::Tensor& segments_BT) {
  return Head(norm(Trunk(Embed(tokens_BT), MakeContext(tokens_BT.size(1), tokens_BT.device(), segments_BT),
                         nullptr)));
}

torch::Tensor DeepSeekV3Impl::LogitsCached(const torch::Tensor& tokens_BT, std::vector<LatentCache>& caches) {
  DSV3_CHECK(caches.size() == layers->size()) << caches.size() << " caches for " << layers->size() << " layers";
  torch::Tensor h = Embed(tokens_BT);
  for (size_t i = 0; i < layers->size(); ++i) {
    auto* layer = layers[i]->as<DecoderLayerImpl>();
    if (layer_params_) layer_params_->Acquire(*layer);
    h = layer->ForwardCached(h, caches[i]);
    if (layer_params_) layer_params_->Release(*layer);
  }
  return Head(norm(h));
}

std::vector<int64_t> DeepSeekV3Impl::Generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                              const SamplingOptions& options) {
  DSV3_CHECK(!prompt.empty()) << "generation needs a prompt of at least one token";
  const bool was_training = is_training();
  eval();
  torch::NoGradGuard no_grad;
  const torch::Device device = embed_tokens->weight.device();
  const int64_t max_length = cfg_.model.mla.max_context_length;
  std::vector<LatentCache> caches(layers->size());
  std::mt19937_64 rng(options.seed);
  std::vector<int64_t> generated;
  std::vector<int64_t> context(prompt.end() - std::min<int64_t>(prompt.size(), max_length), prompt.end());
  torch::Tensor logits = LogitsCached(torch::tensor(context, torch::kLong).view({1, -1}).to(device), caches);
  while (static_cast<int64_t>(generated.size()) < max_new_tokens) {
    const torch::Tensor last = logits[0][logits.size(1) - 1];
    const int64_t next = PickToken(last, options, rng);
    generated.push_back(next);
    if (options.on_token) {
      const double logprob = torch::log_softmax(last.to(torch::kDouble), -1)[next].item<double>();
      if (!options.on_token(next, logprob)) break;
    }
    if (options.eos_token && next == *options.eos_token) break;
    if (caches[0].length >= max_length) break;  // the context window is full
    logits = LogitsCached(torch::tensor({next}, torch::kLong).view({1, 1}).to(device), caches);
  }
  train(was_training);
  return generated;
}

void DeepSeekV3Impl::SetTrainingProgress(double fraction) {
  const double scale = std::clamp(1.0 - fraction, 0.0, 1.0);
  for (auto& moe : MoeLayers()) moe->SetNoiseScale(scale);
}

std::vector<MoE> DeepSeekV3Impl::MoeLayers() const {
  std::vector<MoE> out;
  for (const auto& module : *layers) {
    auto* layer = module->as<DecoderLayerImpl>();
    if (layer->is_moe()) out.push_back(layer->moe);
  }
  for (const auto& module : *mtp) {
    auto* block = module->as<MtpModuleImpl>()->block.get();
    if (block->is_moe()) out.push_back(block->moe);
  }
  return out;
}

void DeepSeekV3Impl::ShardTensorParallel(const std::shared_ptr<TensorParallelGroup>& tp, bool sequence_parallel) {
  if (tp->size() == 1) return;
  {
    torch::NoGradGuard no_grad;
    auto params = named_parameters();
    for (const auto& split : TensorParallelPlan()) {
      if (split.name.rfind("embed_tokens.", 0) != 0 && split.name.rfind("lm_head.", 0) != 0) continue;
      torch::Tensor& w = params[split.name];
      w.set_data(TensorParallelBlock(w, split.dim, *tp));
    }
  }
  for (const auto& module : *layers) module->as<DecoderLayerImpl>()->ShardTensorParallel(tp, sequence_parallel);
  sequence_parallel_ = sequence_parallel;
  for (const auto& module : *mtp) module->as<MtpModuleImpl>()->block->ShardTensorParallel(tp);
  tp_ = tp;
}

std::vector<TensorParallelSplit> DeepSeekV3Impl::TensorParallelPlan() const {
  std::vector<TensorParallelSplit> out = {{"embed_tokens.weight", 0}};
  if (!lm_head.is_empty()) out.push_back({"lm_head.weight", 0});
  for (size_t i = 0; i < layers->size(); ++i) {
    for (const auto& split : (*layers)[i]->as<DecoderLayerImpl>()->TensorParallelPlan()) {
      out.push_back({"layers." + std::to_string(i) + "." + split.name, split.dim});
    }
  }
  for (size_t i = 0; i < mtp->size(); ++i) {
    for (const auto& split : (*mtp)[i]->as<MtpModuleImpl>()->block->TensorParallelPlan()) {
      out.push_back({"mtp." + std::to_string(i) + ".block." + split.name, split.dim});
    }
  }
  return out;
}

void DeepSeekV3Impl::ShardExperts(const std::shared_ptr<ExpertExchange>& exchange) {
  for (auto& moe : MoeLayers()) moe->ShardExperts(exchange);
}

std::vector<MoeStats> DeepSeekV3Impl::TakeMoeStats() {
  std::vector<MoeStats> out;
  for (auto& moe : MoeLayers()) out.push_back(moe->TakeStats());
  return out;
}

void DeepSeekV3Impl::UpdateRouterBiases(const std::vector<torch::Tensor>& loads_E) {
  std::vector<MoE> moes = MoeLayers();
  DSV3_CHECK(loads_E.size() == moes.size()) << loads_E.size() << " load vectors for " << moes.size() << " MoE layers";
  for (size_t i = 0; i < moes.size(); ++i) moes[i]->UpdateBias(loads_E[i]);
}

}  // namespace dsv3::model
