// JobManager: submission, cancel, worker reports and queries. Supervision (the loop,
// launches, exits, restarts, recovery) is in job_supervision.cc.
#include "jobs/job_manager.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dsv3/procs/host.h"
#include "dsv3/procs/log.h"
#include "jobs/job_config.h"
#include "allocators/slurm_allocator.h"
#include "jobs/job_manager_internal.h"

namespace dsv3::server {
namespace fs = std::filesystem;

JobManager::JobManager(JobStore& store, Allocator& allocator, ManagerOptions options)
    : store_(store), allocator_(allocator), options_(std::move(options)) {
  controller_address_ = options_.controller_address;
  allocator_.SetExitCallback([this](const RankExit& e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      exits_.push_back(e);
    }
    cv_.notify_all();
  });
  allocator_.SetAllocationCallback([this](const AllocationUpdate& u) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      allocation_updates_.push_back(u);
    }
    cv_.notify_all();
  });
}

JobManager::~JobManager() {
  Stop();
  allocator_.SetExitCallback(nullptr);
  allocator_.SetAllocationCallback(nullptr);
}

void JobManager::SetControllerAddress(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  controller_address_ = address;
}

void JobManager::Poke() { cv_.notify_all(); }

int JobManager::QueueLength() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [id, l] : live_) n += l->job.state == JobState::kQueued ? 1 : 0;
  return n;
}

std::string JobManager::LogPath(const JobRecord& job, int rank) const { return RankLogPath(job, rank); }

namespace {

constexpr size_t kMaxNameLength = 128;

}  // namespace

