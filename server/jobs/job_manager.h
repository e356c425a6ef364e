// Scheduling and supervision: the queue (priority, then submission order), admission when
// the allocator has free slots, launching each attempt's ranks, watching them (exit status,
// heartbeats), cancel with a grace period, restarts from the newest intact checkpoint up to
// the job's max_restarts, and recovery of every job after a controller restart.
//
// Every state change is committed to the JobStore before it is acted on. Thread-safe: the
// gRPC handlers call in from many threads; one supervision thread (Start/Stop) does the
// periodic work. Calls block only on the store and on fork/exec.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocators/allocator.h"
#include "jobs/watchdog.h"
#include "store/job_store.h"

namespace dsv3::server {

struct ManagerOptions {
  std::string state_dir;           // jobs/<id>/ are created here
  std::string worker_path;         // the dsv3-worker binary ranks run
  std::string controller_address;  // host:port the ranks report to (or SetControllerAddress)
  std::string controller_ca;       // PEM the ranks verify a TLS controller with ("" = plaintext)
  std::chrono::milliseconds heartbeat_interval{2000};
  std::chrono::milliseconds heartbeat_timeout{60000};  // a registered rank silent this long fails the attempt
  std::chrono::milliseconds startup_timeout{600000};   // launch -> first registration
  std::chrono::milliseconds grace_period{60000};       // SIGTERM -> SIGKILL on cancel
  int threads_per_rank = 0;        // 0: cores / slots (when the config sets no intra_op_threads)
  // Metric points of jobs ended longer ago than this are pruned to each series' last point
  // (checked hourly); 0 keeps everything.
  std::chrono::hours metrics_retention{24 * 30};
};

// Where a confined (remote, non-admin) user's job may write and read: job_config.h.
struct PathPolicy;

struct SubmitRequest {
  std::string config_json, name, owner, resume_from, base_dir, config_path;
  int num_ranks = 1, priority = 0;
  bool dry_run = false;
  const PathPolicy* paths = nullptr;  // nullptr: the paths the config names, unchecked
  // The owner's limits over jobs not yet ended (0 = none): more is RESOURCE_EXHAUSTED.
  int max_jobs = 0, max_slots = 0;
};

struct SubmitOutcome {
  absl::Status status;  // INVALID_ARGUMENT with `errors` when the config is refused
  std::vector<FieldProblem> errors, warnings;
  JobRecord job;        // id 0 for a dry run
  std::string plan, resolved_json;
};

struct RankRef {
  int64_t job_id = 0;
  int attempt = 0, rank = 0;
  std::string credential;
};

enum class RankCommand { kNone = 0, kStop = 1, kCheckpointNow = 2 };
enum class RankOutcome { kUnspecified = 0, kFinished = 1, kStopped = 2, kFailed = 3 };

struct RankView {
  int rank = 0;
  int64_t pid = 0;
  std::string host, log_path, state;
  int exit_code = 0;
  int64_t last_heartbeat_ms = 0;
  // From the heartbeats' progress (jobs/watchdog.h).
  std::string phase;
  int64_t step = 0;
  double step_seconds = 0, busy_seconds = 0, busy_ratio = 0;
  bool straggler = false;
};

struct HeartbeatReply {
  RankCommand command = RankCommand::kNone;
  int64_t dump_request = 0;  // > 0: the rank should send its dump for this request
};

// What the store does not hold cheaply: the live progress of a job.
struct JobProgress {
  int64_t step = 0;
  std::map<std::string, double> latest;  // newest value of every metric series
  std::optional<double> eta_seconds, val_loss;
  std::string last_checkpoint;
  int64_t last_checkpoint_step = 0, last_checkpoint_ms = 0;
  std::vector<RankView> ranks;
};

class JobManager {
 public:
  JobManager(JobStore& store, Allocator& allocator, ManagerOptions options);
  ~JobManager();

