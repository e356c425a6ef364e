// dsv3-worker: one training rank. Standalone: `dsv3-worker --config X [--resume P|latest]
// [--output-dir D] [--threads N] [--max-steps N]`; `dsv3-worker generate|eval ...` sample
// from or evaluate a trained model instead (inference_commands.h). Under a launcher (dsv3d, torchrun, srun,
// mpirun) it finds its rank from the launcher's variables (dist::DiscoverLaunch) and meets
// the other ranks at MASTER_ADDR:MASTER_PORT. DSV3_RENDEZVOUS_TIMEOUT and
// DSV3_COLLECTIVE_TIMEOUT (seconds; 300 and 600) bound the waits for other ranks.
//
// SIGTERM or SIGINT: the current step finishes, a checkpoint is saved, exit 0 with a final
// line saying where. A second signal exits at once (status 128 + signal).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "dsv3/common/build_info.h"
#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/env.h"
#include "dsv3/common/exit_codes.h"
#include "dsv3/common/message_log.h"
#include "dsv3/common/threads.h"
#include "dsv3/dist/communicator.h"
#include "dsv3/dist/faults.h"
#include "dsv3/dist/launch.h"
#include "dsv3/train/reporter.h"
#include "dsv3/train/trainer.h"
#include "inference_commands.h"
#include "stack_dump.h"
#ifdef DSV3_HAVE_GRPC
#include "controller_reporter.h"
#endif

namespace {

std::atomic<dsv3::train::Trainer*> g_trainer{nullptr};
std::atomic<int> g_signals{0};
// Requests that arrive before the trainer exists (during rendezvous or model setup) are
// applied when it does.
std::atomic<bool> g_stop_pending{false}, g_checkpoint_pending{false}, g_time_limit{false};

void OnSignal(int sig) {
  if (g_signals.fetch_add(1) > 0) _exit(128 + sig);
  if (sig == SIGUSR2) g_time_limit.store(true);
  g_stop_pending.store(true);
  if (auto* t = g_trainer.load()) t->RequestStop();
}

void OnCheckpointSignal(int) {
  g_checkpoint_pending.store(true);
  if (auto* t = g_trainer.load()) t->RequestCheckpoint();
}

// SIGTERM/SIGINT: stop with a checkpoint. SIGUSR2: the same, sent by Slurm (--signal)
// before the time limit so the job continues in a new allocation. SIGUSR1: checkpoint now.
void InstallSignalHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGUSR2, &sa, nullptr);
  sa.sa_handler = OnCheckpointSignal;
  sigaction(SIGUSR1, &sa, nullptr);
}

std::chrono::milliseconds EnvSeconds(const char* name, int fallback) {
  const char* v = std::getenv(name);
  const double s = v != nullptr && *v != '\0' ? std::atof(v) : fallback;
  return std::chrono::milliseconds(static_cast<int64_t>((s > 0 ? s : fallback) * 1000));
}

#ifdef DSV3_HAVE_GRPC
// The trainer owns its reporters; the controller reporter must outlive it (it reports how
// the rank ended), so the trainer gets this forwarder and main keeps the real one.
class Forward final : public dsv3::train::Reporter {
 public:
  explicit Forward(dsv3::train::Reporter* to) : to_(to) {}
  void OnStart(const dsv3::train::RunInfo& i) override { to_->OnStart(i); }
  void OnMetrics(const dsv3::train::StepMetrics& m) override { to_->OnMetrics(m); }
  void OnEval(const dsv3::train::EvalResult& e) override { to_->OnEval(e); }
  void OnCheckpoint(const dsv3::train::CheckpointEvent& c) override { to_->OnCheckpoint(c); }
  void OnMessage(const std::string& m) override { to_->OnMessage(m); }
  void OnEnd(int64_t step, const std::string& m) override { to_->OnEnd(step, m); }

 private:
  dsv3::train::Reporter* to_;
};
#endif

int Usage(const std::string& problem) {
  std::cerr << "dsv3-worker: " << problem << "\n"
            << "usage: dsv3-worker --config FILE [--resume PATH|latest] [--output-dir DIR] [--threads N] "
               "[--max-steps N] [--log-level debug|info|warning|error] [--log-format text|json] | --version\n"
               "       dsv3-worker generate CHECKPOINT|HF_DIR --prompt TEXT [--prompts-file FILE] [--max-tokens N] "
               "[--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop TEXT] [--ignore-eos] [--output FORMAT]\n"
               "       dsv3-worker eval CHECKPOINT|HF_DIR [--config FILE] [--text FILE] [--output text|json]\n";
  return 2;
}