SubmitOutcome JobManager::Validate(const SubmitRequest& request) const {
  SubmitOutcome out;
  SubmitRequest r = request;
  // 0 ranks: what the config implies (the slurm section when enabled, else
  // data_parallel_size x tp x pp when explicit, else 1).
  const PreparedConfig prepared = PrepareJobConfig(r.config_json, std::max(0, r.num_ranks), r.resume_from, r.base_dir,
                                                   r.paths != nullptr ? *r.paths : PathPolicy{});
  if (r.num_ranks == 0) r.num_ranks = static_cast<int>(std::max<int64_t>(1, prepared.world_size));
  if (r.num_ranks < 1) {
    out.errors.push_back({"num_ranks", std::to_string(r.num_ranks) + " is not a rank count; give 1 or more",
                          kProblemInvalidRequest});
  } else {
    // Whether the job's allocator can ever run it (slots, the Slurm layout); problems of
    // the config itself are reported below, field by field.
    JobRecord probe;
    probe.num_ranks = r.num_ranks;
    probe.plan = prepared.plan;
    if (std::optional<FieldProblem> problem = allocator_.CanRun(probe)) {
      if (problem->code == kProblemExceedsCapacity) problem->message += "; submit with fewer ranks (--gpus)";
      out.errors.push_back(std::move(*problem));
    }
    // A job the host cannot hold by the estimator would die in its first allocation, every
    // attempt: refuse it now with the numbers.
    const std::optional<double> host = allocator_.HostMemoryBytes(probe);
    if (host && prepared.ok() && prepared.memory_per_rank * r.num_ranks > *host) {
      char text[400];
      std::snprintf(text, sizeof(text),
                    "the estimator puts this job at %.1f GiB (%d rank(s) x %.1f GiB: %s) but this host has %.1f GiB "
                    "of memory; make the model smaller (vocab_size, layers, widths) or run fewer ranks per host",
                    prepared.memory_per_rank * r.num_ranks / 1073741824.0, r.num_ranks,
                    prepared.memory_per_rank / 1073741824.0, prepared.memory_breakdown.c_str(), *host / 1073741824.0);
      out.errors.push_back({"/model", text, kProblemExceedsCapacity});
    }
  }
  const bool control_chars =
      std::any_of(r.name.begin(), r.name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
  if (r.name.size() > kMaxNameLength || control_chars) {
    out.errors.push_back({"name", "a job name has at most " + std::to_string(kMaxNameLength) +
                                      " characters and no control characters (got " + std::to_string(r.name.size()) +
                                      " characters)",
                          kProblemInvalidRequest});
  }
  out.errors.insert(out.errors.end(), prepared.errors.begin(), prepared.errors.end());
  out.warnings = prepared.warnings;
  out.resolved_json = prepared.ok() ? prepared.resolved.dump(2) : "";
  out.job.name = r.name.empty() ? prepared.experiment_name : r.name;
  out.job.experiment_name = prepared.experiment_name;
  out.job.num_ranks = r.num_ranks;
  out.job.priority = r.priority;
  out.job.total_steps = prepared.total_steps;
  out.job.max_restarts = static_cast<int>(prepared.max_restarts);
  out.job.resume_from = r.resume_from;
  out.job.working_dir = r.base_dir;
  out.job.config_json = out.resolved_json;
  out.job.plan = prepared.plan;
  if (!out.errors.empty()) {
    std::string msg = "invalid job (" + std::to_string(out.errors.size()) + (out.errors.size() == 1 ? " error)" : " errors)");
    for (const auto& e : out.errors) msg += "\n" + e.path + ": " + e.message;
    out.status = absl::InvalidArgumentError(msg);
    return out;
  }
  // As the config names them; Submit places them in the job's folder.
  out.job.output_dir = prepared.output_dir;
  out.job.checkpoint_dir = prepared.checkpoint_dir;
  out.job.tensorboard_dir = prepared.tensorboard_dir;
  // The plan: what would start, as the job's allocator would start it.
  JobRecord shown = out.job;
  shown.id = 0;
  shown.attempt = 1;
  shown.job_dir = options_.state_dir + "/jobs/<id>";
  shown.credential = "<per-job credential>";
  const bool slurm = allocator_.Name() == "slurm" || shown.plan.WantsSlurm();
  std::ostringstream plan;
  plan << "allocator " << (slurm ? std::string("slurm") : allocator_.Name()) << ": " << r.num_ranks << " rank(s)";
  if (!slurm) plan << " (" << allocator_.FreeSlots() << " of " << allocator_.TotalSlots() << " slots free now)";
  plan << "\nranks run in " << shown.job_dir << "; outputs: " << prepared.output_dir
       << ", checkpoints: " << prepared.checkpoint_dir << "\n"
       << "max_restarts " << prepared.max_restarts << ", train_steps " << prepared.total_steps << "\n";
  Placement placement;
  placement.hosts.assign(r.num_ranks, "<host>");
  placement.master_addr = "<rank 0's host>";
  if (!slurm && allocator_.Name() == "local") {
    placement.hosts.assign(r.num_ranks, "localhost");
    placement.master_addr = "127.0.0.1";
  }
  plan << allocator_.DescribeLaunch(BuildLaunchSpec(shown, placement, r.resume_from));
  if (!prepared.grid.empty()) {
    // Ranks are placed in rank order, so each tensor-parallel group's neighbours share a host.
    plan << "\nparallel grid (rank = (pp x dp_size + dp) x tp_size + tp; ep inside dp):\n";
    constexpr size_t kShown = 64;
    for (size_t i = 0; i < prepared.grid.size() && i < kShown; ++i) plan << "  " << prepared.grid[i] << "\n";
    if (prepared.grid.size() > kShown) plan << "  ... " << prepared.grid.size() - kShown << " more ranks\n";
  }
  out.plan = plan.str();
  return out;
}

SubmitOutcome JobManager::Submit(const SubmitRequest& r) {
  SubmitOutcome out = Validate(r);
  if (!out.status.ok() || r.dry_run) return out;
  JobRecord job = out.job;
  job.owner = r.owner;
  job.config_json = out.resolved_json;
  job.credential = procs::RandomHex(24);
  job.state_reason = "submitted" + (r.config_path.empty() ? std::string() : " from " + r.config_path);
  std::lock_guard<std::mutex> lock(mu_);
  if (r.max_jobs > 0 || r.max_slots > 0) {
    // Every job not yet ended is in live_ (recovered at start, added at submit).
    int jobs = 0, slots = 0;
    for (const auto& [id, other] : live_) {
      if (other->job.owner != job.owner) continue;
      ++jobs;
      slots += other->job.num_ranks;
    }
    if (r.max_jobs > 0 && jobs + 1 > r.max_jobs) {
      out.status = absl::ResourceExhaustedError(
          "user '" + job.owner + "' has " + std::to_string(jobs) + " job(s) not yet ended; the limit is " +
          std::to_string(r.max_jobs) + " (max_jobs); wait for one to end or cancel one");
      return out;
    }
    if (r.max_slots > 0 && slots + job.num_ranks > r.max_slots) {
      out.status = absl::ResourceExhaustedError(
          "user '" + job.owner + "' has " + std::to_string(slots) + " rank(s) in jobs not yet ended and asks for " +
          std::to_string(job.num_ranks) + " more; the limit is " + std::to_string(r.max_slots) + " (max_slots)");
      return out;
    }
  }
  if (absl::Status s = store_.CreateJob(job); !s.ok()) {
    out.status = s;
    return out;
  }
  // The job's folder and the exact config its ranks read.
  job.job_dir = options_.state_dir + "/jobs/" + std::to_string(job.id);
  job.output_dir = AbsoluteUnder(job.job_dir, out.job.output_dir);
  job.checkpoint_dir = AbsoluteUnder(job.job_dir, out.job.checkpoint_dir);
  job.tensorboard_dir = out.job.tensorboard_dir.empty() ? "" : AbsoluteUnder(job.job_dir, out.job.tensorboard_dir);
  std::error_code ec;
  fs::create_directories(job.job_dir + "/logs", ec);
  {
    std::ofstream f(job.job_dir + "/config.json");
    f << job.config_json << "\n";
    if (ec || !f) {
      const std::string why = "cannot write " + job.job_dir + "/config.json" + (ec ? ": " + ec.message() : "");
      (void)store_.SetState(job.id, JobState::kFailed, why, 0);
      out.status = absl::InternalError(why);
      return out;
    }
  }
  if (absl::Status s = store_.UpdateJob(job); !s.ok()) {
    out.status = s;
    return out;
  }
  auto live = std::make_unique<Live>();
  live->job = job;
  live_[job.id] = std::move(live);
  out.job = job;
  cv_.notify_all();
  return out;
}

absl::StatusOr<JobRecord> JobManager::Cancel(int64_t job_id, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(job_id);
  if (it == live_.end()) {
    auto job = store_.GetJob(job_id);
    if (!job) return absl::NotFoundError("no job " + std::to_string(job_id));
    return absl::FailedPreconditionError("job " + std::to_string(job_id) + " already ended " +
                                         JobStateName(job->state) + ": " + job->state_reason);
  }
  Live& live = *it->second;
  const std::string why = reason.empty() ? "canceled by user" : "canceled: " + reason;
  if (live.job.state == JobState::kQueued) {
    EndJobLocked(live, JobState::kCanceled, why + " while queued");
    return *store_.GetJob(job_id);
  }
  if (live.job.cancel_requested) return live.job;
  live.job.cancel_requested = true;
  if (absl::Status s = store_.UpdateJob(live.job); !s.ok()) return s;
  SetStateLocked(live, live.job.state, why + "; stopping ranks (SIGTERM, checkpoint, SIGKILL after " +
                                            std::to_string(options_.grace_period.count() / 1000) + " s)");
  if (live.phase == Phase::kRunning) {
    live.phase = Phase::kStopping;
    live.stop_deadline = Clock::now() + options_.grace_period;
    allocator_.Signal(job_id, SIGTERM);
  }
  // kFailing: ranks are being killed already; the attempt ends as CANCELED instead of
  // restarting. kIdle (RESTARTING between attempts) ends at the next supervision pass.
  cv_.notify_all();
  return live.job;
}

absl::Status JobManager::RequestCheckpoint(int64_t job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(job_id);
  if (it == live_.end() || it->second->phase != Phase::kRunning) {
    return absl::FailedPreconditionError("job " + std::to_string(job_id) + " is not running");
  }
  for (auto& r : it->second->ranks) r.checkpoint_requested = true;
  return absl::OkStatus();
}

// ------------------------------------------------------------------ worker reports

absl::StatusOr<JobManager::Live*> JobManager::CheckRefLocked(const RankRef& ref) {
  if (!recovered_) return absl::UnavailableError("dsv3d is recovering its jobs; retry");
  auto it = live_.find(ref.job_id);
  if (it == live_.end()) {
    // Same answer for a finished and an unknown job: a rank of either must stop.
    return absl::FailedPreconditionError("job " + std::to_string(ref.job_id) + " is not active");
  }
  Live& live = *it->second;
  if (!procs::SameSecret(ref.credential, live.job.credential)) {
    return absl::PermissionDeniedError("wrong credential for job " + std::to_string(ref.job_id));
  }
  if (ref.attempt != live.job.attempt || live.ranks.empty()) {
    return absl::FailedPreconditionError("attempt " + std::to_string(ref.attempt) + " of job " +
                                         std::to_string(ref.job_id) + " is over (current attempt " +
                                         std::to_string(live.job.attempt) + ")");
  }
  if (ref.rank < 0 || ref.rank >= static_cast<int>(live.ranks.size())) {
    return absl::InvalidArgumentError("rank " + std::to_string(ref.rank) + " is outside the job's " +
                                      std::to_string(live.ranks.size()) + " ranks");
  }
  return &live;
}

absl::StatusOr<int> JobManager::RegisterRank(const RankRef& ref, int64_t pid, const std::string& host) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  RankLive& r = (*live)->ranks[ref.rank];
  if (pid > 0 && r.pid > 0 && pid != r.pid) {
    return absl::FailedPreconditionError("rank " + std::to_string(ref.rank) + " is process " +
                                         std::to_string(r.pid) + ", not " + std::to_string(pid));
  }
  // Slurm and agents start ranks remotely: the rank itself tells its pid (and, under Slurm,
  // its host). An agent's name stays the rank's host: recovery finds the agent by it.
  if (r.pid == 0) r.pid = pid;
  if (!host.empty() && r.host.empty()) r.host = host;
  MarkSeenLocked(**live, ref.rank);
  return static_cast<int>(options_.heartbeat_interval.count());
}

