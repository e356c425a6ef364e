// Parallel scaling on this machine: the same config and global batch trained by 1 rank and
// by N dsv3-worker processes over Gloo on loopback (started as torchrun starts them), with
// each ZeRO stage and each tensor-/expert-parallel size asked for (the rest of the ranks
// data-parallel). Prints tokens/s, the step time spent blocked in communication, the bytes
// rank 0 sends per step in each process group, and the state each rank holds. Asserts
// nothing.
//
//   dist_bench [--config configs/train_config_nano.json]... [--steps 12] [--ranks 2]
//              [--stages 0,1,2,3] [--tp 1,2] [--pp 1,2] [--ep 1,2] [--schedule 1f1b] [--virtual V]
//              [--batch GLOBAL] [--micro M] [--seq T] [--dir /tmp/dsv3_dist_bench]
//
// With pipeline stages it also prints the bubble: the share of rank 0's step spent waiting
// on the other stages, beside the ideal (p - 1) / (v m + p - 1) of m micro-batches and v
// model chunks per stage (--virtual, with --schedule interleaved_1f1b).
//
// Cores are split evenly: 1 rank gets every core as intra-op threads, N ranks get cores / N
// each. The data is replaced by a synthetic corpus (byte tokenizer).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_config.h"
#include "dsv3/common/config_io.h"
#include "dsv3/data/synth.h"
#include "worker_process.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;


struct Figures {
  bool ok = false;
  double tokens_per_s = 0;  // the job's, every rank together
  double step_ms = 0, comm_ms = 0, pipeline_wait_ms = 0, optimizer_mb = 0, param_mb = 0, grad_mb = 0;
  std::string bytes_per_group;  // rank 0's bytes sent per step, by process group
  std::string stage_ms;         // each pipeline stage's compute per step
};

