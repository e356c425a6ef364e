// Training throughput with its step-time breakdown, and checkpoint save/load speed against
// the raw disk write speed measured in the same run. Prints figures; asserts nothing.
//
//   train_bench --config configs/train_config_nano.json [--steps 20] [--batch B] [--seq T]
//               [--threads N] [--dir /tmp/dsv3_train_bench]
//
// The config's model and optimizer are used as they are; its data is replaced by a small
// synthetic corpus with the byte tokenizer, so any config runs without prepared data.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "bench_config.h"
#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/threads.h"
#include "dsv3/data/synth.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/model.h"
#include "dsv3/train/trainer.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Capture final : dsv3::train::Reporter {
  dsv3::train::StepMetrics last;
  void OnMetrics(const dsv3::train::StepMetrics& m) override { last = m; }
};

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

double RawWriteMBps(const std::string& path, size_t bytes) {
  std::vector<char> buf(bytes, 'x');
  const auto start = Clock::now();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t done = 0;
  while (done < bytes) done += static_cast<size_t>(write(fd, buf.data() + done, bytes - done));
  fsync(fd);
  close(fd);
  const double s = Seconds(start);
  fs::remove(path);
  return bytes / 1e6 / s;
}

}  // namespace

int main(int argc, char** argv) {
  dsv3::PreferFastOpenBlasKernels(argv);  // as dsv3-worker does
  dsv3::LimitOpenBlasThreads(1);
  std::string config_path = "configs/train_config_nano.json", dir = "/tmp/dsv3_train_bench";
  int steps = 20, threads = 0;
  int64_t batch = 0, seq = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--dir") dir = v;
    else {
      std::cerr << "unknown argument " << k << "\n";
      return 2;
    }
  }
  fs::remove_all(dir);
  dsv3::data::SynthesizeDolma(dir + "/corpus", 300, 1);
  const dsv3::config::LoadResult base = dsv3::config::LoadConfigFile(config_path);
  if (!base.ok()) {
    std::cerr << base.errors[0].ToString() << "\n";
    return 1;
  }
  json cfg = dsv3::bench::SyntheticDataConfig(base.config, dir + "/corpus", dir + "/cache", 1000000, steps);
  cfg["output_dir"] = dir + "/out";
  cfg["checkpointing"]["dir"] = dir + "/out/checkpoints";
  cfg["distributed"]["data_parallel_size"] = 1;
  if (seq > 0) cfg["training"]["seq_length"] = seq;
  if (batch > 0) {
    cfg["training"]["micro_batch_size"] = batch;
    cfg["training"]["global_batch_size"] = batch;
  }
  cfg["checkpointing"]["enabled"] = false;
  const dsv3::config::LoadResult r = dsv3::config::LoadConfigText(cfg.dump());
  if (!r.ok()) {
    std::cerr << r.errors[0].ToString() << "\n";
    return 1;
  }
  const auto& t = r.config.training;
  dsv3::train::TrainerOptions options;
  options.max_steps = steps + 1;
  options.threads = threads;
  auto capture = std::make_unique<Capture>();
  Capture* metrics = capture.get();
  std::vector<std::unique_ptr<dsv3::train::Reporter>> reporters;
  reporters.push_back(std::move(capture));
  dsv3::train::Trainer trainer(r.config, options, std::move(reporters));
  trainer.Run();
  const auto& m = metrics->last;
  std::printf("train_bench %s: batch %lld x seq %lld (%lld accumulation steps), fp32, %d threads, OpenBLAS %s\n",
              config_path.c_str(), static_cast<long long>(t.global_batch_size), static_cast<long long>(t.seq_length),
              static_cast<long long>(r.config.derived.gradient_accumulation_steps), torch::get_num_threads(),
              std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "auto");
  std::printf("  %.0f tokens/s, %.0f ms/step: data %.1f, forward %.0f, backward %.0f, optimizer %.0f ms; MFU %.1f%%\n",
              m.Get("tokens_per_s"), m.Get("step_ms"), m.Get("time_data_ms"), m.Get("time_forward_ms"),
              m.Get("time_backward_ms"), m.Get("time_optimizer_ms"), 100 * m.Get("mfu"));

  // Checkpoint speed on this model's weights (+ Adam state in the rank's shard).
  torch::manual_seed(0);
  dsv3::model::DeepSeekV3 model(r.config);
  dsv3::ckpt::CheckpointData d;
  d.step = 1;
  d.model = dsv3::model::ToHfStateDict(*model);
  d.shard = {{"dense.exp_avg", torch::zeros({model->NumParameters()})},  // Adam's m and v, fp32
             {"dense.exp_avg_sq", torch::zeros({model->NumParameters()})}};
  d.state_tensors = {{"rng_cpu", torch::zeros({8}, torch::kByte)}};
  int64_t bytes = model->NumParameters() * 8;
  for (const auto& [n, w] : d.model) bytes += w.numel() * w.element_size();
  dsv3::ckpt::CheckpointManager manager(dir + "/ckpt", 0, 0);
  auto start = Clock::now();
  const std::string path = manager.Save(d);
  const double save_s = Seconds(start);
  start = Clock::now();
  dsv3::ckpt::LoadCheckpoint(path);  // verifies every checksum, then reads
  const double load_s = Seconds(start);
  std::printf("  checkpoint of %.1f MB: save %.0f MB/s (%.2f s), verify + load %.0f MB/s (%.2f s); raw write + fsync "
              "%.0f MB/s\n",
              bytes / 1e6, bytes / 1e6 / save_s, save_s, bytes / 1e6 / load_s, load_s,
              RawWriteMBps(dir + "/raw.bin", static_cast<size_t>(bytes)));
  fs::remove_all(dir);
  return 0;
}
