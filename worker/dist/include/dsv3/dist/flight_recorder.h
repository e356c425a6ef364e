// What this rank is doing, kept where a stuck training thread cannot hide it: the step, the
// micro-step and the phase the training thread last entered, and per process group the
// collectives it entered and completed, with the last N of them in a ring (op, sequence
// number, bytes, dtype and shape, peers, enqueue / wait / end times, state).
//
// The training thread writes (Trainer sets phases, the recording communicator that wraps
// every backend logs each operation); the reporter thread reads a snapshot for each
// heartbeat, and the whole text for a dump. dsv3d compares the ranks' snapshots to tell a
// hung rank from its waiting peers (server/jobs/watchdog.h). Process-wide and thread-safe.
// LibTorch-free.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace dsv3::dist {

enum class TrainPhase { kSetup, kData, kForward, kBackward, kOptimizer, kCheckpoint, kEvaluation, kDone };
const char* TrainPhaseName(TrainPhase phase);

enum class OpState { kEnqueued, kWaiting, kCompleted, kFailed };
const char* OpStateName(OpState state);

struct OpRecord {
  uint64_t seq = 0;         // of its group, from 1; point-to-point ops count too
  std::string op;           // allreduce, reduce_scatter, allgather, broadcast, alltoall, send, recv, barrier
  std::string tensor;       // "float32[4096]"
  double bytes = 0;
  std::string peers;        // "peer 1" for send/recv, "root 0" for broadcast, "" for all members
  int64_t enqueued_ms = 0, wait_started_ms = 0, ended_ms = 0;  // unix ms; 0 = not yet
  OpState state = OpState::kEnqueued;
};

// One group's progress, as a heartbeat carries it.
struct GroupProgress {
  std::string name;           // "world", or the subgroup's tag (dp0, tp2, ...): the same on every member
  int size = 0;
  uint64_t entered = 0;       // sequence number of the last operation issued
  uint64_t completed = 0;     // the highest whose Wait() returned
  std::string last_op;        // the op of `entered`
  uint64_t waiting_seq = 0;   // the operation the training thread is blocked in now (0: none)
  std::string waiting_op;
  int64_t waiting_since_ms = 0;
};

struct ProgressSnapshot {
  int64_t step = 0;        // the step being trained (completed steps + 1)
  int64_t micro_step = 0;
  TrainPhase phase = TrainPhase::kSetup;
  int64_t phase_since_ms = 0;     // unix ms, training thread's clock
  int64_t last_progress_ms = 0;   // the training thread's last phase change or operation
  double last_step_seconds = 0;   // wall time of the last completed step
  double last_busy_seconds = 0;   // of that, time not blocked in communication
  std::vector<GroupProgress> groups;
};

class FlightRecorder {
 public:
  static constexpr size_t kRingSize = 64;
  static FlightRecorder& Get();

  // Training thread. SetPhase also fires DSV3_FAULT's hang / exit / slow faults (faults.h).
  void SetPhase(TrainPhase phase);
  void SetStep(int64_t step, int64_t micro_step = 0);
  void SetMicroStep(int64_t micro_step);
  void StepDone(double step_seconds, double busy_seconds);

  // Communicators: one id per communicator; name and size as GroupProgress has them.
  int AddGroup(const std::string& name, int size, int rank);
  uint64_t Enter(int group, const std::string& op, const std::string& tensor, double bytes, const std::string& peers);
  void WaitStarted(int group, uint64_t seq);
  void Ended(int group, uint64_t seq, OpState state);

  ProgressSnapshot Snapshot() const;
  // A readable page: the progress, then every group's ring, oldest first.
  std::string Dump() const;

 private:
  struct Group {
    GroupProgress progress;
    int rank = 0;
    std::vector<OpRecord> ring;  // ring[seq % kRingSize]
  };
  OpRecord* FindLocked(Group& g, uint64_t seq);
  void TouchLocked();

  mutable std::mutex mu_;
  ProgressSnapshot progress_;
  std::vector<Group> groups_;
};

int64_t UnixMs();

}  // namespace dsv3::dist
