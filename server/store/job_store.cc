#include "store/job_store.h"

#include <chrono>
#include <mutex>

#include <nlohmann/json.hpp>

#include "store/job_store_internal.h"

namespace dsv3::server {
namespace {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::Transaction;

constexpr const char* kJobColumns =
    "id, name, owner, experiment_name, config_json, resume_from, working_dir, job_dir, output_dir, "
    "checkpoint_dir, tensorboard_dir, credential, num_ranks, priority, attempt, restarts, max_restarts, "
    "state, state_reason, cancel_requested, master_port, total_steps, created_ms, started_ms, finished_ms, plan_json";

JobRecord ReadJob(const Stmt& s) {
  JobRecord j;
  int c = 0;
  j.id = s.Int(c++);
  j.name = s.Text(c++);
  j.owner = s.Text(c++);
  j.experiment_name = s.Text(c++);
  j.config_json = s.Text(c++);
  j.resume_from = s.Text(c++);
  j.working_dir = s.Text(c++);
  j.job_dir = s.Text(c++);
  j.output_dir = s.Text(c++);
  j.checkpoint_dir = s.Text(c++);
  j.tensorboard_dir = s.Text(c++);
  j.credential = s.Text(c++);
  j.num_ranks = static_cast<int>(s.Int(c++));
  j.priority = static_cast<int>(s.Int(c++));
  j.attempt = static_cast<int>(s.Int(c++));
  j.restarts = static_cast<int>(s.Int(c++));
  j.max_restarts = static_cast<int>(s.Int(c++));
  j.state = static_cast<JobState>(s.Int(c++));
  j.state_reason = s.Text(c++);
  j.cancel_requested = s.Int(c++) != 0;
  j.master_port = static_cast<int>(s.Int(c++));
  j.total_steps = s.Int(c++);
  j.created_ms = s.Int(c++);
  j.started_ms = s.Int(c++);
  j.finished_ms = s.Int(c++);
  j.plan = PlanFromJson(s.Text(c++)).value_or(JobPlan{});
  return j;
}

}  // namespace

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kStarting: return "STARTING";
    case JobState::kRunning: return "RUNNING";
    case JobState::kRestarting: return "RESTARTING";
    case JobState::kCompleted: return "COMPLETED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCanceled: return "CANCELED";
  }
  return "UNKNOWN";
}

bool IsTerminal(JobState s) {
  return s == JobState::kCompleted || s == JobState::kFailed || s == JobState::kCanceled;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}


JobStore::JobStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JobStore::~JobStore() = default;

int JobStore::LatestSchemaVersion() { return static_cast<int>(Migrations().size()); }
int JobStore::SchemaVersion() const { return impl_->version; }

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  try {
    auto impl = std::make_unique<Impl>(path);
    Db& db = impl->db;
    // WAL: readers (status, metrics scrapes) never block the writer; NORMAL sync is
    // durable across process crashes, which is what recovery needs.
    db.Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
    {
      Stmt q(db, "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'");
      bool has_tables = false, has_meta = false;
      while (q.Step()) {
        has_tables = true;
        if (q.Text(0) == "dsv3_schema") has_meta = true;
      }
      if (has_tables && !has_meta) {
        return absl::FailedPreconditionError(path + " is an SQLite database but not a dsv3 job store");
      }
    }
    db.Exec("CREATE TABLE IF NOT EXISTS dsv3_schema (version INTEGER NOT NULL)");
    {
      Stmt q(db, "SELECT version FROM dsv3_schema");
      if (q.Step()) impl->version = static_cast<int>(q.Int(0));
    }
    const auto& migrations = Migrations();
    if (impl->version > static_cast<int>(migrations.size())) {
      return absl::FailedPreconditionError(path + " has schema version " + std::to_string(impl->version) +
                                           "; this dsv3d knows up to " + std::to_string(migrations.size()) +
                                           " (a newer dsv3d wrote it)");
    }
    for (int v = impl->version; v < static_cast<int>(migrations.size()); ++v) {
      Transaction tx(db);
      db.Exec(migrations[v]);
      db.Exec("DELETE FROM dsv3_schema; INSERT INTO dsv3_schema(version) VALUES (" + std::to_string(v + 1) + ")");
      tx.Commit();
      impl->version = v + 1;
    }
    BackfillPlans(db);
    return std::unique_ptr<JobStore>(new JobStore(std::move(impl)));
  } catch (const sqlite::Error& e) {
    return absl::UnavailableError("job store " + path + ": " + e.what());
  }
}

