// The JobManager's in-memory view of active jobs, shared by job_manager.cc (requests) and
// job_supervision.cc (the loop). Guarded by JobManager::mu_.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "jobs/job_manager.h"

namespace dsv3::server {

enum class Phase {
  kIdle,      // QUEUED, or RESTARTING before the next launch
  kRunning,   // the attempt's ranks are running
  kStopping,  // cancel: SIGTERM sent, waiting up to the grace period
  kFailing,   // the attempt failed: ranks are being killed, then restart or FAILED
};

struct JobManager::RankLive {
  int64_t pid = 0, proc_start = 0;
  std::string host;
  bool registered = false, exited = false;
  int exit_code = 0;
  std::string how;  // how it exited
  std::chrono::steady_clock::time_point last_seen{};
  int64_t last_seen_ms = 0;
  int64_t step = 0;
  RankOutcome outcome = RankOutcome::kUnspecified;
  std::string end_message;
  bool checkpoint_requested = false;
};

struct JobManager::Live {
  JobRecord job;  // the store's row, kept in step with every write
  Phase phase = Phase::kIdle;
  std::vector<RankLive> ranks;  // the current attempt's; empty before the first launch
  std::chrono::steady_clock::time_point launched_at{}, stop_deadline{};
  bool killed = false;
  std::string failure;  // why the attempt is failing
  JobProgress progress;
  Placement placement;  // from the allocator's Reserve
  bool waiting = false;  // the attempt waits in an external scheduler's queue (Slurm PENDING)
  bool placement_pending = false;  // a restart waits for hosts (static: an agent was lost)
};

inline std::string RankLogPath(const JobRecord& job, int rank) {
  return job.job_dir + "/logs/rank_" + std::to_string(rank) + ".log";
}

// The progress of a live job with its ranks, for queries and for finished_.
inline JobProgress SnapshotLocked(const JobManager::Live& live) {
  JobProgress p = live.progress;
  for (size_t i = 0; i < live.ranks.size(); ++i) {
    const auto& r = live.ranks[i];
    p.ranks.push_back({static_cast<int>(i), r.pid, r.host, RankLogPath(live.job, static_cast<int>(i)),
                       r.exited ? "exited" : (r.registered ? "registered" : "launched"), r.exit_code,
                       r.last_seen_ms});
  }
  return p;
}


inline void MarkSeenLocked(JobManager::Live& live, int rank) {
  auto& r = live.ranks[rank];
  r.registered = true;
  r.last_seen = std::chrono::steady_clock::now();
  r.last_seen_ms = NowMs();
}

// ETA from the measured step time and the steps left.
inline void UpdateEtaLocked(JobManager::Live& live) {
  auto& p = live.progress;
  const auto it = p.latest.find("step_ms");
  if (it == p.latest.end() || live.job.total_steps <= 0) return;
  p.eta_seconds = std::max<int64_t>(0, live.job.total_steps - p.step) * it->second / 1000.0;
}

}  // namespace dsv3::server