absl::StatusOr<HeartbeatReply> JobManager::Heartbeat(const RankRef& ref, int64_t step, const RankState* progress) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  Live& l = **live;
  MarkSeenLocked(l, ref.rank);
  RankLive& r = l.ranks[ref.rank];
  r.step = std::max(r.step, step);
  if (progress != nullptr) {
    if (Progressed(r.progress, *progress)) r.progressed_at = Clock::now();
    // One step-time sample per step a rank completed (the hang timeout's p99).
    if (progress->step != r.progress.step && progress->last_step_seconds > 0) {
      l.step_seconds.push_back(progress->last_step_seconds);
      if (l.step_seconds.size() > 512) l.step_seconds.pop_front();
    }
    r.progress = *progress;
    r.progress.reported = true;
  }
  // Between log intervals the heartbeat is the freshest word on progress.
  l.progress.step = std::max(l.progress.step, step);
  UpdateEtaLocked(l);
  HeartbeatReply reply;
  if (l.phase == Phase::kRunning && !l.dump_dirs.empty() && r.dumped_request < l.dump_dirs.rbegin()->first) {
    reply.dump_request = l.dump_dirs.rbegin()->first;
  }
  if (l.phase == Phase::kStopping || l.phase == Phase::kFailing) {
    reply.command = RankCommand::kStop;
  } else if (r.checkpoint_requested) {
    r.checkpoint_requested = false;
    reply.command = RankCommand::kCheckpointNow;
  }
  return reply;
}

