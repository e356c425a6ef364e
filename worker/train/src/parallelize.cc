#include "parallelize.h"

#include <map>

#include "dsv3/model/hf_state_dict.h"

namespace dsv3::train {
namespace {

// The model's ExpertExchange over an expert-parallel communicator.
class CommExchange final : public model::ExpertExchange {
 public:
  explicit CommExchange(dist::Communicator* comm) : comm_(comm) {}
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  torch::Tensor Exchange(const torch::Tensor& x, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows) override {
    int64_t rows = 0;
    for (int64_t r : recv_rows) rows += r;
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] = rows;
    torch::Tensor out = torch::empty(shape, x.options());
    comm_->AllToAll(out, x.contiguous(), recv_rows, send_rows)->Wait();
    return out;
  }
  // Counts live on the CPU; NCCL moves only device memory.
  torch::Tensor ExchangeCounts(const torch::Tensor& counts) override {
    const int64_t chunk = counts.numel() / size();
    const std::vector<int64_t> split(static_cast<size_t>(size()), chunk);
    const torch::Tensor in = comm_->backend() == "nccl" ? counts.to(torch::kCUDA) : counts.contiguous();
    torch::Tensor out = torch::empty_like(in);
    comm_->AllToAll(out, in, split, split)->Wait();
    return out.to(counts.device());
  }

 private:
  dist::Communicator* comm_;
};

// The model's TensorParallelGroup over the tensor-parallel communicator.
class CommTensorParallel final : public model::TensorParallelGroup {
 public:
  explicit CommTensorParallel(dist::Communicator* comm) : comm_(comm) {}
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  void AllReduce(torch::Tensor& t, bool max) override {
    comm_->AllReduce(t, max ? dist::ReduceOp::kMax : dist::ReduceOp::kSum)->Wait();
  }
  torch::Tensor AllGather(const torch::Tensor& t) override {
    std::vector<int64_t> shape = t.sizes().vec();
    shape.insert(shape.begin(), size());
    torch::Tensor out = torch::empty(shape, t.options());
    comm_->AllGather(out, t.contiguous())->Wait();
    return out;
  }

 private:
  dist::Communicator* comm_;
};

// The model's LayerParameters over a stage-3 optimizer: decoder layer i is unit i.
class ShardedLayers final : public model::LayerParameters {
 public:
  ShardedLayers(dist::DistributedOptimizer* optimizer, std::vector<const model::DecoderLayerImpl*> layers)
      : optimizer_(optimizer), layers_(std::move(layers)) {}
  void Acquire(model::DecoderLayerImpl& layer) override {
    if (const int unit = Unit(layer); unit >= 0) optimizer_->Acquire(unit);
  }
  void Release(model::DecoderLayerImpl& layer) override {
    if (const int unit = Unit(layer); unit >= 0) optimizer_->Release(unit);
  }

 private:
  int Unit(const model::DecoderLayerImpl& layer) const {
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (layers_[i] == &layer) return static_cast<int>(i);
    }
    return -1;  // an MTP block: always gathered
  }
  dist::DistributedOptimizer* optimizer_;
  std::vector<const model::DecoderLayerImpl*> layers_;
};

}  // namespace

void ShardExperts(const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute) {
  const auto exchange = std::make_shared<CommExchange>(groups.ep.get());
  master.ShardExperts(exchange);
  if (&compute != &master) compute.ShardExperts(exchange);
}

void ShardTensorParallel(const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master,
                         model::DeepSeekV3Impl& compute) {
  const auto tp = std::make_shared<CommTensorParallel>(groups.tp.get());
  const bool sequence_parallel = master.config().distributed.sequence_parallel;
  master.ShardTensorParallel(tp, sequence_parallel);
  if (&compute != &master) compute.ShardTensorParallel(tp, sequence_parallel);
}

namespace {

// The pipeline stage that holds parameter `name` (the first, for the embedding), with
// virtual stage k on stage k % pp.
int64_t OwnerStage(const std::string& name, const std::vector<int64_t>& stage_layers, int64_t pp) {
  if (name.rfind("embed_tokens.", 0) == 0) return 0;
  if (name.rfind("layers.", 0) != 0) return pp - 1;
  return config::StageOfLayer(stage_layers, pp, std::stoll(name.substr(7, name.find('.', 7) - 7)));
}

}  // namespace

