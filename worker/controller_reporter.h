// Adapts the trainer's Reporter to dsv3d's WorkerReports service: registration, heartbeats
// (which carry stop / checkpoint-now commands back), metrics in batches, checkpoints,
// evaluations and the rank's outcome. Calls from the trainer only enqueue; one background
// thread sends in order and retries while the controller is unreachable (it may be
// restarting), so training never waits on the network.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "dsv3/train/reporter.h"

namespace dsv3::worker {

enum class ControllerCommand { kStop, kCheckpointNow };

class ControllerReporter : public train::Reporter {
 public:
  // Runs on the background thread when the controller asks for something.
  virtual void SetCommandHandler(std::function<void(ControllerCommand)> handler) = 0;
  // Reports how the rank ends and flushes what is queued, waiting at most a few seconds.
  virtual void Finish(bool finished, bool failed, int64_t step, const std::string& message) = 0;
};

// From DSV3_CONTROLLER, DSV3_JOB_ID, DSV3_ATTEMPT and DSV3_JOB_CREDENTIAL. Returns nullptr
// when DSV3_CONTROLLER is unset (a standalone run); throws std::runtime_error naming the
// variable when the others are missing or malformed.
std::unique_ptr<ControllerReporter> MakeControllerReporterFromEnv(int rank, int world_size);

}  // namespace dsv3::worker
