// JobManager supervision: the loop, admission, launches, rank exits, heartbeats, restarts
// from the newest intact checkpoint, and recovery after a controller restart.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/common/env.h"
#include "dsv3/common/exit_codes.h"
#include "dsv3/procs/host.h"
#include "dsv3/procs/log.h"
#include "jobs/job_manager.h"
#include "jobs/job_manager_internal.h"

namespace dsv3::server {
namespace fs = std::filesystem;

namespace {

constexpr auto kTick = std::chrono::milliseconds(100);

// A TCP port that is free now, for MASTER_PORT (the ranks' rendezvous).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 29500;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 29500;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

struct IntactCheckpoint {
  std::string path;
  int64_t step = -1;
};

IntactCheckpoint NewestIntactCheckpoint(const std::string& dir) {
  const auto path = ckpt::LatestIntactCheckpoint(dir, nullptr);
  if (!path) return {};
  return {*path, ckpt::CheckpointStep(std::filesystem::path(*path).filename().string()).value_or(-1)};
}


std::string Seconds(std::chrono::milliseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g s", d.count() / 1000.0);
  return buf;
}

// The external allocation (Slurm job) of the job's current attempt, if it has one.
std::string ExternalId(const JobStore& store, const JobRecord& job) {
  for (const auto& a : store.Allocations(job.id)) {
    if (a.attempt == job.attempt) return a.external_id;
  }
  return "";
}

}  // namespace


void JobManager::SetStateLocked(Live& live, JobState state, const std::string& reason) {
  if (absl::Status s = store_.SetState(live.job.id, state, reason, live.job.attempt); !s.ok()) {
    // The store is the source of truth: acting on a state it does not hold would diverge.
    throw std::runtime_error(std::string(s.message()));
  }
  live.job.state = state;
  live.job.state_reason = reason;
  log::Info("job " + std::to_string(live.job.id) + " (" + live.job.name + ") " + JobStateName(state) + ": " + reason);
}

void JobManager::EndJobLocked(Live& live, JobState state, const std::string& reason) {
  SetStateLocked(live, state, reason);
  allocator_.Release(live.job.id);
  finished_[live.job.id] = SnapshotLocked(live);
}

void JobManager::RecordNewestCheckpointLocked(Live& live) {
  const IntactCheckpoint c = NewestIntactCheckpoint(live.job.checkpoint_dir);
  if (c.step < 0) return;
  if (c.path != live.progress.last_checkpoint) {
    CheckpointRecord rec{c.step, c.path, "found on disk", std::nullopt, NowMs()};
    (void)store_.AddCheckpoint(live.job.id, rec);
  }
  live.progress.last_checkpoint = c.path;
  live.progress.last_checkpoint_step = c.step;
}

absl::Status JobManager::Recover() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    for (JobRecord& job : store_.ActiveJobs()) {
      auto live = std::make_unique<Live>();
      live->job = job;
      live->stragglers = StragglerTracker(job.plan.watchdog.straggler_factor, job.plan.watchdog.straggler_steps);
      Live& l = *live;
      live_[job.id] = std::move(live);
      for (const auto& [name, row] : store_.LatestMetrics(job.id)) {
        l.progress.latest[name] = row.value;
        l.progress.step = std::max(l.progress.step, row.step);
      }
      const auto ckpts = store_.Checkpoints(job.id);
      if (!ckpts.empty()) {
        l.progress.last_checkpoint = ckpts.back().path;
        l.progress.last_checkpoint_step = ckpts.back().step;
        l.progress.last_checkpoint_ms = ckpts.back().time_ms;
      }
      if (job.state == JobState::kQueued || job.attempt == 0) continue;
      if (job.state == JobState::kRestarting) {
        // Between attempts: the failed attempt's ranks were being killed; finish that and
        // let the loop launch the next attempt (restarts was already counted).
        allocator_.Adopt(job, store_.Ranks(job.id, job.attempt), ExternalId(store_, job));
        allocator_.Kill(job.id);
        continue;
      }
      // The current attempt's ranks: those still alive are adopted, the others are gone.
      const auto ranks = store_.Ranks(job.id, job.attempt);
      const auto adopted = allocator_.Adopt(job, ranks, ExternalId(store_, job));
      l.ranks.assign(job.num_ranks, RankLive{});
      l.launched_at = Clock::now();
      for (int r = 0; r < job.num_ranks; ++r) {
        RankLive& rl = l.ranks[r];
        const bool alive = std::find(adopted.begin(), adopted.end(), r) != adopted.end();
        for (const auto& rec : ranks) {
          if (rec.rank == r) {
            rl.pid = rec.pid;
            rl.proc_start = rec.proc_start;
            rl.host = rec.host;
          }
        }
        if (alive) {
          MarkSeenLocked(l, r);  // it gets a full heartbeat timeout to re-register
        } else {
          rl.exited = true;
          rl.exit_code = -1;
          rl.how = "was gone when dsv3d restarted";
        }
      }
      const int alive = static_cast<int>(adopted.size());
      if (job.cancel_requested) {
        l.phase = Phase::kStopping;
        l.stop_deadline = Clock::now() + options_.grace_period;
        allocator_.Signal(job.id, SIGTERM);
      } else if (alive == job.num_ranks) {
        l.phase = Phase::kRunning;
        SetStateLocked(l, job.state, "dsv3d restarted; adopted all " + std::to_string(alive) + " running rank(s)");
      } else if (alive == 0) {
        l.phase = Phase::kFailing;
        l.failure = "every rank of attempt " + std::to_string(job.attempt) + " ended while dsv3d was down";
        AttemptOverLocked(l);
      } else {
        l.phase = Phase::kFailing;
        l.failure = std::to_string(job.num_ranks - alive) + " rank(s) died while dsv3d was down";
        l.killed = true;
        allocator_.Kill(job.id);
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(std::string("recovering jobs: ") + e.what());
  }
  recovered_ = true;
  // Jobs that ended above are no longer live.
  for (auto it = live_.begin(); it != live_.end();) {
    it = IsTerminal(it->second->job.state) ? live_.erase(it) : std::next(it);
  }
  return absl::OkStatus();
}

void JobManager::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = false;
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void JobManager::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void JobManager::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  Clock::time_point next_prune = Clock::now();
  while (!stopping_) {
    cv_.wait_for(lock, kTick);
    if (stopping_) break;
    if (options_.metrics_retention.count() > 0 && Clock::now() >= next_prune) {
      next_prune = Clock::now() + std::chrono::hours(1);
      const auto retention = std::chrono::duration_cast<std::chrono::milliseconds>(options_.metrics_retention);
      const absl::StatusOr<int64_t> pruned = store_.PruneMetrics(NowMs() - retention.count());
      if (!pruned.ok()) log::Warning(std::string(pruned.status().message()));
      if (pruned.ok() && *pruned > 0) {
        log::Info("pruned " + std::to_string(*pruned) + " metric points of jobs ended over " +
                  std::to_string(options_.metrics_retention.count()) + " h ago (their last values stay)");
      }
    }
    try {
      SuperviseLocked();
    } catch (const std::exception& e) {
      // A store write failed: nothing was acted on; try again next tick.
      log::Error(std::string("supervision: ") + e.what());
    }
  }
}

