// The JobManager's in-memory view of active jobs, shared by job_manager.cc (requests) and
// job_supervision.cc (the loop). Guarded by JobManager::mu_.
#pragma once

#include <chrono>
#include <deque>
#include <map>
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
  // The watchdog's view: the latest progress and when (dsv3d's clock) it last moved.
  RankState progress;
  std::chrono::steady_clock::time_point progressed_at{};
  int64_t dumped_request = 0;  // the newest dump request this rank answered
};

// A hang found by the watchdog: dumps requested, the attempt fails when they are in.
struct HangInProgress {
  bool active = false;
  std::chrono::steady_clock::time_point detected_at{};
  int64_t detected_ms = 0;  // unix ms, for the summary
  int64_t request = 0;
  std::string reason, summary, dir;
};

struct JobManager::Live {
  JobRecord job;  // the store's row, kept in step with every write
  Phase phase = Phase::kIdle;
  std::vector<RankLive> ranks;  // the current attempt's; empty before the first launch
  std::chrono::steady_clock::time_point launched_at{}, stop_deadline{};
  bool killed = false;
  std::string failure;  // why the attempt is failing
  bool permanent = false;  // ... and a restart cannot fix it (exit_codes.h): FAILED at once
  JobProgress progress;
  Placement placement;  // from the allocator's Reserve
  bool waiting = false;  // the attempt waits in an external scheduler's queue (Slurm PENDING)
  bool placement_pending = false;  // a restart waits for hosts (static: an agent was lost)
  // Watchdog (jobs/watchdog.h): step times seen this attempt, stragglers, a hang underway,
  // and where each dump request's files go.
  std::deque<double> step_seconds;
  int64_t observed_step = 0;
  StragglerTracker stragglers;
  HangInProgress hang;
  std::map<int64_t, std::string> dump_dirs;
};

// Asks the job's ranks for dumps into `dir` (they see it in their next heartbeat reply);
// returns the request id. Ids are unix ms, kept increasing: unique across dsv3d restarts,
// which ranks outlive.
inline int64_t AddDumpRequestLocked(JobManager::Live& live, const std::string& dir) {
  int64_t request = NowMs();
  if (!live.dump_dirs.empty()) request = std::max(request, live.dump_dirs.rbegin()->first + 1);
  live.dump_dirs[request] = dir;
  return request;
}

// <job>/diagnostics/<attempt>: the dumps and summary of a hang in that attempt; on-demand
// dumps in a dump_<unix ms>/ folder under it.
inline std::string DiagnosticsDir(const JobRecord& job, int attempt) {
  return job.job_dir + "/diagnostics/" + std::to_string(attempt);
}

inline std::string RankLogPath(const JobRecord& job, int rank) {
  return job.job_dir + "/logs/rank_" + std::to_string(rank) + ".log";
}

// The progress of a live job with its ranks, for queries and for finished_.
inline JobProgress SnapshotLocked(const JobManager::Live& live) {
  JobProgress p = live.progress;
  for (size_t i = 0; i < live.ranks.size(); ++i) {
    const auto& r = live.ranks[i];
    RankView v;
    v.rank = static_cast<int>(i);
    v.pid = r.pid;
    v.host = r.host;
    v.log_path = RankLogPath(live.job, static_cast<int>(i));
    // A rank of an ended job that never had a process (a refused launch, a Slurm job that
    // never ran) was never started.
    v.state = r.exited       ? "exited"
              : r.registered ? "registered"
              : r.pid == 0 && IsTerminal(live.job.state) ? "not started"
                                                        : "launched";
    v.exit_code = r.exit_code;
    v.last_heartbeat_ms = r.last_seen_ms;
    if (r.progress.reported) {
      v.phase = r.progress.phase;
      v.step = r.progress.step;
      v.step_seconds = r.progress.last_step_seconds;
      v.busy_seconds = r.progress.last_busy_seconds;
      v.busy_ratio = live.stragglers.ratio(static_cast<int>(i));
      v.straggler = live.stragglers.flagged(static_cast<int>(i));
    }
    p.ranks.push_back(std::move(v));
  }
  return p;
}


inline void MarkSeenLocked(JobManager::Live& live, int rank) {
  auto& r = live.ranks[rank];
  r.registered = true;
  r.last_seen = std::chrono::steady_clock::now();
  r.last_seen_ms = NowMs();
  if (r.progressed_at == std::chrono::steady_clock::time_point{}) r.progressed_at = r.last_seen;
}

// ETA from the measured step time and the steps left.
inline void UpdateEtaLocked(JobManager::Live& live) {
  auto& p = live.progress;
  const auto it = p.latest.find("step_ms");
  if (it == p.latest.end() || live.job.total_steps <= 0) return;
  p.eta_seconds = std::max<int64_t>(0, live.job.total_steps - p.step) * it->second / 1000.0;
}

}  // namespace dsv3::server
