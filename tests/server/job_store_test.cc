// The SQLite job store: migrations, state history, ranks, metrics, checkpoints, evaluations,
// persistence across reopen, and refusal of files that are not (or newer) dsv3 stores.
#include <sqlite3.h>

#include <gtest/gtest.h>

#include "store/job_store.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

JobRecord NewJob(const std::string& name, int priority = 0) {
  JobRecord j;
  j.name = name;
  j.owner = "alice";
  j.experiment_name = name;
  j.config_json = "{}";
  j.num_ranks = 2;
  j.priority = priority;
  j.max_restarts = 3;
  j.total_steps = 100;
  j.credential = "secret";
  return j;
}

std::unique_ptr<JobStore> OpenOrDie(const std::string& path) {
  auto s = JobStore::Open(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(JobStore, AppliesEveryMigrationOnOpen) {
  auto store = OpenOrDie(":memory:");
  EXPECT_EQ(store->SchemaVersion(), JobStore::LatestSchemaVersion());
  EXPECT_GE(JobStore::LatestSchemaVersion(), 1);
}

TEST(JobStore, StateChangesAreRecordedInOrderWithReasons) {
  auto store = OpenOrDie(":memory:");
  JobRecord j = NewJob("a");
  ASSERT_TRUE(store->CreateJob(j).ok());
  EXPECT_EQ(j.id, 1);
  ASSERT_TRUE(store->SetState(j.id, JobState::kStarting, "attempt 1", 1).ok());
  ASSERT_TRUE(store->SetState(j.id, JobState::kRunning, "registered", 1).ok());
  ASSERT_TRUE(store->SetState(j.id, JobState::kRestarting, "rank 0 killed by signal 9", 1).ok());
  ASSERT_TRUE(store->SetState(j.id, JobState::kStarting, "attempt 2", 2).ok());
  ASSERT_TRUE(store->SetState(j.id, JobState::kCompleted, "finished", 2).ok());

  const auto history = store->History(j.id);
  ASSERT_EQ(history.size(), 6u);
  const std::vector<JobState> expected = {JobState::kQueued,     JobState::kStarting, JobState::kRunning,
                                          JobState::kRestarting, JobState::kStarting, JobState::kCompleted};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(history[i].state, expected[i]) << i;
  EXPECT_EQ(history[3].reason, "rank 0 killed by signal 9");
  EXPECT_EQ(history[4].attempt, 2);

  const auto got = store->GetJob(j.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->state, JobState::kCompleted);
  EXPECT_EQ(got->state_reason, "finished");
  EXPECT_GT(got->started_ms, 0);
  EXPECT_GE(got->finished_ms, got->started_ms);
  EXPECT_EQ(got->owner, "alice");
  EXPECT_EQ(got->credential, "secret");
  EXPECT_FALSE(store->SetState(999, JobState::kRunning, "x", 1).ok());
  EXPECT_EQ(store->GetState(j.id), JobState::kCompleted);
  EXPECT_FALSE(store->GetState(999).has_value());
}

TEST(JobStore, ListFiltersByStateOwnerAndNameNewestFirst) {
  auto store = OpenOrDie(":memory:");
  for (const char* name : {"alpha", "beta", "alphabet"}) {
    JobRecord j = NewJob(name);
    ASSERT_TRUE(store->CreateJob(j).ok());
  }
  ASSERT_TRUE(store->SetState(2, JobState::kStarting, "", 1).ok());
  JobFilter f;
  f.name_contains = "alpha";
  auto jobs = store->ListJobs(f);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].name, "alphabet");
  EXPECT_EQ(jobs[1].name, "alpha");
  f = {};
  f.states = {JobState::kStarting};
  jobs = store->ListJobs(f);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].name, "beta");
  f = {};
  f.owner = "bob";
  EXPECT_TRUE(store->ListJobs(f).empty());
  f = {};
  f.limit = 1;
  EXPECT_EQ(store->ListJobs(f).size(), 1u);
  EXPECT_EQ(store->ActiveJobs().size(), 3u);
  const auto counts = store->CountByState();
  EXPECT_EQ(counts.at(JobState::kQueued), 2);
  EXPECT_EQ(counts.at(JobState::kStarting), 1);
}