// Reads the flags into `config_path` and `options`; returns an exit status when the process
// should end here (help, or a usage error), or -1 to go on.
int ParseArgs(int argc, char** argv, std::string& config_path, dsv3::train::TrainerOptions& options,
              std::string& log_level, std::string& log_format) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--help" || a == "-h") {
      Usage("train one rank of a DeepSeek-V3 model");
      return 0;
    } else if (a == "--version") {
      std::cout << dsv3::VersionLine("dsv3-worker") << std::endl;
      return 0;
    } else if (a == "--config") {
      if (!(v = value())) return Usage("--config needs a file");
      config_path = v;
    } else if (a == "--resume") {
      if (!(v = value())) return Usage("--resume needs a checkpoint path or 'latest'");
      options.resume = v;
    } else if (a == "--output-dir") {
      if (!(v = value())) return Usage("--output-dir needs a folder");
      options.output_dir = v;
    } else if (a == "--threads") {
      if (!(v = value()) || std::atoi(v) < 1) return Usage("--threads needs a number >= 1");
      options.threads = std::atoi(v);
    } else if (a == "--max-steps") {
      if (!(v = value()) || std::atoi(v) < 0) return Usage("--max-steps needs a number >= 0");
      options.max_steps = std::atoi(v);
    } else if (a == "--log-level") {
      if (!(v = value())) return Usage(std::string("--log-level needs one of ") + dsv3::msg::kLevels);
      log_level = v;
    } else if (a == "--log-format") {
      if (!(v = value())) return Usage(std::string("--log-format needs one of ") + dsv3::msg::kFormats);
      log_format = v;
    } else {
      return Usage("unknown argument " + a);
    }
  }
  if (config_path.empty()) return Usage("--config is required");
  return -1;
}

// The world of a multi-rank job, after its rendezvous.
std::unique_ptr<dsv3::dist::Communicator> ConnectWorld(const dsv3::dist::LaunchInfo& launch,
                                                       const dsv3::config::Config& config) {
  dsv3::dist::ConnectOptions connect;
  try {
    connect.backend = dsv3::dist::ResolveBackend(config.distributed.backend, torch::cuda::is_available());
  } catch (const std::exception& e) {
    throw dsv3::PermanentError(dsv3::exit_status::kConfigRefused, e.what());
  }
  connect.rendezvous_timeout = EnvSeconds(dsv3::env::kRendezvousTimeout, 300);
  connect.collective_timeout = EnvSeconds(dsv3::env::kCollectiveTimeout, 600);
  connect.device_index = launch.local_rank;
  const auto t0 = std::chrono::steady_clock::now();
  auto world = dsv3::dist::Connect(launch, connect);
  // bench/launch_bench reads this line: the rendezvous share of a job's start-up.
  dsv3::msg::Info(
      "dsv3-worker: rank " + std::to_string(launch.rank) + " joined " + std::to_string(launch.world_size) +
      " ranks at " + launch.master_addr + ":" + std::to_string(launch.master_port) + " in " +
      std::to_string(
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()) +
      " ms (done at unix time " +
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count()) +
      " ms)");
  return world;
}

}  // namespace