absl::Status JobManager::ReportDiagnostics(const RankRef& ref, int64_t request, const std::string& text) {
  std::string dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto live = CheckRefLocked(ref);
    if (!live.ok()) return live.status();
    Live& l = **live;
    const auto it = l.dump_dirs.find(request);
    if (it == l.dump_dirs.end()) {
      return absl::InvalidArgumentError("dump_request: " + std::to_string(request) + " was not asked for");
    }
    dir = it->second;
    RankLive& r = l.ranks[ref.rank];
    r.dumped_request = std::max(r.dumped_request, request);
    cv_.notify_all();  // a hang waits for the last dump
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string path = dir + "/rank_" + std::to_string(ref.rank) + ".txt";
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobManager::RequestDump(int64_t job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(job_id);
  if (it == live_.end() || it->second->phase != Phase::kRunning || it->second->ranks.empty()) {
    return absl::FailedPreconditionError("job " + std::to_string(job_id) + " has no running ranks to dump");
  }
  Live& l = *it->second;
  const std::string dir = DiagnosticsDir(l.job, l.job.attempt) + "/dump_" + std::to_string(NowMs());
  AddDumpRequestLocked(l, dir);
  log::Info("job " + std::to_string(job_id) + ": dumps requested from " + std::to_string(l.ranks.size()) +
           " rank(s) into " + dir);
  return dir;
}

absl::Status JobManager::ReportMetrics(const RankRef& ref, const std::vector<MetricRow>& rows) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  Live& l = **live;
  MarkSeenLocked(l, ref.rank);
  if (absl::Status s = store_.AddMetrics(ref.job_id, ref.attempt, rows); !s.ok()) return s;
  for (const auto& m : rows) {
    l.progress.latest[m.name] = m.value;
    l.progress.step = std::max(l.progress.step, m.step);
  }
  UpdateEtaLocked(l);
  return absl::OkStatus();
}