absl::Status JobStore::CreateJob(JobRecord& job) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("create job", [&] {
    Transaction tx(impl_->db);
    if (job.created_ms == 0) job.created_ms = NowMs();
    job.state = JobState::kQueued;
    Stmt s(impl_->db,
           "INSERT INTO jobs (name, owner, experiment_name, config_json, resume_from, working_dir, job_dir, "
           "output_dir, checkpoint_dir, tensorboard_dir, credential, num_ranks, priority, attempt, restarts, "
           "max_restarts, state, state_reason, cancel_requested, master_port, total_steps, created_ms, started_ms, "
           "finished_ms, plan_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,0,?)");
    s.Bind(1, job.name).Bind(2, job.owner).Bind(3, job.experiment_name).Bind(4, job.config_json);
    s.Bind(5, job.resume_from).Bind(6, job.working_dir).Bind(7, job.job_dir).Bind(8, job.output_dir);
    s.Bind(9, job.checkpoint_dir).Bind(10, job.tensorboard_dir).Bind(11, job.credential);
    s.Bind(12, job.num_ranks).Bind(13, job.priority).Bind(14, job.attempt).Bind(15, job.restarts);
    s.Bind(16, job.max_restarts).Bind(17, static_cast<int>(job.state)).Bind(18, job.state_reason);
    s.Bind(19, job.cancel_requested ? 1 : 0).Bind(20, job.master_port).Bind(21, job.total_steps);
    s.Bind(22, job.created_ms).Bind(23, PlanToJson(job.plan));
    s.Run();
    job.id = impl_->db.LastInsertId();
    Stmt e(impl_->db, "INSERT INTO job_events (job_id, time_ms, state, reason, attempt) VALUES (?,?,?,?,?)");
    e.Bind(1, job.id).Bind(2, job.created_ms).Bind(3, static_cast<int>(job.state)).Bind(4, job.state_reason);
    e.Bind(5, job.attempt).Run();
    tx.Commit();
  });
}

absl::Status JobStore::SetState(int64_t job_id, JobState state, const std::string& reason, int attempt) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("set state", [&] {
    Transaction tx(impl_->db);
    const int64_t now = NowMs();
    Stmt s(impl_->db,
           "UPDATE jobs SET state=?, state_reason=?, "
           "started_ms = CASE WHEN ?=2 AND started_ms=0 THEN ? ELSE started_ms END, "
           "finished_ms = CASE WHEN ? THEN ? ELSE finished_ms END WHERE id=?");
    s.Bind(1, static_cast<int>(state)).Bind(2, reason).Bind(3, static_cast<int>(state)).Bind(4, now);
    s.Bind(5, IsTerminal(state) ? 1 : 0).Bind(6, now).Bind(7, job_id).Run();
    if (sqlite3_changes(impl_->db.get()) != 1) throw sqlite::Error("no job " + std::to_string(job_id));
    Stmt e(impl_->db, "INSERT INTO job_events (job_id, time_ms, state, reason, attempt) VALUES (?,?,?,?,?)");
    e.Bind(1, job_id).Bind(2, now).Bind(3, static_cast<int>(state)).Bind(4, reason).Bind(5, attempt).Run();
    tx.Commit();
  });
}

