#include "dsv3/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/data/pipeline.h"
#include "dsv3/dist/communicator.h"
#include "dsv3/dist/distributed_optimizer.h"
#include "dsv3/dist/expert_parallel.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/model.h"
#include "dsv3/model/torch_compat.h"
#include "dsv3/train/lr_schedule.h"

namespace dsv3::train {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// Rows [first, first + rows) of a loader batch (int32, `width` per row) as int64 on `device`.
torch::Tensor Rows(const std::vector<int32_t>& data, int64_t first, int64_t rows, int64_t width, torch::Device device) {
  return torch::from_blob(const_cast<int32_t*>(data.data()) + first * width, {rows, width}, torch::kInt)
      .to(torch::kLong)
      .to(device);
}

// Per-device peak for MFU when the config gives none: the best of a few large matmuls in
// the compute dtype, measured once at start-up.
double MeasurePeakFlops(torch::Device device, torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  const int64_t n = device.is_cuda() ? 8192 : 512;
  const auto opts = torch::TensorOptions().dtype(dtype).device(device);
  const torch::Tensor a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    const auto start = Clock::now();
    torch::Tensor c = torch::matmul(a, b);
    if (device.is_cuda()) c.cpu();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (i > 0) best = std::max(best, 2.0 * n * n * n / s);  // the first call warms up
  }
  return best;
}

// The model that runs forward/backward, from the fp32 master: same weights, lower precision,
// router biases kept in fp32 (their updates are ~1e-3).
void CopyMasterToCompute(model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute) {
  torch::NoGradGuard no_grad;
  auto src = master.named_parameters();
  for (auto& p : compute.named_parameters()) p.value().copy_(src[p.key()]);
  auto bufs = master.named_buffers();
  for (auto& b : compute.named_buffers()) b.value().copy_(bufs[b.key()]);
}

}  // namespace

struct Trainer::State {
  config::Config cfg;
  TrainerOptions opt;
  std::vector<std::unique_ptr<Reporter>> reporters;
  torch::Device device = torch::kCPU;
  torch::ScalarType compute_dtype = torch::kFloat;
  bool mixed = false;
  model::DeepSeekV3 master{nullptr}, compute{nullptr};
  // The world (data-parallel ranks; tp = pp = 1), and with expert parallelism the groups
  // that exchange tokens and that hold the same experts.
  dist::Communicator* world = nullptr;
  std::unique_ptr<dist::Communicator> self_world;
  dist::ExpertParallelGroups ep_groups;
  int dp = 1, ep = 1;
  std::unique_ptr<dist::DistributedOptimizer> optimizer;
  data::DataPipeline data;
  std::unique_ptr<ckpt::CheckpointManager> checkpoints;
  config::Estimate estimate;
  std::string output_dir, checkpoint_dir, resumed_from;
  double peak_flops = 0;
  int threads = 1;
  int64_t step = 0, tokens_seen = 0, good_steps = 0;
  double loss_scale = 65536.0;  // fp16 only: torch.cuda.amp.GradScaler's defaults
  std::optional<double> eval_loss_at_step;
  int64_t eval_step = -1, last_saved_step = -1;

  // Seconds blocked in communication, every group together.
  double CommSeconds() const {
    double total = world->blocked_seconds();
    if (ep_groups.ep) total += ep_groups.ep->blocked_seconds() + ep_groups.replicas->blocked_seconds();
    return total;
  }

  void Message(const std::string& m) {
    for (auto& r : reporters) r->OnMessage(m);
  }

