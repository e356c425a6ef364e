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

void ShardExperts(const ParallelLayout& layout, model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute) {
  const auto exchange = std::make_shared<CommExchange>(layout.ep_group);
  master.ShardExperts(exchange);
  if (&compute != &master) compute.ShardExperts(exchange);
}

std::unique_ptr<dist::DistributedOptimizer> BuildOptimizer(const config::Config& cfg, const ParallelLayout& layout,
                                                           model::DeepSeekV3Impl& master,
                                                           model::DeepSeekV3Impl& compute, torch::Device device) {
  const config::TrainingConfig& t = cfg.training;
  const config::DistributedConfig& d = cfg.distributed;
  dist::ParamGroup dense{"dense", {}, layout.world}, experts{"expert", {}, layout.expert_replicas};
  auto compute_params = compute.named_parameters();
  for (const auto& p : master.named_parameters()) {
    dist::ParamEntry e;
    e.name = p.key();
    e.master = p.value();
    e.compute = compute_params[p.key()];
    // Weight decay on matrices only: not on norms' gains and biases (the router's bias is
    // a buffer, never seen by the optimizer).
    e.decay = p.value().dim() >= 2;
    if (e.name.rfind("layers.", 0) == 0) e.unit = std::stoi(e.name.substr(7, e.name.find('.', 7) - 7));
    const bool expert = layout.ep > 1 && e.name.find(".mlp.experts.") != std::string::npos;
    if (expert) {
      const int64_t offset = master.MoeLayers().front()->expert_offset();
      e.full_offset = offset * (e.master.numel() / e.master.size(0));
    }
    (expert ? experts : dense).params.push_back(std::move(e));
  }
  std::vector<dist::ParamGroup> groups;
  groups.push_back(std::move(dense));
  if (!experts.params.empty()) groups.push_back(std::move(experts));
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
  sh.grad_divisor = layout.dp;
  auto optimizer = std::make_unique<dist::DistributedOptimizer>(std::move(groups), o, sh, layout.world);
  if (sh.zero_stage == 3) {
    // Each decoder layer gathers its parameters when it runs (checkpointed under grad).
    std::vector<const model::DecoderLayerImpl*> layers;
    for (const auto& m : *compute.layers) layers.push_back(m->as<model::DecoderLayerImpl>());
    compute.SetLayerParameters(std::make_shared<ShardedLayers>(optimizer.get(), layers));
  }
  return optimizer;
}

std::vector<std::pair<std::string, torch::Tensor>> GatherHfState(const ParallelLayout& layout,
                                                                 model::DeepSeekV3Impl& master) {
  std::map<std::string, torch::Tensor> full;
  if (layout.ep > 1) {
    torch::NoGradGuard no_grad;
    for (const auto& p : master.named_parameters()) {
      if (p.key().find(".mlp.experts.") == std::string::npos) continue;
      std::vector<int64_t> shape = p.value().sizes().vec();
      shape[0] *= layout.ep;
      torch::Tensor all = torch::empty(shape, p.value().options());
      layout.ep_group->AllGather(all, p.value())->Wait();
      full[p.key()] = all;
    }
  }
  return model::ToHfStateDict(master, full);
}

}  // namespace dsv3::train