absl::Status JobStore::UpdateJob(const JobRecord& job) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("update job", [&] {
    Stmt s(impl_->db,
           "UPDATE jobs SET attempt=?, restarts=?, cancel_requested=?, master_port=?, job_dir=?, output_dir=?, "
           "checkpoint_dir=?, tensorboard_dir=?, config_json=?, total_steps=?, plan_json=? WHERE id=?");
    s.Bind(1, job.attempt).Bind(2, job.restarts).Bind(3, job.cancel_requested ? 1 : 0).Bind(4, job.master_port);
    s.Bind(5, job.job_dir).Bind(6, job.output_dir).Bind(7, job.checkpoint_dir).Bind(8, job.tensorboard_dir);
    s.Bind(9, job.config_json).Bind(10, job.total_steps).Bind(11, PlanToJson(job.plan)).Bind(12, job.id).Run();
  });
}

std::optional<JobRecord> JobStore::GetJob(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id=?").c_str());
  s.Bind(1, job_id);
  if (!s.Step()) return std::nullopt;
  return ReadJob(s);
}

std::optional<JobState> JobStore::GetState(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, "SELECT state FROM jobs WHERE id=?");
  s.Bind(1, job_id);
  if (!s.Step()) return std::nullopt;
  return static_cast<JobState>(s.Int(0));
}

std::vector<JobRecord> JobStore::ListJobs(const JobFilter& f) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::string sql = std::string("SELECT ") + kJobColumns + " FROM jobs WHERE 1=1";
  if (!f.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < f.states.size(); ++i) sql += (i ? "," : "") + std::to_string(static_cast<int>(f.states[i]));
    sql += ")";
  }
  if (!f.owner.empty()) sql += " AND owner = ?1";
  if (!f.name_contains.empty()) sql += " AND instr(name, ?2) > 0";
  sql += " ORDER BY id DESC LIMIT ?3";
  Stmt s(impl_->db, sql.c_str());
  if (!f.owner.empty()) s.Bind(1, f.owner);
  if (!f.name_contains.empty()) s.Bind(2, f.name_contains);
  s.Bind(3, f.limit > 0 ? f.limit : 100);
  std::vector<JobRecord> out;
  while (s.Step()) out.push_back(ReadJob(s));
  return out;
}

std::vector<JobRecord> JobStore::ActiveJobs() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE state IN (1,2,3,4) ORDER BY id").c_str());
  std::vector<JobRecord> out;
  while (s.Step()) out.push_back(ReadJob(s));
  return out;
}

std::vector<StateEvent> JobStore::History(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, "SELECT time_ms, state, reason, attempt FROM job_events WHERE job_id=? ORDER BY id");
  s.Bind(1, job_id);
  std::vector<StateEvent> out;
  while (s.Step()) {
    out.push_back({s.Int(0), static_cast<JobState>(s.Int(1)), s.Text(2), static_cast<int>(s.Int(3))});
  }
  return out;
}

std::map<JobState, int64_t> JobStore::CountByState() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  std::map<JobState, int64_t> out;
  while (s.Step()) out[static_cast<JobState>(s.Int(0))] = s.Int(1);
  return out;
}

int64_t JobStore::TotalRestarts() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, "SELECT COALESCE(SUM(restarts), 0) FROM jobs");
  return s.Step() ? s.Int(0) : 0;
}

absl::Status JobStore::UpsertRank(const RankRecord& r) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("write rank", [&] {
    Stmt s(impl_->db,
           "INSERT INTO ranks (job_id, attempt, rank, pid, proc_start, host, log_path, state, exit_code, started_ms, "
           "ended_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id, attempt, rank) DO UPDATE SET "
           "pid=excluded.pid, proc_start=excluded.proc_start, host=excluded.host, log_path=excluded.log_path, "
           "state=excluded.state, exit_code=excluded.exit_code, started_ms=excluded.started_ms, "
           "ended_ms=excluded.ended_ms");
    s.Bind(1, r.job_id).Bind(2, r.attempt).Bind(3, r.rank).Bind(4, r.pid).Bind(5, r.proc_start).Bind(6, r.host);
    s.Bind(7, r.log_path).Bind(8, r.state).Bind(9, r.exit_code).Bind(10, r.started_ms).Bind(11, r.ended_ms).Run();
  });
}