  // Parameters into replica groups (dense: every rank; experts: the ranks holding the same
  // experts), then the ZeRO-sharded optimizer over them.
  void BuildOptimizer() {
    const config::TrainingConfig& t = cfg.training;
    const config::DistributedConfig& d = cfg.distributed;
    dist::ParamGroup dense{"dense", {}, world}, experts{"expert", {}, ep_groups.replicas.get()};
    auto compute_params = compute->named_parameters();
    for (const auto& p : master->named_parameters()) {
      dist::ParamEntry e;
      e.name = p.key();
      e.master = p.value();
      e.compute = compute_params[p.key()];
      // Weight decay on matrices only: not on norms' gains and biases (the router's bias is
      // a buffer, never seen by the optimizer).
      e.decay = p.value().dim() >= 2;
      if (e.name.rfind("layers.", 0) == 0) e.unit = std::stoi(e.name.substr(7, e.name.find('.', 7) - 7));
      const bool expert = ep > 1 && e.name.find(".mlp.experts.") != std::string::npos;
      if (expert) {
        const int64_t offset = master->MoeLayers().front()->expert_offset();
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
    dist::ShardingOptions sh;
    sh.zero_stage = static_cast<int>(cfg.derived.effective_zero_stage);
    const config::DeepSpeedConfig& ds = cfg.deepspeed;
    sh.overlap_grad_reduce = ds.enabled ? ds.overlap_comm : d.overlap_grad_reduce;
    sh.overlap_param_gather = d.overlap_param_gather;
    sh.offload = cfg.derived.optimizer_offload && device.is_cuda();
    // DeepSpeed's reduce_bucket_size when its section is on; else DDP's 25 Mi elements.
    sh.bucket_elements = ds.enabled ? ds.reduce_bucket_size : (int64_t{25} << 20);
    sh.grad_divisor = dp;
    optimizer = std::make_unique<dist::DistributedOptimizer>(std::move(groups), o, sh, world);
    if (sh.zero_stage == 3) {
      // Each decoder layer gathers its parameters when it runs (checkpointed under grad).
      std::vector<const model::DecoderLayerImpl*> layers;
      for (const auto& m : *compute->layers) layers.push_back(m->as<model::DecoderLayerImpl>());
      compute->SetLayerParameters(std::make_shared<dist::ShardedLayers>(optimizer.get(), layers));
    }
  }

  // The weights as HF tensors, with every expert (gathered from the expert-parallel group:
  // a collective there). Rank 0 writes them.
  std::vector<std::pair<std::string, torch::Tensor>> FullModelState() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    // ZeRO-3 holds shards: the whole fp32 master is gathered for the save.
    optimizer->WithFullMaster([&] {
      out = GatheredModelState();
      if (cfg.derived.effective_zero_stage == 3) {
        for (auto& [name, t] : out) t = t.clone();  // the gathered storage goes away after this call
      }
    });
    return out;
  }
  std::vector<std::pair<std::string, torch::Tensor>> GatheredModelState() {
    std::map<std::string, torch::Tensor> full;
    if (ep > 1) {
      torch::NoGradGuard no_grad;
      for (const auto& p : master->named_parameters()) {
        if (p.key().find(".mlp.experts.") == std::string::npos) continue;
        std::vector<int64_t> shape = p.value().sizes().vec();
        shape[0] *= ep;
        torch::Tensor all = torch::empty(shape, p.value().options());
        ep_groups.ep->AllGather(all, p.value())->Wait();
        full[p.key()] = all;
      }
    }
    return model::ToHfStateDict(*master, full);
  }

  // The checkpoint whose optimizer state loads once the optimizer exists (after the experts
  // are sharded).
  std::optional<ckpt::LoadedCheckpoint> pending_optimizer;

  void RestoreRng(const std::map<std::string, torch::Tensor>& saved) {
    model::compat::SetRngState(torch::kCPU, saved.at("rng_cpu"));
    if (device.is_cuda() && saved.count("rng_device")) model::compat::SetRngState(device, saved.at("rng_device"));
  }

  void LoadOptimizerState() {
    if (!pending_optimizer) return;
    const ckpt::LoadedCheckpoint& loaded = *pending_optimizer;
    const json& st = loaded.trainer_state;
    optimizer->LoadState(loaded.world_size, [&](int r) {
      ckpt::SafetensorsFile f = ckpt::LoadShard(loaded, r);
      if (r == opt.rank && loaded.world_size == opt.world_size) RestoreRng(f.tensors);
      return std::make_pair(std::move(f.tensors), std::move(f.metadata));
    });
    const int64_t saved_dp = st.value("data_parallel_size", int64_t{1});
    if (saved_dp != dp) {
      Message("resharded the optimizer state of " + loaded.path + " from data-parallel size " +
              std::to_string(saved_dp) + " to " + std::to_string(dp));
    }
    pending_optimizer.reset();
  }

  void Resume(const std::string& requested) {
    std::string path = requested;
    if (path == "latest") {
      std::vector<std::string> skipped;
      const auto latest = ckpt::LatestIntactCheckpoint(checkpoint_dir, &skipped);
      for (const auto& s : skipped) Message("skipping damaged checkpoint: " + s);
      if (!latest) {
        Message("--resume latest: no checkpoint in " + checkpoint_dir + "; starting from step 0");
        return;
      }
      path = *latest;
    }
    ckpt::LoadedCheckpoint loaded = ckpt::LoadCheckpoint(path);
    model::LoadHfStateDict(*master, loaded.model);
    if (mixed) CopyMasterToCompute(*master, *compute);
    const json& st = loaded.trainer_state;
    step = st.at("step").get<int64_t>();
    tokens_seen = st.at("tokens_seen").get<int64_t>();
    loss_scale = st.at("loss_scale").get<double>();
    good_steps = st.at("good_steps").get<int64_t>();
    data::SamplerState sampler;
    sampler.next_sample = st.at("sampler").at("next_sample").get<int64_t>();
    sampler.taken = st.at("sampler").at("taken").get<std::vector<int64_t>>();
    data.sampler->Restore(sampler);
    // Rank 0's RNG; LoadOptimizerState replaces it with this rank's own when the world is the
    // same (it reads every shard anyway).
    RestoreRng(loaded.state_tensors);
    resumed_from = loaded.path;
    checkpoints->Protect(loaded.path);
    pending_optimizer = std::move(loaded);
    last_saved_step = step;
  }

  std::string SaveCheckpoint(const std::string& reason) {
    const auto start = Clock::now();
    ckpt::CheckpointData d;
    d.step = step;
    d.model = FullModelState();
    if (opt.rank != 0) d.model.clear();
    d.shard = optimizer->StateTensors();
    d.shard_metadata = optimizer->StateMetadata();
    // Every rank's router biases: equal on all ranks when the loads were summed right; kept
    // per rank so that a checkpoint shows it.
    const std::vector<model::MoE> moes = master->MoeLayers();
    for (size_t i = 0; i < moes.size(); ++i) {
      d.shard.push_back({"router_bias." + std::to_string(i), moes[i]->gate->e_score_correction_bias});
    }
    d.shard.push_back({"rng_cpu", model::compat::GetRngState(torch::kCPU)});
    if (device.is_cuda()) d.shard.push_back({"rng_device", model::compat::GetRngState(device)});
    d.state_tensors.push_back({"rng_cpu", model::compat::GetRngState(torch::kCPU)});
    if (device.is_cuda()) d.state_tensors.push_back({"rng_device", model::compat::GetRngState(device)});
    const data::SamplerState sampler = data.sampler->state();
    d.trainer_state = {{"step", step},
                       {"tokens_seen", tokens_seen},
                       {"loss_scale", loss_scale},
                       {"good_steps", good_steps},
                       {"world_size", opt.world_size},
                       {"data_parallel_size", dp},
                       {"expert_parallel_size", ep},
                       {"zero_stage", cfg.derived.effective_zero_stage},
                       {"sampler", {{"next_sample", sampler.next_sample}, {"taken", sampler.taken}}}};
    d.config = config::ToJson(cfg);
    if (eval_step == step && eval_loss_at_step) d.val_loss = *eval_loss_at_step;
    std::string path;
    // A distributed save is collective, so it runs in the foreground.
    const bool async = cfg.checkpointing.async_save && reason == "interval" && opt.world_size == 1;
    if (async) {
      checkpoints->SaveAsync(std::move(d));
      path = checkpoint_dir + "/checkpoint_" + std::to_string(step);
    } else {
      path = checkpoints->Save(d);
    }
    last_saved_step = step;
    CheckpointEvent event{step, path, std::chrono::duration<double>(Clock::now() - start).count(), async, reason};
    for (auto& r : reporters) r->OnCheckpoint(event);
    return path;
  }

  EvalResult Evaluate() {
    EvalResult result;
    result.step = step;
    if (!data.validation || data.validation->windows().rows == 0) return result;
    compute->eval();
    torch::NoGradGuard no_grad;
    const data::Batch& w = data.validation->windows();
    const auto& names = data.validation->source_names();
    std::vector<double> sum(names.size(), 0.0);
    std::vector<int64_t> count(names.size(), 0);
    const int64_t chunk = cfg.validation.micro_batch_size, T = w.width - 1;
    // The chunks are dealt round-robin over the data-parallel ranks and the sums all-reduced.
    // Every rank runs the same number of forwards, because a forward can hold collectives
    // (expert all-to-alls, ZeRO-3 gathers) that must pair up: a rank with no chunk left
    // repeats the last one and discards the result.
    const int64_t chunks = (w.rows + chunk - 1) / chunk, rounds = (chunks + dp - 1) / dp;
    for (int64_t round = 0; round < rounds; ++round) {
      const int64_t c = round * dp + world->rank();
      const bool counted = c < chunks;
      const int64_t r0 = std::min(c, chunks - 1) * chunk, n = std::min(chunk, w.rows - r0);
      const torch::Tensor tokens = Rows(w.tokens, r0, n, w.width, device);
      const torch::Tensor logits = compute->Logits(tokens.narrow(1, 0, T));
      if (!counted) continue;
      const torch::Tensor losses =
          torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
                                               tokens.narrow(1, 1, T).reshape({-1}),
                                               torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
              .view({n, T})
              .sum(1)
              .to(torch::kCPU)
              .to(torch::kDouble);
      for (int64_t i = 0; i < n; ++i) {
        const size_t s = static_cast<size_t>(w.sources[static_cast<size_t>(r0 + i)]);
        sum[s] += losses[i].item<double>();
        count[s] += T;
      }
    }
    if (world->size() > 1) {
      const auto S = static_cast<int64_t>(names.size());
      torch::Tensor both = torch::zeros({2 * S}, torch::kDouble);
      for (int64_t s = 0; s < S; ++s) {
        both[s] = sum[static_cast<size_t>(s)];
        both[S + s] = static_cast<double>(count[static_cast<size_t>(s)]);
      }
      both = both.to(device);
      world->AllReduce(both)->Wait();
      both = both.to(torch::kCPU);
      for (int64_t s = 0; s < S; ++s) {
        sum[static_cast<size_t>(s)] = both[s].item<double>();
        count[static_cast<size_t>(s)] = static_cast<int64_t>(both[S + s].item<double>());
      }
    }
    double total = 0;
    int64_t tokens = 0;
    for (size_t s = 0; s < names.size(); ++s) {
      if (count[s] == 0) continue;
      result.per_source_loss.push_back({names[s], sum[s] / static_cast<double>(count[s])});
      total += sum[s];
      tokens += count[s];
    }
    result.tokens = tokens;
    result.loss = tokens > 0 ? total / static_cast<double>(tokens) : 0;
    result.perplexity = std::exp(result.loss);
    result.sample_prompt = cfg.validation.sample_prompt;
    if (cfg.validation.sample_tokens > 0 && !cfg.validation.sample_prompt.empty()) {
      std::vector<int32_t> prompt32 = data.tokenizer->Encode(cfg.validation.sample_prompt);
      model::SamplingOptions greedy;
      greedy.eos_token = data.tokenizer->eos_id();
      const std::vector<int64_t> out = compute->Generate(std::vector<int64_t>(prompt32.begin(), prompt32.end()),
                                                         cfg.validation.sample_tokens, greedy);
      result.sample = data.tokenizer->Decode(std::vector<int32_t>(out.begin(), out.end()));
    }
    compute->train();
    eval_step = step;
    eval_loss_at_step = result.loss;
    for (auto& r : reporters) r->OnEval(result);
    return result;
  }
};

Trainer::Trainer(config::Config cfg, TrainerOptions options, std::vector<std::unique_ptr<Reporter>> reporters)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.cfg = std::move(cfg);
  s.opt = std::move(options);
  s.reporters = std::move(reporters);
  config::Config& c = s.cfg;
  // What this build cannot do is refused up front, naming the field.
  if (c.training.use_fp8) {
    throw std::runtime_error("/training/use_fp8: true is not supported by this build: FP8 training needs FP8 matmul "
                             "kernels (Hopper GPUs), which dsv3 does not have yet; use use_bf16");
  }
  if (c.model.moe.use_deep_ep) {
    throw std::runtime_error("/model/moe/use_deep_ep: true needs DeepEP (a CUDA all-to-all library) that this build "
                             "does not include; set it to false");
  }
  if (c.model.mla.use_flash_mla && !c.model.mla.fallback_to_dense) {
    throw std::runtime_error("/model/mla/use_flash_mla: FlashMLA kernels are not in this build and fallback_to_dense "
                             "is false; set one of them");
  }
  const config::DistributedConfig& dc = c.distributed;
  if (dc.tensor_parallel_size != 1 || dc.pipeline_parallel_size != 1) {
    throw std::runtime_error(std::string(dc.tensor_parallel_size != 1 ? "/distributed/tensor_parallel_size: " +
                                                                            std::to_string(dc.tensor_parallel_size)
                                                                      : "/distributed/pipeline_parallel_size: " +
                                                                            std::to_string(dc.pipeline_parallel_size)) +
                             " is not supported yet: dsv3 trains data-parallel (ZeRO 0-3) and expert-parallel; set "
                             "tensor_parallel_size and pipeline_parallel_size to 1");
  }
  if (c.deepspeed.enabled && c.deepspeed.offload_param_device == "cpu" && torch::cuda::is_available()) {
    throw std::runtime_error("/deepspeed/zero_optimization/offload_param/device: \"cpu\" (parameter offload) is not "
                             "supported yet on GPUs; use \"none\" (offload_optimizer is supported)");
  }
  if (s.opt.world_size > 1 && s.opt.world == nullptr) {
    throw std::runtime_error("world size " + std::to_string(s.opt.world_size) + " needs a communicator (dist::Connect)");
  }
  if (s.opt.world != nullptr && (s.opt.world->size() != s.opt.world_size || s.opt.world->rank() != s.opt.rank)) {
    throw std::runtime_error("the communicator's rank/size do not match the trainer's rank " +
                             std::to_string(s.opt.rank) + " of " + std::to_string(s.opt.world_size));
  }
  if (dc.data_parallel_size != s.opt.world_size) {
    throw std::runtime_error("/distributed/data_parallel_size: " + std::to_string(dc.data_parallel_size) +
                             " does not match the world of " + std::to_string(s.opt.world_size) +
                             " ranks (load the config with the launcher's world size)");
  }
  if (!c.training.train_steps) throw std::runtime_error("/training/train_steps: could not be resolved");
  if (!s.opt.output_dir.empty()) {
    if (*c.checkpointing.dir == c.output_dir + "/checkpoints") c.checkpointing.dir = s.opt.output_dir + "/checkpoints";
    c.output_dir = s.opt.output_dir;
  }
  s.output_dir = c.output_dir;
  s.checkpoint_dir = *c.checkpointing.dir;

