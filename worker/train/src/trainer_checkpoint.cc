// Trainer checkpoints: resume (model, trainer and sampler state, RNG, then the optimizer
// state once the optimizer exists) and save (collective across ranks; async for one rank).
#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/config_io.h"
#include "dsv3/dist/faults.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/torch_compat.h"
#include "dsv3/train/hf_weights.h"
#include "trainer_state.h"

namespace dsv3::train {

using nlohmann::json;

// The weights as HF tensors, with every expert (gathered from the expert-parallel group:
// a collective there). Rank 0 writes them.
std::vector<std::pair<std::string, torch::Tensor>> Trainer::State::FullModelState() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  // ZeRO-3 holds shards: the whole fp32 master is gathered for the save.
  optimizer->WithFullMaster([&] {
    out = GatherHfState(groups, *master);
    if (cfg.derived.effective_zero_stage == 3) {
      for (auto& [name, t] : out) t = t.clone();  // the gathered storage goes away after this call
    }
  });
  return out;
}

void Trainer::State::RestoreRng(const std::map<std::string, torch::Tensor>& saved) {
  model::compat::SetRngState(torch::kCPU, saved.at("rng_cpu"));
  if (device.is_cuda() && saved.count("rng_device")) model::compat::SetRngState(device, saved.at("rng_device"));
}

void Trainer::State::LoadOptimizerState() {
  if (!pending_optimizer) return;
  const ckpt::LoadedCheckpoint& loaded = *pending_optimizer;
  const json& st = loaded.trainer_state;
  const bool same_layout = loaded.world_size == opt.world_size && st.value("tensor_parallel_size", int64_t{1}) == tp;
  optimizer->LoadState(loaded.world_size, [&](int r) {
    ckpt::SafetensorsFile f = ckpt::LoadShard(loaded, r);
    if (r == opt.rank && same_layout) RestoreRng(f.tensors);
    return std::make_pair(std::move(f.tensors), std::move(f.metadata));
  });
  const int64_t saved_dp = st.value("data_parallel_size", int64_t{1}), saved_tp = st.value("tensor_parallel_size", int64_t{1});
  const int64_t saved_ep = st.value("expert_parallel_size", int64_t{1});
  if (saved_dp != dp || saved_tp != tp || saved_ep != ep) {
    Message("resharded the optimizer state of " + loaded.path + " from data-parallel " + std::to_string(saved_dp) +
            " x tensor-parallel " + std::to_string(saved_tp) + " (expert-parallel " + std::to_string(saved_ep) +
            ") to " + std::to_string(dp) + " x " + std::to_string(tp) + " (" + std::to_string(ep) + ")");
  }
  pending_optimizer.reset();
}

void Trainer::State::Resume(const std::string& requested) {
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
  scaler.scale = st.at("loss_scale").get<double>();
  scaler.good_steps = st.at("good_steps").get<int64_t>();
  data::SamplerState sampler;
  sampler.next_sample = st.at("sampler").at("next_sample").get<int64_t>();
  sampler.taken = st.at("sampler").at("taken").get<std::vector<int64_t>>();
  data.sampler->Restore(sampler);
  // Rank 0's RNG; LoadOptimizerState replaces it with this rank's own when the world is the
  // same (it reads every shard anyway).
  RestoreRng(loaded.state_tensors);
  resumed_from = loaded.path;
  weights_from = loaded.manifest.value("weights_from", std::string());
  checkpoints->Protect(loaded.path);
  pending_optimizer = std::move(loaded);
  last_saved_step = step;
}