void JobManager::SuperviseLocked() {
  std::vector<RankExit> exits;
  exits.swap(exits_);
  std::vector<AllocationUpdate> updates;
  updates.swap(allocation_updates_);
  for (const auto& u : updates) OnAllocationLocked(u);
  for (const auto& e : exits) OnRankExitLocked(e);

  const auto now = Clock::now();
  for (auto& [id, lp] : live_) {
    Live& l = *lp;
    if (l.phase == Phase::kRunning) {
      bool all_registered = true;
      for (size_t r = 0; r < l.ranks.size(); ++r) {
        const RankLive& rl = l.ranks[r];
        all_registered = all_registered && rl.registered;
        if (rl.exited) continue;
        if (rl.registered && now - rl.last_seen > options_.heartbeat_timeout) {
          FailAttemptLocked(l, "rank " + std::to_string(r) + " sent no heartbeat for " +
                                   Seconds(options_.heartbeat_timeout) + " (hung or unreachable)");
          break;
        }
        if (!rl.registered && !l.waiting && now - l.launched_at > options_.startup_timeout) {
          FailAttemptLocked(l, "rank " + std::to_string(r) + " did not register within " +
                                   Seconds(options_.startup_timeout));
          break;
        }
      }
      if (l.phase == Phase::kRunning && all_registered && l.job.state == JobState::kStarting) {
        SetStateLocked(l, JobState::kRunning, "all " + std::to_string(l.ranks.size()) + " rank(s) registered");
      }
      if (l.phase == Phase::kRunning && all_registered) WatchLocked(l, now);
    } else if (l.phase == Phase::kStopping && !l.killed && now > l.stop_deadline) {
      l.killed = true;
      allocator_.Kill(id);
    } else if (l.phase == Phase::kIdle && l.job.state == JobState::kRestarting) {
      if (l.job.cancel_requested) {
        EndJobLocked(l, JobState::kCanceled, "canceled by user between attempts");
      } else if (auto placement = allocator_.Reserve(l.job)) {
        // The same hosts unless one was lost: then wherever the job fits now.
        l.placement = *placement;
        l.placement_pending = false;
        LaunchAttemptLocked(l);
      } else if (!l.placement_pending) {
        l.placement_pending = true;
        SetStateLocked(l, JobState::kRestarting, "waiting for hosts: " + allocator_.WhyNotPlaced(l.job));
      }
    }
  }
  AdmitLocked();
  for (auto it = live_.begin(); it != live_.end();) {
    it = IsTerminal(it->second->job.state) ? live_.erase(it) : std::next(it);
  }
}

