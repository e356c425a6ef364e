// Training throughput with its step-time breakdown, and checkpoint save/load speed against
// the raw disk write speed measured in the same run. Prints figures; asserts nothing.
//
//   train_bench --config configs/train_config_nano.json [--steps 20] [--batch B] [--seq T]
//               [--threads N] [--fused 1|0] [--bf16 1|0] [--no-checkpoint] [--dir /tmp/dsv3_train_bench]
//
// --fused sets model.fused_kernels (default: the config's). --no-checkpoint skips the
// checkpoint figures. The last line is one JSON object with the figures (bench/peer/compare.sh
// reads it).
//
// The config's model and optimizer are used as they are; its data is replaced by a small
// synthetic corpus with the byte tokenizer, so any config runs without prepared data.
#include <fcntl.h>
#include <sys/resource.h>
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
#include "dsv3/kernels/kernels.h"
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

// Peak memory of the training device (CUDA's caching allocator), or -1 on the CPU.
double PeakDeviceMiB() {
  if (!torch::cuda::is_available()) return -1;
  const auto peak = dsv3::kernels::PeakDeviceBytes(torch::Device(torch::kCUDA, 0));
  return peak ? static_cast<double>(*peak) / (1 << 20) : -1;
}

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
  int steps = 20, threads = 0, fused = -1, bf16 = 0;
  int64_t batch = 0, seq = 0;
  bool checkpoint = true;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--no-checkpoint") {
      checkpoint = false;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << "missing value for " << k << "\n";
      return 2;
    }
    const std::string v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--fused") fused = std::stoi(v);
    else if (k == "--bf16") bf16 = std::stoi(v);
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
  if (fused >= 0) cfg["model"]["fused_kernels"] = fused == 1;
  cfg["training"]["use_bf16"] = bf16 == 1;
  const dsv3::config::LoadResult r = dsv3::config::LoadConfigText(cfg.dump());
  if (!r.ok()) {
    std::cerr << r.errors[0].ToString() << "\n";
    return 1;
  }
  const auto& t = r.config.training;
  dsv3::train::TrainerOptions options;
  options.max_steps = steps;
  options.threads = threads;
  auto capture = std::make_unique<Capture>();
  Capture* metrics = capture.get();
  std::vector<std::unique_ptr<dsv3::train::Reporter>> reporters;
  reporters.push_back(std::move(capture));
  dsv3::train::Trainer trainer(r.config, options, std::move(reporters));
  trainer.Run();
  const auto& m = metrics->last;
  torch::manual_seed(0);
  dsv3::model::DeepSeekV3 model(r.config);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("train_bench %s: batch %lld x seq %lld (%lld accumulation steps), %s, %d threads, OpenBLAS %s, "
              "fused_kernels %s\n",
              config_path.c_str(), static_cast<long long>(t.global_batch_size), static_cast<long long>(t.seq_length),
              static_cast<long long>(r.config.derived.gradient_accumulation_steps), bf16 == 1 ? "bf16" : "fp32",
              torch::get_num_threads(),
              std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "auto",
              r.config.model.fused_kernels ? "on" : "off");
  std::printf("  %.0f tokens/s, %.0f ms/step: data %.1f, forward %.0f, backward %.0f, optimizer %.0f ms; MFU %.1f%%\n",
              m.Get("tokens_per_s"), m.Get("step_ms"), m.Get("time_data_ms"), m.Get("time_forward_ms"),
              m.Get("time_backward_ms"), m.Get("time_optimizer_ms"), 100 * m.Get("mfu"));
  const json figures = {{"tokens_per_s", m.Get("tokens_per_s")}, {"ms_per_step", m.Get("step_ms")},
                        {"forward_ms", m.Get("time_forward_ms")}, {"backward_ms", m.Get("time_backward_ms")},
                        {"optimizer_ms", m.Get("time_optimizer_ms")}, {"parameters", model->NumParameters()},
                        {"peak_rss_mib", static_cast<double>(usage.ru_maxrss) / 1024.0},
                        {"fused_kernels", r.config.model.fused_kernels}, {"loss", m.Get("loss")},
                        {"mfu", m.Get("mfu")}, {"bf16", bf16 == 1}, {"device", torch::cuda::is_available() ? "cuda" : "cpu"},
                        {"peak_device_mib", PeakDeviceMiB()}};
  if (!checkpoint) {
    std::printf("%s\n", figures.dump().c_str());
    fs::remove_all(dir);
    return 0;
  }

  // Checkpoint speed on this model's weights (+ Adam state in the rank's shard).
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
  std::printf("%s\n", figures.dump().c_str());
  fs::remove_all(dir);
  return 0;
}