  s.threads = s.opt.threads > 0                    ? s.opt.threads
              : c.training.intra_op_threads > 0    ? static_cast<int>(c.training.intra_op_threads)
                                                   : std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(s.threads);
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  s.device = torch::cuda::is_available()
                 ? torch::Device(torch::kCUDA, static_cast<int8_t>(s.opt.local_rank % std::max<int64_t>(
                                                                       torch::cuda::device_count(), 1)))
                 : torch::Device(torch::kCPU);
  s.world = s.opt.world;
  if (s.world == nullptr) {
    s.self_world = dist::MakeSelfCommunicator();
    s.world = s.self_world.get();
  }
  s.dp = s.world->size();
  s.ep = static_cast<int>(dc.expert_parallel_size);
  s.mixed = c.training.use_bf16 || c.training.use_fp16;
  s.compute_dtype = c.training.use_bf16 ? torch::kBFloat16 : c.training.use_fp16 ? torch::kHalf : torch::kFloat;

  if (c.training.use_fp16) {
    // LibTorch 1.13 has no fp16 matmul on the CPU; find out on this device instead of failing mid-step.
    try {
      const auto half = torch::TensorOptions().dtype(torch::kHalf).device(s.device);
      (void)torch::matmul(torch::ones({2, 2}, half), torch::ones({2, 2}, half));
    } catch (const std::exception&) {
      throw std::runtime_error("/training/use_fp16: fp16 matmuls are not available on " + s.device.str() +
                               " with this LibTorch (" + model::compat::TorchVersion() +
                               "); use use_bf16 (or fp32) here, fp16 on a GPU");
    }
  }
  s.master = model::DeepSeekV3(c);
  s.master->to(s.device);
  if (s.mixed) {
    s.compute = model::DeepSeekV3(c);
    s.compute->to(s.device, s.compute_dtype);
    for (auto& moe : s.compute->MoeLayers()) {
      auto& bias = moe->gate->e_score_correction_bias;
      bias.set_data(bias.to(torch::kFloat));
    }
    CopyMasterToCompute(*s.master, *s.compute);
  } else {
    s.compute = s.master;
  }
  s.master->train();
  s.compute->train();
  if (s.opt.world_size > 1) {
    // Same initial weights everywhere (the seed above); from here on each rank draws its own
    // dropout masks and router noise.
    torch::manual_seed(static_cast<uint64_t>(c.seed) ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(s.opt.rank + 1)));
  }
  s.estimate = config::EstimateConfig(c);
  s.peak_flops = c.logging.peak_tflops > 0 ? c.logging.peak_tflops * 1e12 : MeasurePeakFlops(s.device, s.compute_dtype);

  s.data = data::OpenDataPipeline(c);
  if (s.data.prepared.files_prepared > 0) {
    s.Message("prepared the token cache: " + std::to_string(s.data.prepared.files_prepared) + " files, " +
              std::to_string(s.data.prepared.tokens) + " tokens");
  }
  for (const auto& issue : s.data.prepared.issues) s.Message("data warning: " + issue.ToString());
  ckpt::SaveGroup save_group;
  save_group.rank = s.opt.rank;
  save_group.world = s.opt.world_size;
  save_group.barrier = [world = s.world] { world->Barrier(); };
  s.checkpoints = std::make_unique<ckpt::CheckpointManager>(s.checkpoint_dir, c.checkpointing.keep_last_n,
                                                            c.checkpointing.keep_best_n, save_group);
  const std::string resume = !s.opt.resume.empty() ? s.opt.resume : c.checkpointing.resume_from.value_or("");
  if (!resume.empty()) s.Resume(resume);
  if (s.ep > 1) {
    // After the full weights are in place: each rank keeps its block of experts.
    s.ep_groups = dist::MakeExpertParallelGroups(*s.world, s.ep);
    const auto exchange = dist::MakeExpertExchange(s.ep_groups.ep.get());
    s.master->ShardExperts(exchange);
    if (s.mixed) s.compute->ShardExperts(exchange);
  }
  s.BuildOptimizer();
  s.LoadOptimizerState();
  if (!s.device.is_cuda() && (c.derived.optimizer_offload || c.deepspeed.offload_param_device == "cpu")) {
    s.Message("offload: training on the CPU, so optimizer state and parameters are in host memory already");
  }
  if (s.opt.world_size > 1) {
    std::ostringstream m;
    m << "rank " << s.opt.rank << " of " << s.opt.world_size << " (" << s.world->backend() << "): data-parallel "
      << s.dp << ", expert-parallel " << s.ep << ", ZeRO-" << c.derived.effective_zero_stage
      << "; on this rank: parameters " << s.optimizer->param_bytes() / 1048576.0 << " MiB, optimizer state "
      << s.optimizer->state_bytes() / 1048576.0 << " MiB, gradient buffers " << s.optimizer->grad_bytes() / 1048576.0
      << " MiB";
    s.Message(m.str());
  }
}