int main(int argc, char** argv) {
  dsv3::PreferFastOpenBlasKernels(argv);
  dsv3::LimitOpenBlasThreads(1);  // LibTorch owns the threads (2.5x slower otherwise)
  if (argc > 1 && std::string(argv[1]) == "generate") return dsv3::worker::RunGenerate(argc - 1, argv + 1);
  if (argc > 1 && std::string(argv[1]) == "eval") return dsv3::worker::RunEval(argc - 1, argv + 1);
  std::string config_path;
  dsv3::train::TrainerOptions options;
  std::string log_level = "info", log_format = "text";
  if (const int status = ParseArgs(argc, argv, config_path, options, log_level, log_format); status >= 0) {
    return status;
  }
  InstallSignalHandlers();
  dsv3::dist::LaunchInfo launch;
  try {
    launch = dsv3::dist::DiscoverLaunch();
  } catch (const std::exception& e) {
    std::cerr << "dsv3-worker: " << e.what() << std::endl;
    return 1;
  }
  if (const std::string problem = dsv3::msg::Setup("dsv3-worker", launch.rank, log_level, log_format);
      !problem.empty()) {
    return Usage(problem);
  }
  options.rank = launch.rank;
  options.world_size = launch.world_size;
  options.local_rank = launch.local_rank;
  try {
    dsv3::dist::Faults::Install(launch.rank);
  } catch (const std::exception& e) {
    dsv3::msg::Error(std::string(e.what()));
    return dsv3::exit_status::kUsage;
  }
  dsv3::worker::InstallStackDumpHandler();

#ifdef DSV3_HAVE_GRPC
  std::unique_ptr<dsv3::worker::ControllerReporter> controller;
  try {
    controller = dsv3::worker::MakeControllerReporterFromEnv(options.rank, options.world_size);
  } catch (const std::exception& e) {
    dsv3::msg::Error(std::string(e.what()));
    return 1;
  }
  const auto finish = [&](bool finished, bool failed, int64_t step, const std::string& message) {
    if (controller) controller->Finish(finished, failed, step, message);
  };
#else
  if (const char* c = std::getenv(dsv3::env::kController); c != nullptr && *c != '\0') {
    dsv3::msg::Error(std::string(dsv3::env::kController) +
                     " is set but this dsv3-worker was built without gRPC and cannot report to a controller");
    return 1;
  }
  const auto finish = [](bool, bool, int64_t, const std::string&) {};
#endif
  // Errors a restart cannot fix end with their own status (common/exit_codes.h), reported
  // to dsv3d first so the job fails at once with the reason.
  const auto fail = [&](int status, const std::string& message) {
    g_trainer.store(nullptr);
    dsv3::msg::Error(message);
    finish(false, true, 0, message);
    return status;
  };
  dsv3::config::LoadOptions load;
  load.world_size = options.world_size;
  const dsv3::config::LoadResult cfg = dsv3::config::LoadConfigFile(config_path, load);
  for (const auto& w : cfg.warnings) dsv3::msg::Warning(config_path + ": " + w.ToString());
  if (!cfg.ok()) {
    std::string all;
    for (const auto& e : cfg.errors) all += (all.empty() ? "" : "; ") + e.ToString();
    return fail(dsv3::exit_status::kConfigRefused, "the config is invalid: " + all);
  }
  try {
    std::vector<std::unique_ptr<dsv3::train::Reporter>> reporters;
    reporters.push_back(dsv3::train::MakeConsoleReporter());
#ifdef DSV3_HAVE_GRPC
    if (controller) reporters.push_back(std::make_unique<Forward>(controller.get()));
#endif
    const std::string out_dir = options.output_dir.empty() ? cfg.config.output_dir : options.output_dir;
    if (options.rank == 0) {  // one writer for the job's metric files
      reporters.push_back(dsv3::train::MakeJsonlReporter(out_dir + "/metrics.jsonl"));
      if (cfg.config.logging.tensorboard.enabled) {
        const std::string& log_dir = cfg.config.logging.tensorboard.log_dir;
        reporters.push_back(dsv3::train::MakeTensorBoardReporter(
            options.output_dir.empty()
                ? log_dir
                : dsv3::config::TensorBoardDirForOutput(log_dir, cfg.config.output_dir, options.output_dir)));
      }
    }
    std::unique_ptr<dsv3::dist::Communicator> world;
    if (launch.world_size > 1) {
      world = ConnectWorld(launch, cfg.config);
      options.world = world.get();
    }
    dsv3::train::Trainer trainer(cfg.config, options, std::move(reporters));
    g_trainer.store(&trainer);
    if (g_stop_pending.load()) trainer.RequestStop();
    if (g_checkpoint_pending.load()) trainer.RequestCheckpoint();
#ifdef DSV3_HAVE_GRPC
    if (controller) {
      controller->SetCommandHandler([](dsv3::worker::ControllerCommand c) {
        if (auto* t = g_trainer.load()) {
          c == dsv3::worker::ControllerCommand::kStop ? t->RequestStop() : t->RequestCheckpoint();
        }
      });
    }
#endif
    const dsv3::train::TrainResult r = trainer.Run();
    g_trainer.store(nullptr);
    const std::string how = r.finished       ? "finished"
                            : g_time_limit.load() ? "stopped for the time limit (SIGUSR2 from Slurm)"
                                                  : "stopped";
    finish(r.finished, false, r.step, how);
    dsv3::msg::Info("dsv3-worker: " + how + " at step " + std::to_string(r.step) +
                    (r.last_checkpoint.empty() ? "" : "; checkpoint saved to " + r.last_checkpoint));
    return 0;
  } catch (const dsv3::PermanentError& e) {
    return fail(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return fail(dsv3::exit_status::kOutOfMemory, "out of memory (an allocation failed)");
  } catch (const c10::Error& e) {
    // LibTorch's message without its 20-frame C++ backtrace.
    const std::string what = e.what_without_backtrace();
    if (what.find("out of memory") != std::string::npos || what.find("can't allocate memory") != std::string::npos) {
      return fail(dsv3::exit_status::kOutOfMemory, "out of memory: " + what);
    }
    return fail(dsv3::exit_status::kFailed, what);
  } catch (const std::exception& e) {
    return fail(dsv3::exit_status::kFailed, e.what());
  }
}
