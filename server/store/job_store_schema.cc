// The job store's schema: its numbered migrations, and the one-time fill of what a
// migration adds that SQL alone cannot compute.
#include "dsv3/common/config_io.h"
#include "store/job_store_internal.h"

namespace dsv3::server {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::Transaction;

// Numbered migrations, applied in order inside one transaction each. Never edit a shipped
// entry: add a new one.
const std::vector<const char*>& Migrations() {
  static const std::vector<const char*> kMigrations = {
      // 1: jobs, their history, ranks, metrics, checkpoints, evaluations.
      R"sql(
      CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, owner TEXT NOT NULL, experiment_name TEXT NOT NULL,
        config_json TEXT NOT NULL, resume_from TEXT NOT NULL, working_dir TEXT NOT NULL,
        job_dir TEXT NOT NULL, output_dir TEXT NOT NULL, checkpoint_dir TEXT NOT NULL,
        tensorboard_dir TEXT NOT NULL, credential TEXT NOT NULL,
        num_ranks INTEGER NOT NULL, priority INTEGER NOT NULL,
        attempt INTEGER NOT NULL, restarts INTEGER NOT NULL, max_restarts INTEGER NOT NULL,
        state INTEGER NOT NULL, state_reason TEXT NOT NULL,
        cancel_requested INTEGER NOT NULL, master_port INTEGER NOT NULL,
        total_steps INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL);
      CREATE INDEX jobs_by_state ON jobs(state);
      CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        time_ms INTEGER NOT NULL, state INTEGER NOT NULL, reason TEXT NOT NULL,
        attempt INTEGER NOT NULL);
      CREATE INDEX job_events_by_job ON job_events(job_id, id);
      CREATE TABLE ranks (
        job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
        rank INTEGER NOT NULL, pid INTEGER NOT NULL, proc_start INTEGER NOT NULL,
        host TEXT NOT NULL, log_path TEXT NOT NULL, state TEXT NOT NULL,
        exit_code INTEGER NOT NULL, started_ms INTEGER NOT NULL, ended_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, attempt, rank));
      CREATE TABLE metrics (
        job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
        step INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
        time_ms INTEGER NOT NULL);
      CREATE INDEX metrics_by_series ON metrics(job_id, name, step);
      CREATE TABLE checkpoints (
        job_id INTEGER NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL,
        path TEXT NOT NULL, reason TEXT NOT NULL, val_loss REAL, time_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, path));
      CREATE TABLE evaluations (
        job_id INTEGER NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL,
        loss REAL NOT NULL, perplexity REAL NOT NULL, tokens INTEGER NOT NULL,
        per_source_json TEXT NOT NULL, sample TEXT NOT NULL, time_ms INTEGER NOT NULL);
      CREATE INDEX evaluations_by_job ON evaluations(job_id, step);
      )sql",
      // 2: allocations in external schedulers (the Slurm job of each attempt).
      R"sql(
      CREATE TABLE allocations (
        job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
        allocator TEXT NOT NULL, external_id TEXT NOT NULL, state TEXT NOT NULL,
        reason TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, attempt));
      )sql",
      // 3: users and their bearer tokens (only hashes), agents' credentials.
      R"sql(
      CREATE TABLE users (
        name TEXT PRIMARY KEY, admin INTEGER NOT NULL, max_jobs INTEGER NOT NULL,
        max_slots INTEGER NOT NULL, created_ms INTEGER NOT NULL);
      CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
        subject TEXT NOT NULL, label TEXT NOT NULL, created_ms INTEGER NOT NULL,
        revoked_ms INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX jobs_by_owner ON jobs(owner, state);
      )sql",
      // 4: the typed plan of each job's config (store/job_plan.h); rows written before it
      // get theirs from their config when the store opens (BackfillPlans).
      R"sql(
      ALTER TABLE jobs ADD COLUMN plan_json TEXT NOT NULL DEFAULT '';
      )sql",
  };
  return kMigrations;
}

// Jobs stored before migration 4 have no plan: each gets the plan of its stored config,
// once. A config this build no longer loads gets the default plan (the daemon's allocator,
// dsv3d's thread share), which is what such a config meant to the build that stored it
// unless it asked for Slurm.
void BackfillPlans(Db& db) {
  std::vector<std::pair<int64_t, std::string>> rows;
  {
    Stmt q(db, "SELECT id, config_json, num_ranks FROM jobs WHERE plan_json=''");
    while (q.Step()) {
      config::LoadOptions options;
      options.world_size = q.Int(2);
      const config::LoadResult loaded = config::LoadConfigText(q.Text(1), options);
      rows.emplace_back(q.Int(0), PlanToJson(loaded.ok() ? PlanFromConfig(loaded.config) : JobPlan{}));
    }
  }
  if (rows.empty()) return;
  Transaction tx(db);
  for (const auto& [id, plan] : rows) {
    Stmt u(db, "UPDATE jobs SET plan_json=? WHERE id=?");
    u.Bind(1, plan).Bind(2, id).Run();
  }
  tx.Commit();
}

}  // namespace dsv3::server