void JobManager::AdmitLocked() {
  std::vector<Live*> queued;
  for (auto& [id, l] : live_) {
    if (l->job.state == JobState::kQueued) queued.push_back(l.get());
  }
  std::sort(queued.begin(), queued.end(), [](const Live* a, const Live* b) {
    return a->job.priority != b->job.priority ? a->job.priority > b->job.priority : a->job.id < b->job.id;
  });
  for (Live* l : queued) {
    // Strict order: a job that does not fit blocks those behind it, so a large job is
    // never starved by a stream of small ones.
    auto placement = allocator_.Reserve(l->job);
    if (!placement) break;
    l->placement = *placement;
    LaunchAttemptLocked(*l);
  }
}

void JobManager::LaunchAttemptLocked(Live& l) {
  JobRecord& job = l.job;
  job.attempt += 1;
  job.master_port = FreePort();
  // Attempt 1 starts where the user asked; later attempts resume from the newest intact
  // checkpoint (falling back to the user's resume point when none was written yet).
  std::string resume = job.resume_from;
  if (job.attempt > 1) {
    const IntactCheckpoint c = NewestIntactCheckpoint(job.checkpoint_dir);
    if (c.step >= 0) resume = c.path;
  }
  if (absl::Status s = store_.UpdateJob(job); !s.ok()) throw std::runtime_error(std::string(s.message()));
  SetStateLocked(l, JobState::kStarting,
                 "attempt " + std::to_string(job.attempt) + ": launching " + std::to_string(job.num_ranks) +
                     " rank(s)" + (resume.empty() ? "" : ", resuming from " + resume));

  LaunchSpec spec = BuildLaunchSpec(job, l.placement, resume);
  for (const auto& rl : spec.ranks) {
    const std::string where = l.placement.hosts.empty()
                                  ? ""
                                  : " on " + l.placement.hosts[rl.rank] + ", MASTER_ADDR=" + rl.env.at(env::kMasterAddr);
    (void)procs::AppendToLog(rl.log_path, "==== dsv3d: job " + std::to_string(job.id) + " attempt " +
                                           std::to_string(job.attempt) + " rank " + std::to_string(rl.rank) + where +
                                           (resume.empty() ? "" : " (resume " + resume + ")") + " ====\n");
  }
  auto launched = allocator_.Launch(spec);
  l.ranks.assign(job.num_ranks, RankLive{});
  l.launched_at = Clock::now();
  l.killed = false;
  l.waiting = false;
  l.failure.clear();
  l.permanent = false;
  l.step_seconds.clear();
  l.observed_step = 0;
  l.stragglers = StragglerTracker(job.plan.watchdog.straggler_factor, job.plan.watchdog.straggler_steps);
  l.hang = HangInProgress{};
  l.dump_dirs.clear();
  if (!launched.ok()) {
    EndJobLocked(l, JobState::kFailed, "cannot start ranks: " + std::string(launched.status().message()));
    return;
  }
  for (const auto& lr : *launched) {
    RankLive& r = l.ranks[lr.rank];
    r.pid = lr.pid;
    r.proc_start = lr.proc_start;
    r.host = lr.host;
    RankRecord rec{job.id, job.attempt, lr.rank, lr.pid, lr.proc_start, lr.host, LogPath(job, lr.rank),
                   "launched", 0, NowMs(), 0};
    (void)store_.UpsertRank(rec);
  }
  l.phase = job.cancel_requested ? Phase::kStopping : Phase::kRunning;
  if (l.phase == Phase::kStopping) {
    l.stop_deadline = Clock::now() + options_.grace_period;
    allocator_.Signal(job.id, SIGTERM);
  }
}