std::vector<RankRecord> JobStore::Ranks(int64_t job_id, int attempt) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db,
         "SELECT job_id, attempt, rank, pid, proc_start, host, log_path, state, exit_code, started_ms, ended_ms "
         "FROM ranks WHERE job_id=? AND attempt=? ORDER BY rank");
  s.Bind(1, job_id).Bind(2, attempt);
  std::vector<RankRecord> out;
  while (s.Step()) {
    RankRecord r;
    r.job_id = s.Int(0);
    r.attempt = static_cast<int>(s.Int(1));
    r.rank = static_cast<int>(s.Int(2));
    r.pid = s.Int(3);
    r.proc_start = s.Int(4);
    r.host = s.Text(5);
    r.log_path = s.Text(6);
    r.state = s.Text(7);
    r.exit_code = static_cast<int>(s.Int(8));
    r.started_ms = s.Int(9);
    r.ended_ms = s.Int(10);
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status JobStore::AddMetrics(int64_t job_id, int attempt, const std::vector<MetricRow>& rows) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("add metrics", [&] {
    Transaction tx(impl_->db);
    Stmt s(impl_->db, "INSERT INTO metrics (job_id, attempt, step, name, value, time_ms) VALUES (?,?,?,?,?,?)");
    for (const auto& m : rows) {
      s.Bind(1, job_id).Bind(2, attempt).Bind(3, m.step).Bind(4, m.name).Bind(5, m.value).Bind(6, m.time_ms);
      s.Run();
      s.Reset();
    }
    tx.Commit();
  });
}

std::vector<MetricRow> JobStore::Metrics(int64_t job_id, const std::vector<std::string>& names,
                                         int64_t since_step) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<MetricRow> out;
  const auto read = [&](Stmt& s) {
    while (s.Step()) out.push_back({s.Int(0), s.Text(1), s.Double(2), s.Int(3)});
  };
  if (names.empty()) {
    Stmt s(impl_->db,
           "SELECT step, name, value, time_ms FROM metrics WHERE job_id=? AND step>? ORDER BY "
           "(SELECT MIN(m2.rowid) FROM metrics m2 WHERE m2.job_id=metrics.job_id AND m2.name=metrics.name), "
           "step, rowid");
    s.Bind(1, job_id).Bind(2, since_step);
    read(s);
  } else {
    for (const auto& n : names) {
      Stmt s(impl_->db,
             "SELECT step, name, value, time_ms FROM metrics WHERE job_id=? AND name=? AND step>? "
             "ORDER BY step, rowid");
      s.Bind(1, job_id).Bind(2, n).Bind(3, since_step);
      read(s);
    }
  }
  return out;
}

std::map<std::string, MetricRow> JobStore::LatestMetrics(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  // SQLite's bare-column rule: with MAX(rowid), the other columns come from that row.
  Stmt s(impl_->db,
         "SELECT step, name, value, time_ms, MAX(rowid) FROM metrics WHERE job_id=? GROUP BY name");
  s.Bind(1, job_id);
  std::map<std::string, MetricRow> out;
  while (s.Step()) out[s.Text(1)] = {s.Int(0), s.Text(1), s.Double(2), s.Int(3)};
  return out;
}

absl::StatusOr<int64_t> JobStore::PruneMetrics(int64_t ended_before_ms) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  int64_t deleted = 0;
  absl::Status s = Guarded("prune metrics", [&] {
    Stmt d(impl_->db,
           "WITH ended AS (SELECT id FROM jobs WHERE state IN (5, 6, 7) AND finished_ms > 0 AND finished_ms < ?1) "
           "DELETE FROM metrics WHERE job_id IN ended AND rowid NOT IN "
           "(SELECT MAX(rowid) FROM metrics WHERE job_id IN ended GROUP BY job_id, name)");
    d.Bind(1, ended_before_ms);
    d.Run();
    deleted = sqlite3_changes(impl_->db.get());
  });
  if (!s.ok()) return s;
  return deleted;
}

