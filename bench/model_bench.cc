// Forward + backward throughput of the model on this machine, and the activation memory
// that gradient checkpointing saves. Prints figures; asserts nothing.
//
//   model_bench [--config configs/train_config_nano.json] [--steps 10] [--threads N]
//               [--batch B] [--seq T] [--dtype float|bfloat16]
//
// Batch and sequence default to the config's micro_batch_size and seq_length.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include <torch/torch.h>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/threads.h"
#include "dsv3/model/model.h"

namespace {

// Peak resident set size since the last ResetPeakRss(), in bytes (Linux).
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }
double ReadStatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(std::strlen(field))) * 1024.0;
  }
  return 0;
}

struct Args {
  std::string config = "configs/train_config_nano.json";
  int steps = 10;
  int threads = 0;
  int64_t batch = 0, seq = 0;
  std::string dtype = "float";
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") a.config = v;
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--seq") a.seq = std::stoll(v);
    else if (k == "--dtype") a.dtype = v;
    else {
      std::cerr << "unknown argument " << k << "\n";
      std::exit(2);
    }
  }
  return a;
}

struct Result {
  double tokens_per_s, ms_per_step, peak_extra_bytes;
};

Result Run(dsv3::config::Config cfg, const Args& a, bool checkpointing) {
  cfg.model.gradient_checkpointing = checkpointing;
  torch::manual_seed(0);
  dsv3::model::DeepSeekV3 model(cfg);
  if (a.dtype == "bfloat16") model->to(torch::kBFloat16);
  model->train();
  const int64_t B = a.batch > 0 ? a.batch : cfg.training.micro_batch_size;
  const int64_t T = a.seq > 0 ? a.seq : cfg.training.seq_length;
  const torch::Tensor tokens = torch::randint(cfg.model.vocab_size, {B, T + 1}, torch::kLong);
  const auto step = [&] {
    model->zero_grad();
    model->forward(tokens).loss.backward();
  };
  step();  // warm-up: allocator, thread pool
  model->zero_grad();
  const double rss_before = ReadStatusKb("VmRSS:");
  ResetPeakRss();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < a.steps; ++i) step();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double peak = ReadStatusKb("VmHWM:");
  return {static_cast<double>(B * T * a.steps) / seconds, 1000.0 * seconds / a.steps, peak - rss_before};
}

// Runs one configuration in a fresh child process, so its peak memory is its own (a second
// run in the same process would reuse the allocator's cached blocks).
Result RunIsolated(const dsv3::config::Config& cfg, const Args& a, bool checkpointing) {
  int fds[2];
  if (pipe(fds) != 0) std::exit(1);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dsv3::LimitOpenBlasThreads(1);
    if (a.threads > 0) torch::set_num_threads(a.threads);
    const Result r = Run(cfg, a, checkpointing);
    const ssize_t written = write(fds[1], &r, sizeof r);
    _exit(written == static_cast<ssize_t>(sizeof r) ? 0 : 1);
  }
  close(fds[1]);
  Result r{};
  const ssize_t got = read(fds[0], &r, sizeof r);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != static_cast<ssize_t>(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::cerr << "benchmark child failed\n";
    std::exit(1);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  dsv3::PreferFastOpenBlasKernels(argv);  // as dsv3-worker does
  dsv3::LimitOpenBlasThreads(1);
  const Args a = Parse(argc, argv);
  const dsv3::config::LoadResult r = dsv3::config::LoadConfigFile(a.config);
  if (!r.ok()) {
    for (const auto& e : r.errors) std::cerr << a.config << ": " << e.ToString() << "\n";
    return 1;
  }
  const auto params = dsv3::config::EstimateConfig(r.config).params;
  const int64_t B = a.batch > 0 ? a.batch : r.config.training.micro_batch_size;
  const int64_t T = a.seq > 0 ? a.seq : r.config.training.seq_length;
  std::printf("model_bench %s: %.2fM params (%.2fM activated), batch %lld x seq %lld, %s, "
              "%d intra-op threads, OpenBLAS %s, %d steps\n",
              a.config.c_str(), params.total / 1e6, params.activated / 1e6, static_cast<long long>(B),
              static_cast<long long>(T), a.dtype.c_str(), a.threads > 0 ? a.threads : 1,
              std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "auto-detected kernels", a.steps);
  const Result plain = RunIsolated(r.config, a, false);
  const Result ckpt = RunIsolated(r.config, a, true);
  std::printf("  forward+backward:               %10.0f tokens/s  %8.1f ms/step  peak +%.1f MiB\n",
              plain.tokens_per_s, plain.ms_per_step, plain.peak_extra_bytes / (1 << 20));
  std::printf("  with gradient_checkpointing:    %10.0f tokens/s  %8.1f ms/step  peak +%.1f MiB\n",
              ckpt.tokens_per_s, ckpt.ms_per_step, ckpt.peak_extra_bytes / (1 << 20));
  std::printf("  activation memory saved by checkpointing: %.1f MiB (%.0f%%)\n",
              (plain.peak_extra_bytes - ckpt.peak_extra_bytes) / (1 << 20),
              100.0 * (plain.peak_extra_bytes - ckpt.peak_extra_bytes) / std::max(1.0, plain.peak_extra_bytes));
  return 0;
}