void ShardPipeline(const config::Config& cfg, const dist::ParallelGroups& groups, model::DeepSeekV3Impl& master,
                   model::DeepSeekV3Impl& compute) {
  const std::vector<int64_t> stage_layers = config::StageLayers(cfg);
  const int64_t s = groups.coord.pp, pp = groups.grid.pp;
  model::PipelineStage stage;
  int64_t first = 0;
  for (size_t k = 0; k < stage_layers.size(); ++k) {  // this stage's model chunks, in order
    if (static_cast<int64_t>(k) % pp == s) stage.chunks.push_back({first, first + stage_layers[k]});
    first += stage_layers[k];
  }
  stage.first = s == 0;
  stage.last = s == pp - 1;
  master.SetPipelineStage(stage);
  if (&compute != &master) compute.SetPipelineStage(stage);
}

std::unique_ptr<dist::DistributedOptimizer> BuildOptimizer(const config::Config& cfg,
                                                           const dist::ParallelGroups& groups,
                                                           model::DeepSeekV3Impl& master,
                                                           model::DeepSeekV3Impl& compute, torch::Device device) {
  const config::TrainingConfig& t = cfg.training;
  const config::DistributedConfig& d = cfg.distributed;
  const config::ParallelGrid& grid = groups.grid;
  const double dp = static_cast<double>(grid.dp), tp = static_cast<double>(grid.tp);
  dist::ParamGroup dense{"dense", {}, groups.dp.get(), dp};
  dist::ParamGroup replicated{"replicated", {}, groups.replicated.get(), dp * tp};
  dist::ParamGroup experts{"expert", {}, groups.expert_replicas.get(), dp * tp};
  dist::ParamGroup embedding{"embedding", {}, groups.embedding.get(), dp};
  // Sequence parallelism: the decoder layers' norms see T/tp positions per rank, so their
  // gradients are partial sums over the tensor-parallel ranks (summed, not averaged).
  dist::ParamGroup sequence_norms{"sequence_norms", {}, groups.replicated.get(), dp};
  const bool sequence_parallel = grid.tp > 1 && cfg.distributed.sequence_parallel;
  const model::PipelineStage& stage = master.pipeline_stage();
  const bool two_embeddings = grid.pp > 1 && (stage.first || stage.last) && master.Holds("embed_tokens.weight") &&
                              (!master.mtp->is_empty() || master.lm_head.is_empty());
  std::map<std::string, int64_t> split_dim;
  for (const auto& split : master.TensorParallelPlan()) split_dim[split.name] = split.dim;
  auto compute_params = compute.named_parameters();
  for (const auto& p : master.HeldParameters()) {
    dist::ParamEntry e;
    e.name = p.key();
    e.master = p.value();
    e.compute = compute_params[p.key()];
    // Weight decay on matrices only: not on norms' gains and biases (the router's bias is
    // a buffer, never seen by the optimizer).
    e.decay = p.value().dim() >= 2;
    if (e.name.rfind("layers.", 0) == 0) e.unit = std::stoi(e.name.substr(7, e.name.find('.', 7) - 7));
    const bool expert = grid.ep > 1 && e.name.find(".mlp.experts.") != std::string::npos;
    const auto split = split_dim.find(e.name);
    const bool tp_block = grid.tp > 1 && split != split_dim.end();
    if (expert) {  // a block of dim 0 (experts)
      e.full_shape = e.master.sizes().vec();
      e.full_shape[0] *= grid.ep;
      e.shard_start = master.MoeLayers().front()->expert_offset();
    } else if (tp_block) {
      e.full_shape = e.master.sizes().vec();
      e.shard_dim = split->second;
      e.full_shape[static_cast<size_t>(e.shard_dim)] *= grid.tp;
      e.shard_start = groups.coord.tp * e.master.size(e.shard_dim);
    }
    const bool sequence_norm = sequence_parallel && e.name.rfind("layers.", 0) == 0 &&
                               (e.name.find(".input_layernorm.") != std::string::npos ||
                                e.name.find(".post_attention_layernorm.") != std::string::npos);
    dist::ParamGroup& group = expert                                       ? experts
                              : two_embeddings && e.name == "embed_tokens.weight" ? embedding
                              : sequence_norm                               ? sequence_norms
                              : (tp_block || grid.tp == 1)                  ? dense
                                                                            : replicated;
    group.params.push_back(std::move(e));
  }
  std::vector<dist::ParamGroup> param_groups;
  for (dist::ParamGroup* g : {&dense, &replicated, &experts, &embedding, &sequence_norms}) {
    if (!g->params.empty()) param_groups.push_back(std::move(*g));
  }
  dist::OptimizerOptions o;
  o.type = t.optimizer;
  o.beta1 = t.adam_beta1;
  o.beta2 = t.adam_beta2;
  o.eps = t.adam_eps;
  o.weight_decay = t.weight_decay;
  o.fused = cfg.model.fused_kernels;  // false: the op-by-op update, the whole reference path
  dist::ShardingOptions sh;
  sh.zero_stage = static_cast<int>(cfg.derived.effective_zero_stage);
  const config::DeepSpeedConfig& ds = cfg.deepspeed;
  sh.overlap_grad_reduce = ds.enabled ? ds.overlap_comm : d.overlap_grad_reduce;
  sh.overlap_param_gather = d.overlap_param_gather;
  sh.offload = cfg.derived.optimizer_offload && device.is_cuda();
  // DeepSpeed's reduce_bucket_size when its section is on; else DDP's 25 Mi elements.
  sh.bucket_elements = ds.enabled ? ds.reduce_bucket_size : (int64_t{25} << 20);
  auto optimizer = std::make_unique<dist::DistributedOptimizer>(std::move(param_groups), o, sh, groups.world);
  if (sh.zero_stage == 3) {
    // Each decoder layer gathers its parameters when it runs (checkpointed under grad).
    std::vector<const model::DecoderLayerImpl*> layers;
    for (const auto& m : *compute.layers) layers.push_back(m->as<model::DecoderLayerImpl>());
    compute.SetLayerParameters(std::make_shared<ShardedLayers>(optimizer.get(), layers));
  }
  return optimizer;
}