LaunchSpec JobManager::BuildLaunchSpec(const JobRecord& job, const Placement& placement, const std::string& resume) const {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = options_.threads_per_rank > 0
                          ? options_.threads_per_rank
                          : std::max(1, static_cast<int>(cores) / std::max(1, allocator_.TotalSlots()));
  // Ranks on one host are numbered 0.. on it, in rank order (all ranks of a host together).
  std::map<std::string, int> per_host;
  std::vector<int> local_rank(job.num_ranks, 0);
  for (int r = 0; r < job.num_ranks; ++r) {
    const std::string host = r < static_cast<int>(placement.hosts.size()) ? placement.hosts[r] : "";
    local_rank[r] = per_host[host]++;
  }
  LaunchSpec spec;
  spec.job_id = job.id;
  spec.attempt = job.attempt;
  spec.job = job;
  for (int r = 0; r < job.num_ranks; ++r) {
    const std::string host = r < static_cast<int>(placement.hosts.size()) ? placement.hosts[r] : "";
    RankLaunch rl;
    rl.rank = r;
    rl.cwd = job.job_dir;
    rl.log_path = RankLogPath(job, r);
    rl.argv = {options_.worker_path, "--config", job.job_dir + "/config.json"};
    if (!resume.empty()) rl.argv.insert(rl.argv.end(), {"--resume", resume});
    if (job.plan.intra_op_threads == 0) rl.argv.insert(rl.argv.end(), {"--threads", std::to_string(threads)});
    rl.env = {{env::kRank, std::to_string(r)},
              {env::kWorldSize, std::to_string(job.num_ranks)},
              {env::kLocalRank, std::to_string(local_rank[r])},
              {env::kLocalWorldSize, std::to_string(per_host[host])},
              {env::kMasterAddr, placement.master_addr.empty() ? "127.0.0.1" : placement.master_addr},
              {env::kMasterPort, std::to_string(job.master_port)},
              {env::kController, controller_address_},
              {env::kJobId, std::to_string(job.id)},
              {env::kAttempt, std::to_string(job.attempt)},
              {env::kJobCredential, job.credential},
              {env::kOpenBlasNumThreads, "1"}};
    if (!options_.controller_ca.empty()) rl.env[env::kControllerCa] = options_.controller_ca;
    spec.ranks.push_back(std::move(rl));
  }
  return spec;
}