TEST(JobStore, RanksMetricsCheckpointsAndEvaluations) {
  auto store = OpenOrDie(":memory:");
  JobRecord j = NewJob("a");
  ASSERT_TRUE(store->CreateJob(j).ok());
  RankRecord r{j.id, 1, 0, 1234, 99, "host", "/logs/rank_0.log", "launched", 0, 10, 0};
  ASSERT_TRUE(store->UpsertRank(r).ok());
  r.state = "exited";
  r.exit_code = 137;
  ASSERT_TRUE(store->UpsertRank(r).ok());
  const auto ranks = store->Ranks(j.id, 1);
  ASSERT_EQ(ranks.size(), 1u);
  EXPECT_EQ(ranks[0].state, "exited");
  EXPECT_EQ(ranks[0].exit_code, 137);
  EXPECT_EQ(ranks[0].proc_start, 99);

  ASSERT_TRUE(store->AddMetrics(j.id, 1, {{10, "loss", 4.5, 1}, {10, "lr", 0.001, 1}, {20, "loss", 3.25, 2}}).ok());
  const auto loss = store->Metrics(j.id, {"loss"}, 0);
  ASSERT_EQ(loss.size(), 2u);
  EXPECT_EQ(loss[0].step, 10);
  EXPECT_DOUBLE_EQ(loss[1].value, 3.25);
  EXPECT_EQ(store->Metrics(j.id, {}, 10).size(), 1u);  // only step 20
  const auto all = store->Metrics(j.id, {}, 0);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].name, "loss");  // series in the order they first appeared
  const auto latest = store->LatestMetrics(j.id);
  EXPECT_DOUBLE_EQ(latest.at("loss").value, 3.25);
  EXPECT_EQ(latest.at("loss").step, 20);

  EvaluationRecord e;
  e.step = 20;
  e.loss = 2.5;
  e.perplexity = 12.18;
  e.per_source_loss = {{"cc", 2.0}, {"c4", 3.0}};
  e.sample = "The end";
  ASSERT_TRUE(store->AddEvaluation(j.id, e).ok());
  ASSERT_TRUE(store->AddCheckpoint(j.id, {10, "/c/checkpoint_10", "interval", std::nullopt, 5}).ok());
  ASSERT_TRUE(store->AddCheckpoint(j.id, {20, "/c/checkpoint_20", "interval", std::nullopt, 6}).ok());
  const auto ckpts = store->Checkpoints(j.id);
  ASSERT_EQ(ckpts.size(), 2u);
  EXPECT_FALSE(ckpts[0].val_loss.has_value());
  ASSERT_TRUE(ckpts[1].val_loss.has_value());  // joined from the evaluation at the same step
  EXPECT_DOUBLE_EQ(*ckpts[1].val_loss, 2.5);
  const auto evals = store->Evaluations(j.id);
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_DOUBLE_EQ(evals[0].per_source_loss.at("c4"), 3.0);
  EXPECT_EQ(evals[0].sample, "The end");
}

// Ended jobs past the retention keep only each series' last point; running jobs and jobs
// ended more recently keep everything.
TEST(JobStore, PruneMetricsKeepsEachSeriesLastPointOfOldEndedJobs) {
  auto store = OpenOrDie(":memory:");
  JobRecord old_job = NewJob("old"), recent = NewJob("recent"), running = NewJob("running");
  for (JobRecord* j : {&old_job, &recent, &running}) {
    ASSERT_TRUE(store->CreateJob(*j).ok());
    ASSERT_TRUE(store->AddMetrics(j->id, 1, {{10, "loss", 4.5, 1}, {10, "lr", 0.1, 1}, {20, "loss", 3.25, 2},
                                             {20, "lr", 0.2, 2}, {30, "loss", 2.0, 3}})
                    .ok());
  }
  ASSERT_TRUE(store->SetState(old_job.id, JobState::kCompleted, "done", 1).ok());
  const int64_t after_old = NowMs() + 1;
  ASSERT_TRUE(store->SetState(running.id, JobState::kRunning, "go", 1).ok());
  auto pruned = store->PruneMetrics(after_old);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(*pruned, 3);
  EXPECT_EQ(store->Metrics(old_job.id, {}, 0).size(), 2u);
  const auto loss = store->Metrics(old_job.id, {"loss"}, 0), lr = store->Metrics(old_job.id, {"lr"}, 0);
  ASSERT_EQ(loss.size(), 1u);
  EXPECT_EQ(loss[0].step, 30);
  EXPECT_DOUBLE_EQ(loss[0].value, 2.0);
  ASSERT_EQ(lr.size(), 1u);
  EXPECT_EQ(lr[0].step, 20);
  EXPECT_DOUBLE_EQ(lr[0].value, 0.2);
  EXPECT_DOUBLE_EQ(store->LatestMetrics(old_job.id).at("loss").value, 2.0);
  EXPECT_EQ(store->Metrics(recent.id, {}, 0).size(), 5u);   // not ended
  EXPECT_EQ(store->Metrics(running.id, {}, 0).size(), 5u);  // running
  ASSERT_TRUE(store->SetState(recent.id, JobState::kFailed, "broke", 1).ok());
  EXPECT_EQ(*store->PruneMetrics(after_old - 1000000), 0);  // ended after the cutoff
}

TEST(JobStore, SurvivesReopenAndRestartCounts) {
  test::TempDir dir;
  const std::string path = (dir.path() / "dsv3.db").string();
  {
    auto store = OpenOrDie(path);
    JobRecord j = NewJob("persist", 5);
    ASSERT_TRUE(store->CreateJob(j).ok());
    j.attempt = 2;
    j.restarts = 1;
    j.cancel_requested = true;
    j.job_dir = "/state/jobs/1";
    ASSERT_TRUE(store->UpdateJob(j).ok());
  }
  auto store = OpenOrDie(path);
  const auto j = store->GetJob(1);
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ(j->attempt, 2);
  EXPECT_EQ(j->restarts, 1);
  EXPECT_TRUE(j->cancel_requested);
  EXPECT_EQ(j->priority, 5);
  EXPECT_EQ(j->job_dir, "/state/jobs/1");
  EXPECT_EQ(store->TotalRestarts(), 1);
}

TEST(JobStore, RefusesForeignAndNewerDatabases) {
  test::TempDir dir;
  const std::string foreign = (dir.path() / "other.db").string();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(foreign.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE users(id INTEGER)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto s = JobStore::Open(foreign);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("not a dsv3 job store"), std::string::npos) << s.status();

  const std::string newer = (dir.path() / "newer.db").string();
  { OpenOrDie(newer); }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(newer.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "UPDATE dsv3_schema SET version = 999", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  s = JobStore::Open(newer);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("schema version 999"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace dsv3::server