Trainer::~Trainer() = default;

TrainResult Trainer::Run() {
  State& s = *s_;
  const config::Config& c = s.cfg;
  const config::TrainingConfig& t = c.training;
  const int64_t total = *t.train_steps, gas = c.derived.gradient_accumulation_steps;
  const int64_t micro = t.micro_batch_size, global = t.global_batch_size;
  const int64_t tokens_per_step = global * t.seq_length;

  RunInfo info;
  info.experiment = c.experiment_name;
  info.parameters = s.estimate.params.total;
  info.activated_parameters = s.estimate.params.activated;
  info.start_step = s.step;
  info.train_steps = total;
  info.tokens_planned = total * tokens_per_step;
  info.tokens_per_step = tokens_per_step;
  info.gradient_accumulation_steps = gas;
  info.flops_per_token = s.estimate.flops.total;
  info.peak_flops = s.peak_flops;
  info.rank = s.opt.rank;
  info.world_size = s.opt.world_size;
  info.threads = s.threads;
  info.precision = t.use_bf16 ? "bf16 (fp32 master weights)" : t.use_fp16 ? "fp16 (fp32 master, loss scaling)" : "fp32";
  info.device = s.device.str();
  info.output_dir = s.output_dir;
  info.checkpoint_dir = s.checkpoint_dir;
  info.resumed_from = s.resumed_from;
  for (auto& r : s.reporters) r->OnStart(info);

  TrainResult result;
  int64_t run_steps = 0;
  // Sums over the steps since the last log line.
  double sum_loss = 0, sum_main = 0, sum_mtp = 0, sum_balance = 0, sum_norm = 0;
  double ms_data = 0, ms_fwd = 0, ms_bwd = 0, ms_opt = 0, ms_comm = 0;
  int64_t window_steps = 0;
  auto window_start = Clock::now();
  std::vector<torch::Tensor> load_sums;
  int64_t assignments = 0, dropped = 0;
  bool stopped_by_signal = false;

  while (s.step < total) {
    if (s.opt.max_steps >= 0 && run_steps >= s.opt.max_steps) break;
    const auto t0 = Clock::now();
    const data::Batch batch = s.data.sampler->NextBatch(global, s.opt.rank, s.opt.world_size);
    const auto t1 = Clock::now();
    s.compute->SetTrainingProgress(static_cast<double>(s.step) / static_cast<double>(total));
    const double lr = LearningRate(t, s.step);

    double step_main = 0, step_mtp = 0, step_balance = 0, fwd = 0, bwd = 0;
    const double comm_before = s.CommSeconds();
    for (int64_t m = 0; m < gas; ++m) {
      s.optimizer->BeginMicroStep(m == gas - 1);
      const auto f0 = Clock::now();
      const torch::Tensor tokens = Rows(batch.tokens, m * micro, micro, batch.width, s.device);
      torch::Tensor segments;  // data.reset_attention_mask
      if (!batch.segments.empty()) segments = Rows(batch.segments, m * micro, micro, batch.width, s.device);
      const model::ModelOutput out = s.compute->forward(tokens, segments);
      torch::Tensor loss = out.loss / static_cast<double>(gas);
      if (t.use_fp16) loss = loss * s.loss_scale;
      const auto f1 = Clock::now();
      loss.backward();
      s.optimizer->FinishBackward();  // this micro-step's reductions (overlapped with backward)
      const auto f2 = Clock::now();
      fwd += Ms(f0, f1);
      bwd += Ms(f1, f2);
      {
        // One device-to-host copy for the three loss parts (each .item() is a sync on a GPU).
        const torch::Tensor parts = torch::stack({out.main_loss.detach().to(torch::kDouble),
                                                  out.mtp_loss.detach().to(torch::kDouble),
                                                  out.balance_loss.detach().to(torch::kDouble)})
                                        .to(torch::kCPU);
        const double* v = parts.data_ptr<double>();
        step_main += v[0] / static_cast<double>(gas);
        step_mtp += v[1] / static_cast<double>(gas);
        step_balance += v[2] / static_cast<double>(gas);
      }
    }
    // One all-reduce per step carries what the ranks must agree on: the loss parts (then
    // averaged), the stop / checkpoint requests of any rank, and the MoE expert loads of the
    // global batch (so every rank makes the same aux-loss-free bias update). Counts are exact
    // in double.
    const std::vector<model::MoeStats> stats = s.compute->TakeMoeStats();
    std::vector<torch::Tensor> parts = {torch::tensor(
        {step_main, step_mtp, step_balance, stop_.load() ? 1.0 : 0.0, checkpoint_now_.exchange(false) ? 1.0 : 0.0},
        torch::kDouble)};
    double step_assignments = 0, step_dropped = 0;
    for (const auto& st : stats) {
      parts.push_back(st.tokens_per_expert_E.to(torch::kDouble));
      step_assignments += static_cast<double>(st.assignments);
      step_dropped += static_cast<double>(st.dropped);
    }
    parts.push_back(torch::tensor({step_assignments, step_dropped}, torch::kDouble));
    torch::Tensor agreed = torch::cat(parts);
    if (s.world->size() > 1) {
      agreed = agreed.to(s.device);
      s.world->AllReduce(agreed)->Wait();
      agreed = agreed.to(torch::kCPU);
    }
    const double* x = agreed.data_ptr<double>();
    step_main = x[0] / s.dp;
    step_mtp = x[1] / s.dp;
    step_balance = x[2] / s.dp;
    const bool stop_requested = x[3] > 0, checkpoint_requested = x[4] > 0;
    const auto t2 = Clock::now();
    const double step_loss = step_main + t.mtp_loss_weight * step_mtp + step_balance;
    bool apply = true;
    if (!std::isfinite(step_loss)) {
      if (!t.skip_nonfinite_steps) {
        std::ostringstream msg;
        msg << "non-finite loss (" << step_loss << ") at step " << s.step + 1
            << "; lower the learning rate, enable grad_clip, or set training.skip_nonfinite_steps";
        throw std::runtime_error(msg.str());
      }
      s.Message("skipping step " + std::to_string(s.step + 1) + ": non-finite loss");
      apply = false;
    }
    double grad_norm = 0;
    if (apply) {
      if (t.use_fp16) s.optimizer->ScaleGrads(1.0 / s.loss_scale);
      // The global norm: one all-reduce of every rank's share; nan/inf when a gradient overflowed.
      grad_norm = s.optimizer->GradNorm();
    }
    if (apply && t.use_fp16) {
      const bool finite = std::isfinite(grad_norm);
      if (!finite) {  // overflow: skip the update and halve the scale
        apply = false;
        s.loss_scale /= 2;
        s.good_steps = 0;
      } else if (++s.good_steps % 2000 == 0) {
        s.loss_scale *= 2;
      }
    }
    if (apply) {
      // torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
      if (t.grad_clip > 0 && grad_norm > 0 && t.grad_clip / (grad_norm + 1e-6) < 1.0) {
        s.optimizer->ScaleGrads(t.grad_clip / (grad_norm + 1e-6));
      }
      s.optimizer->Step(lr);  // updates, gathers the shards, refreshes the compute model
    } else {
      s.optimizer->ZeroGrad();
    }
    // Aux-loss-free balancing from the global batch's loads (summed above).
    std::vector<torch::Tensor> loads;
    int64_t at = 5;
    for (size_t i = 0; i < stats.size(); ++i) {
      const int64_t E = stats[i].tokens_per_expert_E.numel();
      loads.push_back(agreed.narrow(0, at, E));
      at += E;
      if (load_sums.size() <= i) load_sums.push_back(torch::zeros_like(loads.back()));
      load_sums[i] += loads.back();
    }
    assignments += static_cast<int64_t>(x[at]);
    dropped += static_cast<int64_t>(x[at + 1]);
    if (apply) {
      s.compute->UpdateRouterBiases(loads);
      if (s.mixed) s.master->UpdateRouterBiases(loads);
    }
    const auto t3 = Clock::now();

    ++s.step;
    ++run_steps;
    s.tokens_seen += tokens_per_step;
    result.losses.push_back(step_loss);
    sum_loss += step_loss;
    sum_main += step_main;
    sum_mtp += step_mtp;
    sum_balance += step_balance;
    sum_norm += grad_norm;
    ms_data += Ms(t0, t1);
    ms_fwd += fwd;
    ms_bwd += bwd;
    ms_opt += Ms(t2, t3);
    ms_comm += 1000.0 * (s.CommSeconds() - comm_before);
    ++window_steps;

    if (s.step % t.log_interval == 0 || s.step == total) {
      const double seconds = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double n = static_cast<double>(window_steps);
      const double tokens_per_s = static_cast<double>(window_steps * tokens_per_step / s.opt.world_size) / seconds;
      StepMetrics m;
      m.step = s.step;
      double worst = 1.0;
      std::vector<std::pair<std::string, double>> per_layer;
      for (size_t i = 0; i < load_sums.size(); ++i) {
        const torch::Tensor l = load_sums[i].to(torch::kDouble);
        const double mean = l.mean().item<double>();
        const double ratio = mean > 0 ? l.max().item<double>() / mean : 1.0;
        worst = std::max(worst, ratio);
        per_layer.push_back({"expert_load_max_over_mean_moe" + std::to_string(i), ratio});
        load_sums[i].zero_();
      }
      m.values = {{"loss", sum_loss / n},
                  {"loss_main", sum_main / n},
                  {"loss_mtp", sum_mtp / n},
                  {"loss_balance", sum_balance / n},
                  {"lr", lr},
                  {"grad_norm", sum_norm / n},
                  {"tokens_per_s", tokens_per_s},
                  {"mfu", s.peak_flops > 0 ? tokens_per_s * s.estimate.flops.total / s.peak_flops : 0.0},
                  {"step_ms", 1000.0 * seconds / n},
                  {"time_data_ms", ms_data / n},
                  {"time_forward_ms", ms_fwd / n},
                  {"time_backward_ms", ms_bwd / n},
                  {"time_optimizer_ms", ms_opt / n},
                  {"time_communication_ms", ms_comm / n},
                  {"optimizer_state_bytes", static_cast<double>(s.optimizer->state_bytes())},
                  {"parameter_bytes", static_cast<double>(s.optimizer->param_bytes())},
                  {"gradient_bytes", static_cast<double>(s.optimizer->grad_bytes())},
                  {"expert_load_max_over_mean", worst},
                  {"expert_dropped_fraction", assignments > 0 ? static_cast<double>(dropped) / assignments : 0.0},
                  {"tokens_seen", static_cast<double>(s.tokens_seen)}};
      m.values.insert(m.values.end(), per_layer.begin(), per_layer.end());
      if (t.use_fp16) m.values.push_back({"loss_scale", s.loss_scale});
      for (auto& r : s.reporters) r->OnMetrics(m);
      sum_loss = sum_main = sum_mtp = sum_balance = sum_norm = ms_data = ms_fwd = ms_bwd = ms_opt = ms_comm = 0;
      window_steps = 0;
      assignments = dropped = 0;
      window_start = Clock::now();
    }
    if (c.validation.enabled && t.eval_interval > 0 && (s.step % t.eval_interval == 0 || s.step == total)) {
      result.last_eval_loss = s.Evaluate().loss;
    }
    if (c.checkpointing.enabled) {
      if (t.save_interval > 0 && s.step % t.save_interval == 0) {
        result.last_checkpoint = s.SaveCheckpoint("interval");
      } else if (checkpoint_requested) {
        result.last_checkpoint = s.SaveCheckpoint("request");
      }
    }
    if (stop_requested) {
      stopped_by_signal = true;
      break;
    }
  }
  result.step = s.step;
  result.finished = s.step >= total;
  const bool want_final = stopped_by_signal || (result.finished && c.checkpointing.save_final) ||
                          (s.opt.max_steps >= 0 && !result.finished);
  if (c.checkpointing.enabled && want_final && s.last_saved_step != s.step) {
    result.last_checkpoint = s.SaveCheckpoint(stopped_by_signal ? "signal" : result.finished ? "final" : "stop");
  }
  const std::string background = s.checkpoints->Wait();
  if (!background.empty() && result.last_checkpoint.empty()) result.last_checkpoint = background;
  std::string message = result.finished ? "completed " + std::to_string(total) + " steps"
                                        : (stopped_by_signal ? "stopped on request" : "stopped early");
  if (!result.last_checkpoint.empty()) message += "; checkpoint " + result.last_checkpoint;
  for (auto& r : s.reporters) r->OnEnd(s.step, message);
  return result;
}

}  // namespace dsv3::train
