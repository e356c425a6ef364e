// The job store: the single source of truth for job state (ARCHITECTURE.md). SQLite in WAL
// mode with numbered schema migrations applied at open. Every state change is a row written
// (and committed) before the controller acts on it, so a restarted dsv3d recovers every job.
//
// Thread-safe: every call takes the store's mutex; calls block on disk I/O.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "store/job_plan.h"

namespace dsv3::server {

// Values match dsv3.v1.JobState.
enum class JobState { kQueued = 1, kStarting = 2, kRunning = 3, kRestarting = 4, kCompleted = 5, kFailed = 6, kCanceled = 7 };

const char* JobStateName(JobState s);  // "QUEUED", ...
bool IsTerminal(JobState s);

struct JobRecord {
  int64_t id = 0;
  std::string name, owner, experiment_name;
  std::string config_json;   // the resolved config the ranks read
  JobPlan plan;              // what dsv3d reads of that config, parsed once at submit
  std::string resume_from;   // the submit's resume point ("" = none)
  std::string working_dir;   // where relative input paths were resolved
  std::string job_dir;       // <state-dir>/jobs/<id>: the ranks' working folder
  std::string output_dir, checkpoint_dir, tensorboard_dir;  // absolute
  std::string credential;    // the per-job secret ranks present when they report
  int num_ranks = 1, priority = 0;
  int attempt = 0, restarts = 0, max_restarts = 0;
  JobState state = JobState::kQueued;
  std::string state_reason;
  bool cancel_requested = false;
  int master_port = 0;
  int64_t total_steps = 0;
  int64_t created_ms = 0, started_ms = 0, finished_ms = 0;
};

struct StateEvent {
  int64_t time_ms = 0;
  JobState state = JobState::kQueued;
  std::string reason;
  int attempt = 0;
};

struct RankRecord {
  int64_t job_id = 0;
  int attempt = 0, rank = 0;
  int64_t pid = 0;
  int64_t proc_start = 0;  // the process's start time (clock ticks since boot): pids are reused
  std::string host, log_path;
  std::string state;       // launched | registered | exited
  int exit_code = 0;
  int64_t started_ms = 0, ended_ms = 0;
};

struct MetricRow {
  int64_t step = 0;
  std::string name;
  double value = 0;
  int64_t time_ms = 0;
};

struct CheckpointRecord {
  int64_t step = 0;
  std::string path, reason;
  std::optional<double> val_loss;
  int64_t time_ms = 0;
};

struct EvaluationRecord {
  int64_t step = 0;
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
  std::map<std::string, double> per_source_loss;
  std::string sample;
  int64_t time_ms = 0;
};

// One attempt's allocation in an external scheduler (a Slurm job), as last seen.
struct AllocationRecord {
  int64_t job_id = 0;
  int attempt = 0;
  std::string allocator, external_id, state, reason;
  int64_t updated_ms = 0;
};

// A user of a shared controller (dsv3d user add). Limits of 0 take the daemon's defaults.
struct UserRecord {
  std::string name;
  bool admin = false;
  int max_jobs = 0;   // jobs not yet ended at once
  int max_slots = 0;  // ranks of those jobs together
  int64_t created_ms = 0;
};

// A bearer credential; only its SHA-256 is stored. kind "user": subject is a user name;
// kind "agent": subject is the dsv3-agent name it admits.
struct TokenRecord {
  int64_t id = 0;
  std::string kind, subject, label;
  int64_t created_ms = 0, revoked_ms = 0;  // revoked_ms 0: valid
};

struct JobFilter {
  std::vector<JobState> states;  // empty = all
  std::string owner, name_contains;
  int limit = 100;               // newest first
};

class JobStore {
 public:
  // Opens (creating) the database at `path` (":memory:" for tests), enables WAL and applies
  // the migrations this build knows. Fails when the file is not a dsv3 store or was written
  // by a newer schema.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();

  int SchemaVersion() const;
  static int LatestSchemaVersion();

  // Inserts the job (state QUEUED with its first history row) and sets job.id.
  absl::Status CreateJob(JobRecord& job);
  // Writes the new state, its reason and a history row in one transaction; stamps
  // started_ms on the first STARTING and finished_ms on a terminal state.
  absl::Status SetState(int64_t job_id, JobState state, const std::string& reason, int attempt);
  // Writes the mutable bookkeeping fields (attempt, restarts, cancel_requested, master_port,
  // job_dir and paths, config_json); never the state (use SetState).
  absl::Status UpdateJob(const JobRecord& job);
  std::optional<JobRecord> GetJob(int64_t job_id) const;
  // Just the state: what log followers poll, without reading the config.
  std::optional<JobState> GetState(int64_t job_id) const;
  std::vector<JobRecord> ListJobs(const JobFilter& filter) const;
  // Jobs not in a terminal state, oldest first: what the controller recovers at start.
  std::vector<JobRecord> ActiveJobs() const;
  std::vector<StateEvent> History(int64_t job_id) const;
  std::map<JobState, int64_t> CountByState() const;
  int64_t TotalRestarts() const;  // over every job ever stored

  absl::Status UpsertRank(const RankRecord& rank);
  std::vector<RankRecord> Ranks(int64_t job_id, int attempt) const;

  absl::Status AddMetrics(int64_t job_id, int attempt, const std::vector<MetricRow>& rows);
  // Points with step > since_step, by name then step; empty `names` = all series.
  std::vector<MetricRow> Metrics(int64_t job_id, const std::vector<std::string>& names, int64_t since_step) const;
  // The newest point of every series of a job.
  std::map<std::string, MetricRow> LatestMetrics(int64_t job_id) const;
  // Deletes the metric points of jobs that ended (COMPLETED, FAILED, CANCELED) before
  // `ended_before_ms`, keeping each series' last point: the final values that status, the
  // job's page and /metrics show. Returns how many points went.
  absl::StatusOr<int64_t> PruneMetrics(int64_t ended_before_ms);

  absl::Status AddCheckpoint(int64_t job_id, const CheckpointRecord& ckpt);
  std::vector<CheckpointRecord> Checkpoints(int64_t job_id) const;  // by step

  absl::Status UpsertAllocation(const AllocationRecord& allocation);
  std::vector<AllocationRecord> Allocations(int64_t job_id) const;  // by attempt

  absl::Status AddEvaluation(int64_t job_id, const EvaluationRecord& eval);
  std::vector<EvaluationRecord> Evaluations(int64_t job_id) const;  // by step

  // Users and tokens (job_store_users.cc). AddUser fails ALREADY_EXISTS for a known name.
  absl::Status AddUser(const UserRecord& user);
  std::optional<UserRecord> GetUser(const std::string& name) const;
  std::vector<UserRecord> Users() const;  // by name
  int64_t CountUsers() const;
  // Stores a token by its hash; returns it with its id.
  absl::StatusOr<TokenRecord> AddToken(const std::string& sha256_hex, const std::string& kind,
                                       const std::string& subject, const std::string& label);
  // The valid (not revoked) token with this hash.
  std::optional<TokenRecord> FindToken(const std::string& sha256_hex) const;
  std::vector<TokenRecord> Tokens() const;  // by id, revoked ones included
  // NOT_FOUND for an unknown id; revoking twice is fine.
  absl::Status RevokeToken(int64_t id);

 private:
  struct Impl;
  explicit JobStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

int64_t NowMs();  // wall clock, milliseconds since the epoch

}  // namespace dsv3::server