absl::Status JobStore::AddCheckpoint(int64_t job_id, const CheckpointRecord& c) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("add checkpoint", [&] {
    Stmt s(impl_->db,
           "INSERT INTO checkpoints (job_id, step, path, reason, val_loss, time_ms) VALUES (?,?,?,?,?,?) "
           "ON CONFLICT(job_id, path) DO UPDATE SET step=excluded.step, reason=excluded.reason, "
           "val_loss=COALESCE(excluded.val_loss, checkpoints.val_loss), time_ms=excluded.time_ms");
    s.Bind(1, job_id).Bind(2, c.step).Bind(3, c.path).Bind(4, c.reason).Bind(5, c.val_loss).Bind(6, c.time_ms);
    s.Run();
  });
}

std::vector<CheckpointRecord> JobStore::Checkpoints(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db,
         "SELECT c.step, c.path, c.reason, COALESCE(c.val_loss, "
         "(SELECT e.loss FROM evaluations e WHERE e.job_id=c.job_id AND e.step=c.step ORDER BY e.rowid DESC LIMIT 1)), "
         "c.time_ms FROM checkpoints c WHERE c.job_id=? ORDER BY c.step, c.time_ms");
  s.Bind(1, job_id);
  std::vector<CheckpointRecord> out;
  while (s.Step()) out.push_back({s.Int(0), s.Text(1), s.Text(2), s.OptDouble(3), s.Int(4)});
  return out;
}

absl::Status JobStore::UpsertAllocation(const AllocationRecord& a) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("record allocation", [&] {
    Stmt s(impl_->db,
           "INSERT INTO allocations (job_id, attempt, allocator, external_id, state, reason, created_ms, updated_ms) "
           "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(job_id, attempt) DO UPDATE SET allocator=excluded.allocator, "
           "external_id=excluded.external_id, state=excluded.state, reason=excluded.reason, "
           "updated_ms=excluded.updated_ms");
    s.Bind(1, a.job_id).Bind(2, a.attempt).Bind(3, a.allocator).Bind(4, a.external_id).Bind(5, a.state);
    s.Bind(6, a.reason).Bind(7, a.updated_ms).Bind(8, a.updated_ms).Run();
  });
}

std::vector<AllocationRecord> JobStore::Allocations(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db,
         "SELECT job_id, attempt, allocator, external_id, state, reason, updated_ms FROM allocations "
         "WHERE job_id=? ORDER BY attempt");
  s.Bind(1, job_id);
  std::vector<AllocationRecord> out;
  while (s.Step()) out.push_back({s.Int(0), static_cast<int>(s.Int(1)), s.Text(2), s.Text(3), s.Text(4), s.Text(5), s.Int(6)});
  return out;
}

absl::Status JobStore::AddEvaluation(int64_t job_id, const EvaluationRecord& e) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Guarded("add evaluation", [&] {
    nlohmann::json per_source = e.per_source_loss;
    Stmt s(impl_->db,
           "INSERT INTO evaluations (job_id, step, loss, perplexity, tokens, per_source_json, sample, time_ms) "
           "VALUES (?,?,?,?,?,?,?,?)");
    s.Bind(1, job_id).Bind(2, e.step).Bind(3, e.loss).Bind(4, e.perplexity).Bind(5, e.tokens);
    s.Bind(6, per_source.dump()).Bind(7, e.sample).Bind(8, e.time_ms).Run();
  });
}

std::vector<EvaluationRecord> JobStore::Evaluations(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db,
         "SELECT step, loss, perplexity, tokens, per_source_json, sample, time_ms FROM evaluations WHERE job_id=? "
         "ORDER BY step, rowid");
  s.Bind(1, job_id);
  std::vector<EvaluationRecord> out;
  while (s.Step()) {
    EvaluationRecord e;
    e.step = s.Int(0);
    e.loss = s.Double(1);
    e.perplexity = s.Double(2);
    e.tokens = s.Int(3);
    const auto j = nlohmann::json::parse(s.Text(4), nullptr, false);
    if (j.is_object()) {
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.value().is_number()) e.per_source_loss[it.key()] = it.value().get<double>();
      }
    }
    e.sample = s.Text(5);
    e.time_ms = s.Int(6);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace dsv3::server