std::vector<std::pair<std::string, torch::Tensor>> GatherHfState(const dist::ParallelGroups& groups,
                                                                 model::DeepSeekV3Impl& master) {
  const config::ParallelGrid& grid = groups.grid;
  std::map<std::string, int64_t> split_dim;
  if (grid.tp > 1) {
    for (const auto& split : master.TensorParallelPlan()) split_dim[split.name] = split.dim;
  }
  std::map<std::string, torch::Tensor> full;
  torch::NoGradGuard no_grad;
  // Every rank walks the parameters in the same order, so the gathers pair up.
  for (const auto& p : master.HeldParameters()) {
    const torch::Tensor& local = p.value();
    if (grid.ep > 1 && p.key().find(".mlp.experts.") != std::string::npos) {
      std::vector<int64_t> shape = local.sizes().vec();
      shape[0] *= grid.ep;
      torch::Tensor all = torch::empty(shape, local.options());
      groups.ep->AllGather(all, local.contiguous())->Wait();
      full[p.key()] = all;
    } else if (const auto split = split_dim.find(p.key()); split != split_dim.end()) {
      // tp x block, then the blocks side by side along the split dim.
      std::vector<int64_t> shape = local.sizes().vec();
      shape.insert(shape.begin(), grid.tp);
      torch::Tensor blocks = torch::empty(shape, local.options());
      groups.tp->AllGather(blocks, local.contiguous())->Wait();
      full[p.key()] = torch::cat(blocks.unbind(0), split->second);
    }
  }
  if (grid.pp > 1 && groups.coord.dp == 0 && groups.coord.tp == 0) {
    // The pipeline of rank 0: each later stage sends its (gathered) parameters to stage 0,
    // a shape header first, in the order of the full model's parameters.
    constexpr int64_t kMaxDims = 8;
    const std::vector<int64_t> stage_layers = config::StageLayers(master.config());
    const int64_t me = groups.coord.pp;
    for (const auto& p : master.named_parameters()) {
      const int64_t owner = OwnerStage(p.key(), stage_layers, grid.pp);
      if (owner == 0 || (me != 0 && me != owner)) continue;
      torch::Tensor header = torch::zeros({kMaxDims + 1}, torch::kLong);
      if (me == owner) {
        const auto it = full.find(p.key());
        const torch::Tensor t = (it != full.end() ? it->second : p.value()).contiguous();
        header[0] = t.dim();
        for (int64_t d = 0; d < t.dim(); ++d) header[d + 1] = t.size(d);
        groups.pp->Send(header.to(t.device()), 0)->Wait();
        groups.pp->Send(t, 0)->Wait();
      } else {
        const torch::Device device = p.value().device();
        torch::Tensor h = header.to(device);
        groups.pp->Recv(h, static_cast<int>(owner))->Wait();
        h = h.to(torch::kCPU);
        std::vector<int64_t> shape;
        for (int64_t d = 0; d < h[0].item<int64_t>(); ++d) shape.push_back(h[d + 1].item<int64_t>());
        torch::Tensor t = torch::empty(shape, p.value().options());
        groups.pp->Recv(t, static_cast<int>(owner))->Wait();
        full[p.key()] = t;
      }
    }
  }
  return model::ToHfStateDict(master, full);
}

}  // namespace dsv3::train