  // Where ranks report, once the gRPC port is bound (port 0 picks one). Before Start().
  void SetControllerAddress(const std::string& address);
  // Rebuilds the queue and the running jobs from the store; adopts live ranks. Call once,
  // before Start(). Worker reports before it answer UNAVAILABLE (ranks retry).
  absl::Status Recover();
  void Start();  // the supervision thread
  void Stop();   // stops supervising; ranks keep running (a restarted dsv3d adopts them)

  SubmitOutcome Validate(const SubmitRequest& request) const;  // dry run, nothing written
  SubmitOutcome Submit(const SubmitRequest& request);
  // QUEUED jobs end at once; running ones get SIGTERM, then SIGKILL after the grace period.
  absl::StatusOr<JobRecord> Cancel(int64_t job_id, const std::string& reason);
  absl::Status RequestCheckpoint(int64_t job_id);
  // Asks every rank of a running job for its dump (stacks and flight recorder) without
  // stopping it; returns the folder the dumps are written to.
  absl::StatusOr<std::string> RequestDump(int64_t job_id);

  // Worker reports. Each checks the job, attempt and credential.
  absl::StatusOr<int> RegisterRank(const RankRef& ref, int64_t pid, const std::string& host);  // -> heartbeat ms
  // `progress` is nullptr from a rank that sends none.
  absl::StatusOr<HeartbeatReply> Heartbeat(const RankRef& ref, int64_t step, const RankState* progress);
  // A rank's dump (stacks, flight recorder), written under the job's diagnostics folder.
  absl::Status ReportDiagnostics(const RankRef& ref, int64_t request, const std::string& text);
  absl::Status ReportMetrics(const RankRef& ref, const std::vector<MetricRow>& rows);
  absl::Status ReportCheckpoint(const RankRef& ref, const CheckpointRecord& ckpt);
  absl::Status ReportEvaluation(const RankRef& ref, const EvaluationRecord& eval);
  absl::Status ShipLogs(const RankRef& ref, const std::vector<std::string>& lines);
  absl::Status ReportEnd(const RankRef& ref, RankOutcome outcome, int64_t step, const std::string& message);

  JobProgress Progress(const JobRecord& job) const;
  int QueueLength() const;
  std::string LogPath(const JobRecord& job, int rank) const;
  // Wakes the supervision thread (tests, and after events that need prompt action).
  void Poke();

  // Per-job state in memory; defined in job_manager_internal.h, used only there.
  struct Live;
  struct RankLive;

 private:
  using Clock = std::chrono::steady_clock;

  // All *Locked functions run with mu_ held.
  absl::StatusOr<Live*> CheckRefLocked(const RankRef& ref);
  void SuperviseLocked();
  void AdmitLocked();
  void LaunchAttemptLocked(Live& live);
  void OnRankExitLocked(const RankExit& exit);
  void OnAllocationLocked(const AllocationUpdate& update);
  LaunchSpec BuildLaunchSpec(const JobRecord& job, const Placement& placement, const std::string& resume) const;
  void AttemptOverLocked(Live& live);
  void FailAttemptLocked(Live& live, const std::string& reason);
  void EndJobLocked(Live& live, JobState state, const std::string& reason);
  void SetStateLocked(Live& live, JobState state, const std::string& reason);
  void RecordNewestCheckpointLocked(Live& live);
  void WatchLocked(Live& live, Clock::time_point now);  // hangs and stragglers
  void Loop();

  JobStore& store_;
  Allocator& allocator_;
  const ManagerOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool recovered_ = false;
  std::string controller_address_;
  std::map<int64_t, std::unique_ptr<Live>> live_;  // every job not yet terminal
  std::vector<RankExit> exits_;                     // from the allocator, handled by Loop
  std::vector<AllocationUpdate> allocation_updates_;  // likewise
  std::map<int64_t, JobProgress> finished_;         // progress of jobs that ended while we ran
  std::thread thread_;
};

}  // namespace dsv3::server