void JobManager::WatchLocked(Live& l, Clock::time_point now) {
  const config::WatchdogConfig& w = l.job.plan.watchdog;
  if (!w.enabled) return;
  const std::string job = "job " + std::to_string(l.job.id);
  if (l.hang.active) {
    // A job that moves again was slow, not hung: keep it (the dumps stay for a look).
    for (const RankLive& r : l.ranks) {
      if (r.progressed_at > l.hang.detected_at) {
        log::Info(job + ": progress resumed after the watchdog found it stalled (" + l.hang.reason +
                 "); not stopped; dumps in " + l.hang.dir);
        l.hang.active = false;
        return;
      }
    }
    // Dumps requested: fail the attempt once every live rank sent its own, or at the deadline.
    std::vector<int> missing;
    for (size_t r = 0; r < l.ranks.size(); ++r) {
      if (!l.ranks[r].exited && l.ranks[r].dumped_request < l.hang.request) missing.push_back(static_cast<int>(r));
    }
    const bool late = now - l.hang.detected_at > std::chrono::duration<double>(w.dump_timeout_s);
    if (!missing.empty() && !late) return;
    std::string dumps = "dumps: " + l.hang.dir + "/rank_<r>.txt";
    if (!missing.empty()) {
      dumps += " (none from rank(s)";
      for (int r : missing) dumps += " " + std::to_string(r);
      dumps += " within watchdog.dump_timeout_s)";
    }
    std::error_code ec;
    fs::create_directories(l.hang.dir, ec);
    std::ofstream(l.hang.dir + "/summary.txt") << l.hang.summary << "\n" << dumps << "\ndetected at unix ms "
                                                << l.hang.detected_ms << ", dumps collected at unix ms " << NowMs()
                                                << "\n";
    log::Info(job + ": hang: " + l.hang.reason + "; " + dumps);
    l.hang.active = false;
    FailAttemptLocked(l, l.hang.reason);
    return;
  }
  std::vector<RankState> states;
  Clock::time_point newest{};
  for (const RankLive& r : l.ranks) {
    states.push_back(r.progress);
    newest = std::max(newest, r.progressed_at);
  }
  // Stragglers: one observation each time every rank has completed another step.
  int64_t done = std::numeric_limits<int64_t>::max();
  std::vector<double> busy;
  for (const RankState& s : states) {
    done = std::min(done, s.step - 1);
    busy.push_back(s.last_busy_seconds);
  }
  if (done > l.observed_step) {
    l.observed_step = done;
    for (int r : l.stragglers.Observe(busy)) {
      char text[256];
      std::snprintf(text, sizeof(text),
                    "rank %d is a straggler: %.3g s of work per step, %.2f x the median of the ranks "
                    "(watchdog.straggler_factor %g, %lld reports in a row)",
                    r, busy[static_cast<size_t>(r)], l.stragglers.ratio(r), w.straggler_factor,
                    static_cast<long long>(w.straggler_steps));
      SetStateLocked(l, l.job.state, text);
    }
  }
  // Hangs: no rank moved for the timeout of where they are.
  const HangTimeout timeout = TimeoutFor(w, states, {l.step_seconds.begin(), l.step_seconds.end()});
  const double stalled = std::chrono::duration<double>(now - newest).count();
  if (stalled < timeout.seconds) return;
  const HangVerdict v = DiagnoseHang(states, stalled);
  l.hang.active = true;
  l.hang.detected_at = now;
  l.hang.detected_ms = NowMs();
  l.hang.reason = v.reason;
  l.hang.dir = DiagnosticsDir(l.job, l.job.attempt);
  l.hang.summary = "job " + std::to_string(l.job.id) + " (" + l.job.name + "), attempt " +
                   std::to_string(l.job.attempt) + "\n" + v.summary + "\nno rank made progress for " +
                   std::to_string(static_cast<int64_t>(stalled)) + " s; " + timeout.why + "\n";
  l.hang.request = AddDumpRequestLocked(l, l.hang.dir);
  log::Info(job + ": hang detected (" + v.reason + "); collecting the ranks' dumps");
}

void JobManager::OnAllocationLocked(const AllocationUpdate& u) {
  (void)store_.UpsertAllocation({u.job_id, u.attempt, u.allocator, u.external_id, u.state, u.reason, NowMs()});
  auto it = live_.find(u.job_id);
  if (it == live_.end() || it->second->job.attempt != u.attempt) return;
  Live& l = *it->second;
  const std::string what = u.allocator + " job " + u.external_id + " " + u.state + (u.reason.empty() ? "" : " (" + u.reason + ")");
  if (!u.started) {
    // Queued in the external scheduler: the startup timeout starts when it runs the ranks.
    l.waiting = true;
    l.launched_at = Clock::now();
  } else if (l.waiting) {
    l.waiting = false;
    l.launched_at = Clock::now();
  }
  if (l.job.state == JobState::kStarting) {
    SetStateLocked(l, JobState::kStarting, "attempt " + std::to_string(l.job.attempt) + ": " + what);
  } else {
    log::Info("job " + std::to_string(l.job.id) + ": " + what);
  }
}