void Trainer::State::InitFromHf(const std::string& dir) {
  ckpt::HfCheckpoint hf(dir);
  ModelShare share;
  share.stage = groups.coord.pp;
  share.pp = groups.grid.pp;
  share.ep_index = groups.coord.ep;
  share.ep = groups.grid.ep;
  const HfLoadReport r = LoadHfWeights(cfg, share, *master, hf);
  if (mixed) CopyMasterToCompute(*master, *compute);
  weights_from = dir;
  char line[400];
  std::snprintf(line, sizeof(line),
                "initial weights from %s: %lld tensors read (%lld held by other ranks or shared), %.1f of %.1f MiB "
                "in %.2f s (%.0f MiB/s)",
                dir.c_str(), static_cast<long long>(r.tensors_read), static_cast<long long>(r.tensors_skipped),
                r.bytes_read / 1048576.0, r.total_bytes / 1048576.0, r.seconds,
                r.seconds > 0 ? r.bytes_read / 1048576.0 / r.seconds : 0.0);
  Message(line);
  if (!r.skipped_mtp_layers.empty()) {
    std::string layers;
    for (int64_t l : r.skipped_mtp_layers) layers += (layers.empty() ? "" : ", ") + std::to_string(l);
    Message("skipped the HF MTP layer(s) " + layers + ": this config does not predict that many tokens "
            "(training.use_mtp, num_predict_tokens)");
  }
}

namespace {

// DSV3_FAULT's corrupt_checkpoint: inverts 64 bytes in the middle of `file`, so that its
// checksum no longer matches the manifest.
std::string DamageFile(const std::string& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  if (!f || size < 128) return "could not damage " + file;
  char bytes[64];
  f.seekg(size / 2);
  f.read(bytes, sizeof(bytes));
  for (char& b : bytes) b = static_cast<char>(~b);
  f.seekp(size / 2);
  f.write(bytes, sizeof(bytes));
  return f ? "damaged " + file : "could not damage " + file;
}

}  // namespace

std::string Trainer::State::SaveCheckpoint(const std::string& reason) {
  const auto start = Clock::now();
  if (opt.world_size > 1 && optimizer->replica_groups() > 0) {
    // Replicated weights must be bit-identical across their replicas; say so with the save.
    const std::vector<std::string> diverged = optimizer->DivergedReplicaGroups();
    if (diverged.empty()) {
      Message("step " + std::to_string(step) + ": the replicas of every replicated weight agree (" +
              std::to_string(optimizer->replica_groups()) + " groups checked)");
    } else {
      std::string names;
      for (const auto& n : diverged) names += (names.empty() ? "" : ", ") + n;
      Message("warning: step " + std::to_string(step) + ": replicated weights differ across the ranks of group(s) " +
              names + " (a bug in their gradient reduction: please report it with the config)");
    }
  }
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
                     {"loss_scale", scaler.scale},
                     {"good_steps", scaler.good_steps},
                     {"world_size", opt.world_size},
                     {"data_parallel_size", dp},
                     {"tensor_parallel_size", tp},
                     {"pipeline_parallel_size", groups.grid.pp},
                     {"expert_parallel_size", ep},
                     {"zero_stage", cfg.derived.effective_zero_stage},
                     {"sampler", {{"next_sample", sampler.next_sample}, {"taken", sampler.taken}}}};
  d.config = config::ToJson(cfg);
  d.weights_from = weights_from;
  if (eval_step == step && eval_loss_at_step) d.val_loss = *eval_loss_at_step;
  std::string path;
  // A distributed save is collective, so it runs in the foreground.
  const bool async = cfg.checkpointing.async_save && reason == "interval" && opt.world_size == 1;
  if (async) {
    checkpoints->SaveAsync(std::move(d));
    path = config::CheckpointPath(checkpoint_dir, step);
  } else {
    path = checkpoints->Save(d);
  }
  if (dist::Faults::Get().CorruptCheckpoint(step)) {
    if (async) checkpoints->Wait();
    Message("DSV3_FAULT: " + DamageFile(path + "/shard_" + std::to_string(opt.rank) + ".safetensors"));
  }
  last_saved_step = step;
  CheckpointEvent event{step, path, std::chrono::duration<double>(Clock::now() - start).count(), async, reason};
  for (auto& r : reporters) r->OnCheckpoint(event);
  return path;
}


}  // namespace dsv3::train
