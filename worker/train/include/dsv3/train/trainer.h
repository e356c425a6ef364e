// The training loop of one rank: data -> forward -> backward -> optimizer, with gradient
// accumulation, clipping, warmup + decay, mixed precision with fp32 master weights (fp16
// with dynamic loss scaling), MoE bias updates and router-noise annealing, evaluation,
// metrics through Reporters, and checkpoints (interval, request, signal, end) that resume
// exactly. Several ranks train one model data-parallel (ZeRO 0-2) and expert-parallel over
// a Communicator. Knows nothing of RPC or of how the process was launched.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dsv3/common/config.h"
#include "dsv3/train/reporter.h"

namespace dsv3::dist {
class Communicator;
}

namespace dsv3::train {

struct TrainerOptions {
  std::string resume;      // "", a checkpoint path, or "latest"
  std::string output_dir;  // overrides config.output_dir when set
  int rank = 0, world_size = 1;
  int local_rank = 0;      // picks the CUDA device
  // The job's world (dist::Connect), required when world_size > 1; not owned.
  dist::Communicator* world = nullptr;
  int threads = 0;         // intra-op threads; 0 = config, else cores
  int64_t max_steps = -1;  // stop (with a checkpoint) after this many steps of this run; tests
};

struct TrainResult {
  int64_t step = 0;  // steps completed
  bool finished = false;  // reached train_steps
  std::string last_checkpoint;
  std::vector<double> losses;  // the loss of every step of this run, for tests and tools
  double last_eval_loss = 0;
};

class Trainer {
 public:
  // Validates what this build can do (fp8, backends, world size) and throws
  // std::runtime_error naming the config field when it cannot.
  Trainer(config::Config cfg, TrainerOptions options, std::vector<std::unique_ptr<Reporter>> reporters);
  ~Trainer();

  // Trains until train_steps, max_steps or a stop request; blocks. Throws on errors (a
  // non-finite loss names the step).
  TrainResult Run();

  // The validation of the weights as they are (initialised, resumed or trained): loss,
  // perplexity and per-source losses, exactly as the run's own evaluation reports them.
  // Collective in a distributed run.
  EvalResult Evaluate();

  // Async-signal-safe: finish the current step, save a checkpoint, return from Run().
  void RequestStop() { stop_.store(true); }
  // Async-signal-safe: save a checkpoint after the current step.
  void RequestCheckpoint() { checkpoint_now_.store(true); }

 private:
  struct State;
  std::unique_ptr<State> s_;
  std::atomic<bool> stop_{false}, checkpoint_now_{false};
};

}  // namespace dsv3::train