void JobManager::OnRankExitLocked(const RankExit& e) {
  auto it = live_.find(e.job_id);
  if (it == live_.end()) return;
  Live& l = *it->second;
  if (e.attempt != l.job.attempt || e.rank < 0 || e.rank >= static_cast<int>(l.ranks.size())) return;
  RankLive& r = l.ranks[e.rank];
  if (r.exited) return;
  r.exited = true;
  r.exit_code = e.exit_code;
  r.how = e.how;
  RankRecord rec{l.job.id, l.job.attempt, e.rank, r.pid, r.proc_start, r.host, LogPath(l.job, e.rank),
                 "exited", e.exit_code, 0, NowMs()};
  (void)store_.UpsertRank(rec);
  // Unknown status (an adopted rank): trust what it reported before it went.
  const bool clean = e.exit_code == 0 ||
                     (e.exit_code == -1 && (r.outcome == RankOutcome::kFinished || r.outcome == RankOutcome::kStopped));
  if (l.phase == Phase::kRunning && !clean) {
    if (exit_status::IsPermanent(e.exit_code)) {
      // The same attempt again would fail the same way: say why and do not retry.
      l.permanent = true;
      FailAttemptLocked(l, "rank " + std::to_string(e.rank) + " " + exit_status::Describe(e.exit_code) +
                               " (exit status " + std::to_string(e.exit_code) + ")" +
                               (r.end_message.empty() ? "" : ": " + r.end_message));
    } else {
      FailAttemptLocked(l, "rank " + std::to_string(e.rank) + " " + e.how);
    }
  }
  for (const auto& rr : l.ranks) {
    if (!rr.exited) return;
  }
  AttemptOverLocked(l);
}

void JobManager::FailAttemptLocked(Live& l, const std::string& reason) {
  if (l.phase == Phase::kFailing) return;
  l.phase = Phase::kFailing;
  l.failure = reason;
  // The other ranks would hang in collectives without their peer: stop them now.
  l.killed = true;
  allocator_.Kill(l.job.id);
}

void JobManager::AttemptOverLocked(Live& l) {
  RecordNewestCheckpointLocked(l);
  const std::string ckpt = l.progress.last_checkpoint.empty()
                               ? "no checkpoint"
                               : "checkpoint at step " + std::to_string(l.progress.last_checkpoint_step) + ": " +
                                     l.progress.last_checkpoint;
  if (l.phase == Phase::kStopping || (l.job.cancel_requested && l.phase != Phase::kRunning)) {
    EndJobLocked(l, JobState::kCanceled, "canceled by user; " + ckpt);
    return;
  }
  if (l.phase == Phase::kRunning) {
    // Every rank exited cleanly. Finished if a rank said so or the work is on disk.
    bool finished = l.progress.last_checkpoint_step >= l.job.total_steps;
    for (const auto& r : l.ranks) finished = finished || r.outcome == RankOutcome::kFinished;
    if (finished) {
      EndJobLocked(l, JobState::kCompleted, "finished " + std::to_string(l.job.total_steps) + " steps; " + ckpt);
      return;
    }
    // Stopped from outside dsv3d: Slurm's time-limit signal, a preemption, a user's kill.
    std::string why = "stopped from outside dsv3d";
    for (const auto& r : l.ranks) {
      if (r.outcome == RankOutcome::kStopped && !r.end_message.empty()) why = r.end_message;
    }
    l.failure = "ranks exited before train_steps (step " + std::to_string(l.progress.step) + " of " +
                std::to_string(l.job.total_steps) + "): " + why;
    l.phase = Phase::kFailing;
  }
  // A failed attempt: restart from the newest intact checkpoint, or give up.
  if (l.permanent) {
    EndJobLocked(l, JobState::kFailed, l.failure + "; not restarted: a restart cannot fix this");
    return;
  }
  if (l.job.restarts < l.job.max_restarts) {
    l.job.restarts += 1;
    if (absl::Status s = store_.UpdateJob(l.job); !s.ok()) throw std::runtime_error(std::string(s.message()));
    l.phase = Phase::kIdle;
    SetStateLocked(l, JobState::kRestarting,
                   l.failure + "; restart " + std::to_string(l.job.restarts) + " of " +
                       std::to_string(l.job.max_restarts) + " from " + ckpt);
    return;  // the next supervision pass launches
  }
  EndJobLocked(l, JobState::kFailed,
               l.failure + (l.job.max_restarts > 0
                                ? "; gave up after " + std::to_string(l.job.restarts) + " restart(s) (max_restarts)"
                                : ""));
}

}  // namespace dsv3::server