absl::Status JobManager::ReportCheckpoint(const RankRef& ref, const CheckpointRecord& ckpt) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  CheckpointRecord c = ckpt;
  c.path = AbsoluteUnder((*live)->job.job_dir, c.path);  // relative paths are the rank's, i.e. the job folder's
  // A rank records only checkpoints of its own job: ListCheckpoints shows them to the job's
  // owner, and a path elsewhere would point them at someone else's files.
  const fs::path rel = fs::path(c.path).lexically_relative((*live)->job.checkpoint_dir);
  if (rel.empty() || *rel.begin() == "..") {
    return absl::InvalidArgumentError("path: " + c.path + " is not inside the job's checkpoint folder " +
                                      (*live)->job.checkpoint_dir);
  }
  if (absl::Status s = store_.AddCheckpoint(ref.job_id, c); !s.ok()) return s;
  JobProgress& p = (*live)->progress;
  p.last_checkpoint = c.path;
  p.last_checkpoint_step = c.step;
  p.last_checkpoint_ms = c.time_ms;
  p.step = std::max(p.step, c.step);
  return absl::OkStatus();
}

absl::Status JobManager::ReportEvaluation(const RankRef& ref, const EvaluationRecord& eval) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  if (absl::Status s = store_.AddEvaluation(ref.job_id, eval); !s.ok()) return s;
  // Also as series, so `dsv3ctl metrics` and GetMetrics show the validation curve.
  if (absl::Status s = store_.AddMetrics(ref.job_id, ref.attempt,
                                         {{eval.step, "val_loss", eval.loss, eval.time_ms},
                                          {eval.step, "val_perplexity", eval.perplexity, eval.time_ms}});
      !s.ok()) {
    return s;
  }
  (*live)->progress.val_loss = eval.loss;
  return absl::OkStatus();
}

absl::Status JobManager::ShipLogs(const RankRef& ref, const std::vector<std::string>& lines) {
  std::string path;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto live = CheckRefLocked(ref);
    if (!live.ok()) return live.status();
    path = LogPath((*live)->job, ref.rank);
  }
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  return procs::AppendToLog(path, text);
}

absl::Status JobManager::ReportEnd(const RankRef& ref, RankOutcome outcome, int64_t step, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = CheckRefLocked(ref);
  if (!live.ok()) return live.status();
  RankLive& r = (*live)->ranks[ref.rank];
  r.outcome = outcome;
  r.step = std::max(r.step, step);
  r.end_message = message;
  return absl::OkStatus();
}

// ------------------------------------------------------------------ queries

JobProgress JobManager::Progress(const JobRecord& job) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(job.id);
    if (it != live_.end()) return SnapshotLocked(*it->second);
    auto f = finished_.find(job.id);
    if (f != finished_.end()) return f->second;
  }
  // A job that ended before this dsv3d started: rebuild from the store.
  JobProgress p;
  for (const auto& [name, row] : store_.LatestMetrics(job.id)) {
    p.latest[name] = row.value;
    p.step = std::max(p.step, row.step);
  }
  const auto ckpts = store_.Checkpoints(job.id);
  if (!ckpts.empty()) {
    p.last_checkpoint = ckpts.back().path;
    p.last_checkpoint_step = ckpts.back().step;
    p.last_checkpoint_ms = ckpts.back().time_ms;
  }
  const auto evals = store_.Evaluations(job.id);
  if (!evals.empty()) p.val_loss = evals.back().loss;
  for (const auto& r : store_.Ranks(job.id, job.attempt)) {
    RankView v;
    v.rank = r.rank;
    v.pid = r.pid;
    v.host = r.host;
    v.log_path = r.log_path;
    v.state = r.state;
    v.exit_code = r.exit_code;
    p.ranks.push_back(std::move(v));
  }
  return p;
}

}  // namespace dsv3::server