// One job: `ranks` processes, the last logged window (the steps after the first).
Figures RunJob(const json& cfg, const fs::path& dir, const std::string& name, int ranks, int threads) {
  const fs::path out = dir / name;
  fs::remove_all(out);
  json c = cfg;
  c["output_dir"] = out.string();
  c["checkpointing"]["dir"] = (out / "checkpoints").string();
  const fs::path path = dir / (name + ".json");
  std::ofstream(path) << c.dump(2);
  const int port = dsv3::test::FreeLoopbackPort();
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    const std::string rs = std::to_string(r);
    std::map<std::string, std::string> env;
    if (ranks > 1) {
      env = {{"RANK", rs}, {"WORLD_SIZE", std::to_string(ranks)}, {"LOCAL_RANK", rs},
             {"LOCAL_WORLD_SIZE", std::to_string(ranks)}, {"MASTER_ADDR", "127.0.0.1"},
             {"MASTER_PORT", std::to_string(port)}};
    }
    pids.push_back(dsv3::test::StartWorker(dir, {"--config", path.string(), "--threads", std::to_string(threads)},
                                           out.string() + ".rank" + rs + ".log", env));
  }
  Figures f;
  f.ok = true;
  for (int r = 0; r < ranks; ++r) {
    if (dsv3::test::WaitExit(pids[static_cast<size_t>(r)], 3600) != 0) {
      std::ifstream log(out.string() + ".rank" + std::to_string(r) + ".log");
      std::cerr << name << " rank " << r << " failed:\n" << log.rdbuf() << "\n";
      f.ok = false;
    }
  }
  const auto train = dsv3::test::Events(out / "metrics.jsonl", "train");
  if (!f.ok || train.size() < 2) {
    f.ok = false;
    return f;
  }
  const json& m = train.back();
  f.tokens_per_s = m["tokens_per_s"].get<double>() * ranks;  // the metric is per rank
  f.step_ms = m["step_ms"];
  f.comm_ms = m["time_communication_ms"];
  f.pipeline_wait_ms = m.value("time_pipeline_wait_ms", 0.0);
  for (const auto& [key, value] : m.items()) {
    if (key.rfind("time_stage", 0) == 0) {
      char figure[64];
      std::snprintf(figure, sizeof(figure), "%s %.0f ms", key.substr(5, key.size() - 8).c_str(), value.get<double>());
      f.stage_ms += (f.stage_ms.empty() ? "" : ", ") + std::string(figure);
    }
    if (key.rfind("comm_bytes_", 0) != 0) continue;
    char figure[64];
    std::snprintf(figure, sizeof(figure), "%s %.2f MiB", key.substr(11).c_str(), value.get<double>() / 1048576.0);
    f.bytes_per_group += (f.bytes_per_group.empty() ? "" : ", ") + std::string(figure);
  }
  f.optimizer_mb = m["optimizer_state_bytes"].get<double>() / 1048576.0;
  f.param_mb = m["parameter_bytes"].get<double>() / 1048576.0;
  f.grad_mb = m["gradient_bytes"].get<double>() / 1048576.0;
  return f;
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoi(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> configs;
  std::string dir = "/tmp/dsv3_dist_bench";
  int steps = 12, ranks = 2;
  int64_t batch = 0, seq = 0;
  std::vector<int> stages = {0, 1, 2, 3}, tps = {1}, pps = {1}, eps = {1};
  std::string schedule = "1f1b";
  int64_t micro_override = 0, virtual_stages = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") configs.push_back(v);
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--ranks") ranks = std::stoi(v);
    else if (k == "--stages") stages = ParseList(v);
    else if (k == "--tp") tps = ParseList(v);
    else if (k == "--pp") pps = ParseList(v);
    else if (k == "--schedule") schedule = v;
    else if (k == "--virtual") virtual_stages = std::stoll(v);
    else if (k == "--micro") micro_override = std::stoll(v);
    else if (k == "--ep") eps = ParseList(v);
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--dir") dir = v;
    else {
      std::cerr << "unknown argument " << k << "\n";
      return 2;
    }
  }
  if (configs.empty()) configs.push_back("configs/train_config_nano.json");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  dsv3::data::SynthesizeDolma(dir + "/corpus", 300, 1);
  std::printf("dist_bench: %d cores; 1 rank x %d threads vs %d ranks x %d threads (Gloo, loopback); %d steps, the "
              "last %d timed\n",
              cores, cores, ranks, std::max(1, cores / ranks), steps, steps / 2);
  for (const std::string& config_path : configs) {
    const dsv3::config::LoadResult base = dsv3::config::LoadConfigFile(config_path);
    if (!base.ok()) {
      std::cerr << config_path << ": " << base.errors[0].ToString() << "\n";
      return 1;
    }
    json cfg = dsv3::bench::SyntheticDataConfig(base.config, dir + "/corpus", dir + "/cache", steps, steps / 2);
    cfg["logging"]["peak_tflops"] = 1.0;
    cfg["distributed"]["data_parallel_size"] = -1;
    cfg["distributed"]["backend"] = "gloo";
    cfg["checkpointing"]["enabled"] = false;
    if (batch > 0) cfg["training"]["global_batch_size"] = batch;
    if (seq > 0) cfg["training"]["seq_length"] = seq;
    const int64_t global = cfg["training"]["global_batch_size"], micro = cfg["training"]["micro_batch_size"];
    if (global % micro != 0 || global % (micro * ranks) != 0) {
      cfg["training"]["micro_batch_size"] = std::max<int64_t>(1, std::min(micro, global / ranks));
    }
    std::printf("%s: global batch %lld x seq %lld\n", config_path.c_str(),
                static_cast<long long>(cfg["training"]["global_batch_size"].get<int64_t>()),
                static_cast<long long>(cfg["training"]["seq_length"].get<int64_t>()));
    cfg["distributed"]["zero_stage"] = 0;
    const Figures one = RunJob(cfg, dir, "one", 1, cores);
    if (!one.ok) return 1;
    std::printf("  1 rank           %7.0f tokens/s %6.0f ms/step                              per rank: "
                "optimizer %6.2f, params %6.2f, grads %6.2f MiB\n",
                one.tokens_per_s, one.step_ms, one.optimizer_mb, one.param_mb, one.grad_mb);
    if (micro_override > 0) cfg["training"]["micro_batch_size"] = micro_override;
    const int64_t micro_base = cfg["training"]["micro_batch_size"];
    for (int pp : pps) {
      for (int tp : tps) {
        for (int ep : eps) {
          if (ranks % (tp * pp) != 0 || (ranks / (tp * pp)) % ep != 0) continue;
          cfg["distributed"]["tensor_parallel_size"] = tp;
          cfg["distributed"]["pipeline_parallel_size"] = pp;
          cfg["distributed"]["pipeline_schedule"] = schedule;
          cfg["distributed"]["virtual_pipeline_stages"] = pp > 1 ? virtual_stages : 1;
          cfg["distributed"]["expert_parallel_size"] = ep;
          // The micro-batch count per data-parallel rank must stay whole.
          const int64_t dp = ranks / (tp * pp);
          cfg["training"]["micro_batch_size"] = micro_base;
          if (global % (micro_base * dp) != 0) cfg["training"]["micro_batch_size"] = std::max<int64_t>(1, global / dp);
          const int64_t m = global / (cfg["training"]["micro_batch_size"].get<int64_t>() * dp);
          for (int stage : stages) {
            if (pp > 1 && stage == 3) continue;  // refused: ZeRO-3 inside pipeline stages
            cfg["distributed"]["zero_stage"] = stage;
            const std::string name = "pp" + std::to_string(pp) + "tp" + std::to_string(tp) + "ep" + std::to_string(ep) +
                                     "zero" + std::to_string(stage);
            const Figures f = RunJob(cfg, dir, name, ranks, std::max(1, cores / ranks));
            if (!f.ok) return 1;
            std::printf("  %d ranks (pp %d x dp %lld x tp %d, ep %d), ZeRO-%d %7.0f tokens/s %6.0f ms/step x%.2f, "
                        "communication %3.0f%%  per rank: optimizer %6.2f, params %6.2f, grads %6.2f MiB\n",
                        ranks, pp, static_cast<long long>(dp), tp, ep, stage, f.tokens_per_s, f.step_ms,
                        f.tokens_per_s / one.tokens_per_s, 100 * f.comm_ms / f.step_ms, f.optimizer_mb, f.param_mb,
                        f.grad_mb);
            if (!f.bytes_per_group.empty()) std::printf("      sent per step by rank 0: %s\n", f.bytes_per_group.c_str());
            if (pp > 1) {
              std::printf("      %s, %lld micro-batches: rank 0 waits on the other stages %.0f%% of its step (ideal "
                          "bubble %.0f%%)\n",
                          schedule.c_str(), static_cast<long long>(m), 100 * f.pipeline_wait_ms / f.step_ms,
                          100.0 * (pp - 1) / static_cast<double>(virtual_stages * m + pp - 1));
              std::printf("      compute per step: %s\n", f.stage_ms.c_str());
            }
          }
        }
      }
    }
  }
  fs::remove_all(dir);
  return 0;
}
