// The JobManager's scheduling and supervision against a scripted allocator: queue order and
// priority, restarts up to max_restarts, heartbeat timeouts, cancel with a grace period,
// worker-report checks, recovery after a controller restart, and the rule that every state
// change is in the store before it is acted on.
#include <signal.h>

#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>
#include <gtest/gtest.h>

#include "test_util.h"
#include "allocators/allocator.h"
#include "jobs/job_manager.h"
#include "store/job_store.h"

namespace dsv3::server {
namespace {

using std::chrono::milliseconds;
using test::WaitFor;

// Places ranks on nothing: records launches and signals, and lets the test end ranks.
class ScriptedAllocator final : public Allocator {
 public:
  ScriptedAllocator(int slots, JobStore& store) : slots_(slots), store_(store) {}

  std::string Name() const override { return "scripted"; }
  int TotalSlots() const override { return slots_; }
  int FreeSlots() const override {
    std::lock_guard<std::mutex> l(mu_);
    return FreeLocked();
  }
  void SetExitCallback(ExitCallback cb) override {
    std::lock_guard<std::mutex> l(mu_);
    cb_ = std::move(cb);
  }
  void SetAllocationCallback(AllocationCallback cb) override {
    std::lock_guard<std::mutex> l(mu_);
    alloc_cb_ = std::move(cb);
  }
  std::optional<Placement> Reserve(const JobRecord& job) override {
    const int64_t job_id = job.id;
    const int num_ranks = job.num_ranks;
    std::lock_guard<std::mutex> l(mu_);
    if (FreeLocked() < num_ranks && reserved_.count(job_id) == 0) return std::nullopt;
    reserved_[job_id] = num_ranks;
    return Placement{std::vector<std::string>(num_ranks, "host"), "127.0.0.1"};
  }
  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override {
    // The store must already say STARTING: state is written before it is acted on.
    const auto job = store_.GetJob(spec.job_id);
    std::lock_guard<std::mutex> l(mu_);
    states_at_launch.push_back(job ? job->state : JobState::kQueued);
    if (!launch_error.empty()) return absl::UnavailableError(launch_error);
    launches.push_back(spec);
    std::vector<LaunchedRank> out;
    for (const auto& r : spec.ranks) out.push_back({r.rank, next_pid_++, 1, "host"});
    return out;
  }
  void Signal(int64_t job_id, int signal) override {
    const auto job = store_.GetJob(job_id);
    std::lock_guard<std::mutex> l(mu_);
    signals.emplace_back(job_id, signal);
    cancel_written_before_sigterm = cancel_written_before_sigterm && (signal != SIGTERM || job->cancel_requested);
  }
  void Kill(int64_t job_id) override { Signal(job_id, SIGKILL); }
  void Release(int64_t job_id) override {
    std::lock_guard<std::mutex> l(mu_);
    reserved_.erase(job_id);
  }
  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>&, const std::string&) override {
    std::lock_guard<std::mutex> l(mu_);
    reserved_[job.id] = job.num_ranks;
    return adoptable;
  }
  int LiveRanks(int64_t) const override { return 0; }
  std::vector<NodeInfo> Nodes() const override { return {}; }

  // Test controls.
  void Allocation(const AllocationUpdate& u) {
    AllocationCallback cb;
    {
      std::lock_guard<std::mutex> l(mu_);
      cb = alloc_cb_;
    }
    cb(u);
  }
  void End(int64_t job, int attempt, int rank, int code) {
    ExitCallback cb;
    {
      std::lock_guard<std::mutex> l(mu_);
      cb = cb_;
    }
    cb({job, attempt, rank, code, code >= 128 ? "killed by signal " + std::to_string(code - 128)
                                              : "exited with status " + std::to_string(code)});
  }
  size_t NumLaunches() const {
    std::lock_guard<std::mutex> l(mu_);
    return launches.size();
  }
  bool Signaled(int64_t job, int sig) const {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& s : signals) {
      if (s.first == job && s.second == sig) return true;
    }
    return false;
  }

  std::vector<LaunchSpec> launches;
  std::string launch_error;  // Launch fails with it when set (sbatch refused, say)
  std::vector<JobState> states_at_launch;
  std::vector<std::pair<int64_t, int>> signals;
  std::vector<int> adoptable;
  bool cancel_written_before_sigterm = true;

 private:
  int FreeLocked() const {
    int used = 0;
    for (const auto& [id, n] : reserved_) used += n;
    return slots_ - used;
  }

  const int slots_;
  JobStore& store_;
  mutable std::mutex mu_;
  ExitCallback cb_;
  AllocationCallback alloc_cb_;
  std::map<int64_t, int> reserved_;
  int64_t next_pid_ = 1000;
};

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = JobStore::Open((dir_.path() / "dsv3.db").string());
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  std::unique_ptr<JobManager> MakeManager(ScriptedAllocator& alloc, milliseconds startup_timeout = milliseconds(60000)) {
    ManagerOptions o;
    o.state_dir = dir_.path().string();
    o.worker_path = "/bin/false";
    o.controller_address = "127.0.0.1:1";
    o.heartbeat_timeout = milliseconds(400);
    o.startup_timeout = startup_timeout;
    o.grace_period = milliseconds(400);
    return std::make_unique<JobManager>(*store_, alloc, o);
  }

  static std::string Config(int max_restarts) {
    auto c = nlohmann::json::parse(test::ReadFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json"),
                                   nullptr, true, true);
    c["max_restarts"] = max_restarts;
    return c.dump();
  }

  int64_t Submit(JobManager& m, int ranks, int priority = 0, int max_restarts = 2) {
    SubmitRequest r;
    r.config_json = Config(max_restarts);
    r.num_ranks = ranks;
    r.priority = priority;
    r.owner = "alice";
    r.base_dir = dir_.path().string();
    const SubmitOutcome o = m.Submit(r);
    EXPECT_TRUE(o.status.ok()) << o.status;
    return o.job.id;
  }

  JobState State(int64_t id) { return store_->GetJob(id)->state; }
  bool WaitState(int64_t id, JobState s) {
    return WaitFor([&] { return State(id) == s; }, std::chrono::seconds(10));
  }
  RankRef Ref(int64_t id, int rank) {
    const auto j = store_->GetJob(id);
    return {id, j->attempt, rank, j->credential};
  }
  void RegisterAll(JobManager& m, int64_t id, int ranks) {
    for (int r = 0; r < ranks; ++r) {
      const auto s = m.RegisterRank(Ref(id, r), /*pid=*/0, "host");
      ASSERT_TRUE(s.ok()) << s.status();
    }
  }
  // Starts `m` and gets one job of `ranks` ranks launched and registered.
  int64_t LaunchOne(JobManager& m, ScriptedAllocator& alloc, int max_restarts = 2, int ranks = 1) {
    EXPECT_TRUE(m.Recover().ok());
    m.Start();
    const int64_t id = Submit(m, ranks, 0, max_restarts);
    EXPECT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 1; }, std::chrono::seconds(10)));
    RegisterAll(m, id, ranks);
    return id;
  }
  void FinishAll(JobManager& m, ScriptedAllocator& a, int64_t id, int ranks) {
    for (int r = 0; r < ranks; ++r) {
      ASSERT_TRUE(m.ReportEnd(Ref(id, r), RankOutcome::kFinished, 160, "done").ok());
    }
    const int attempt = store_->GetJob(id)->attempt;
    for (int r = 0; r < ranks; ++r) a.End(id, attempt, r, 0);
  }

  test::TempDir dir_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobManagerTest, QueueRunsByPriorityThenSubmissionOrder) {
  ScriptedAllocator alloc(2, *store_);
  auto m = MakeManager(alloc);
  ASSERT_TRUE(m->Recover().ok());
  const int64_t a = Submit(*m, 2);
  const int64_t b = Submit(*m, 2);
  const int64_t c = Submit(*m, 2, /*priority=*/5);
  EXPECT_EQ(m->QueueLength(), 3);
  m->Start();
  std::vector<int64_t> order;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == static_cast<size_t>(i + 1); }, std::chrono::seconds(10)));
    const int64_t id = alloc.launches.back().job_id;
    order.push_back(id);
    EXPECT_EQ(alloc.launches.back().ranks.size(), 2u);
    std::this_thread::sleep_for(milliseconds(250));
    EXPECT_EQ(alloc.NumLaunches(), static_cast<size_t>(i + 1));  // the others wait: no free slots
    RegisterAll(*m, id, 2);
    ASSERT_TRUE(WaitState(id, JobState::kRunning));
    FinishAll(*m, alloc, id, 2);
    ASSERT_TRUE(WaitState(id, JobState::kCompleted));
  }
  EXPECT_EQ(order, (std::vector<int64_t>{c, a, b}));
  for (JobState s : alloc.states_at_launch) EXPECT_EQ(s, JobState::kStarting);
  // Ranks got what torchrun would give them, plus the controller's coordinates.
  const RankLaunch& r1 = alloc.launches.back().ranks[1];
  EXPECT_EQ(r1.env.at("RANK"), "1");
  EXPECT_EQ(r1.env.at("WORLD_SIZE"), "2");
  EXPECT_EQ(r1.env.at("LOCAL_RANK"), "1");
  EXPECT_EQ(r1.env.at("MASTER_ADDR"), "127.0.0.1");
  EXPECT_GT(std::stoi(r1.env.at("MASTER_PORT")), 0);
  EXPECT_EQ(r1.env.at("DSV3_JOB_ID"), std::to_string(b));
  EXPECT_EQ(r1.env.at("DSV3_JOB_CREDENTIAL"), store_->GetJob(b)->credential);
  EXPECT_EQ(r1.argv[1], "--config");
  EXPECT_EQ(r1.argv[2], store_->GetJob(b)->job_dir + "/config.json");
}

TEST_F(JobManagerTest, FailedRankRestartsUntilMaxRestartsThenFails) {
  ScriptedAllocator alloc(2, *store_);
  auto m = MakeManager(alloc);
  const int64_t id = LaunchOne(*m, alloc, /*max_restarts=*/1, /*ranks=*/2);
  ASSERT_TRUE(WaitState(id, JobState::kRunning));
  alloc.End(id, 1, 0, 1);  // rank 0 fails
  ASSERT_TRUE(WaitFor([&] { return alloc.Signaled(id, SIGKILL); }, std::chrono::seconds(10)));  // peers stopped
  alloc.End(id, 1, 1, 137);
  ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 2; }, std::chrono::seconds(10)));
  auto job = store_->GetJob(id);
  EXPECT_EQ(job->attempt, 2);
  EXPECT_EQ(job->restarts, 1);
  alloc.End(id, 2, 1, 1);
  alloc.End(id, 2, 0, 137);
  ASSERT_TRUE(WaitState(id, JobState::kFailed));
  job = store_->GetJob(id);
  EXPECT_EQ(job->state_reason, "rank 1 exited with status 1; gave up after 1 restart(s) (max_restarts)");
  const auto history = store_->History(id);
  std::vector<JobState> states;
  for (const auto& h : history) states.push_back(h.state);
  EXPECT_EQ(states, (std::vector<JobState>{JobState::kQueued, JobState::kStarting, JobState::kRunning,
                                           JobState::kRestarting, JobState::kStarting, JobState::kFailed}));
  EXPECT_EQ(history[3].reason, "rank 0 exited with status 1; restart 1 of 1 from no checkpoint");
  EXPECT_EQ(m->QueueLength(), 0);
}

// Exit statuses 3-6 (common/exit_codes.h) say a restart would fail the same way: the job
// fails at once with the rank's own message, whatever max_restarts allows.
TEST_F(JobManagerTest, RankThatRefusesItsConfigFailsTheJobWithoutRestarts) {
  ScriptedAllocator alloc(2, *store_);
  auto m = MakeManager(alloc);
  const int64_t id = LaunchOne(*m, alloc, /*max_restarts=*/3, /*ranks=*/2);
  ASSERT_TRUE(WaitState(id, JobState::kRunning));
  ASSERT_TRUE(m->ReportEnd(Ref(id, 1), RankOutcome::kFailed, 0, "/training/use_fp8: true is not supported").ok());
  alloc.End(id, 1, 1, 3);
  ASSERT_TRUE(WaitFor([&] { return alloc.Signaled(id, SIGKILL); }, std::chrono::seconds(10)));
  alloc.End(id, 1, 0, 137);
  ASSERT_TRUE(WaitState(id, JobState::kFailed));
  const auto job = store_->GetJob(id);
  EXPECT_EQ(job->restarts, 0);
  EXPECT_EQ(job->state_reason, "rank 1 refused its config (exit status 3): /training/use_fp8: true is not supported; "
                               "not restarted: a restart cannot fix this");
  EXPECT_EQ(alloc.NumLaunches(), 1u);
}

// A launch the allocator refuses (sbatch said no) ends the job FAILED, and its ranks show
// as never started, not as launched.
TEST_F(JobManagerTest, RefusedLaunchShowsRanksAsNotStarted) {
  ScriptedAllocator alloc(2, *store_);
  alloc.launch_error = "sbatch: error: invalid partition specified: gpu";
  auto m = MakeManager(alloc);
  ASSERT_TRUE(m->Recover().ok());
  m->Start();
  const int64_t id = Submit(*m, 2, 0, 3);
  ASSERT_TRUE(WaitState(id, JobState::kFailed));
  const auto job = store_->GetJob(id);
  EXPECT_EQ(job->state_reason, "cannot start ranks: sbatch: error: invalid partition specified: gpu");
  const JobProgress p = m->Progress(*job);
  ASSERT_EQ(p.ranks.size(), 2u);
  for (const RankView& r : p.ranks) EXPECT_EQ(r.state, "not started") << r.rank;
}

TEST_F(JobManagerTest, SilentRankFailsTheAttemptAfterTheHeartbeatTimeout) {
  ScriptedAllocator alloc(1, *store_);
  auto m = MakeManager(alloc);
  const int64_t id = LaunchOne(*m, alloc, /*max_restarts=*/0);
  // Heartbeats for a while keep it alive...
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(m->Heartbeat(Ref(id, 0), i, nullptr).ok());
    std::this_thread::sleep_for(milliseconds(150));
  }
  EXPECT_FALSE(alloc.Signaled(id, SIGKILL));
  // ...then silence longer than the 400 ms timeout kills the attempt.
  ASSERT_TRUE(WaitFor([&] { return alloc.Signaled(id, SIGKILL); }, std::chrono::seconds(10)));
  alloc.End(id, 1, 0, 137);
  ASSERT_TRUE(WaitState(id, JobState::kFailed));
  EXPECT_EQ(store_->GetJob(id)->state_reason, "rank 0 sent no heartbeat for 0.4 s (hung or unreachable)");
}

TEST_F(JobManagerTest, CancelSignalsThenKillsAfterTheGracePeriod) {
  ScriptedAllocator alloc(1, *store_);
  auto m = MakeManager(alloc);
  const int64_t id = LaunchOne(*m, alloc);
  ASSERT_TRUE(m->Cancel(id, "no longer needed").ok());
  EXPECT_TRUE(alloc.Signaled(id, SIGTERM));
  EXPECT_TRUE(alloc.cancel_written_before_sigterm);
  auto cmd = m->Heartbeat(Ref(id, 0), 5, nullptr);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->command, RankCommand::kStop);
  ASSERT_TRUE(WaitFor([&] { return alloc.Signaled(id, SIGKILL); }, std::chrono::seconds(10)));  // grace over
  // A checkpoint the rank managed to write is what the cancel records.
  const std::string ckpt = store_->GetJob(id)->checkpoint_dir + "/checkpoint_5";
  ASSERT_TRUE(m->ReportCheckpoint(Ref(id, 0), {5, ckpt, "signal", std::nullopt, NowMs()}).ok());
  alloc.End(id, 1, 0, 137);
  ASSERT_TRUE(WaitState(id, JobState::kCanceled));
  EXPECT_EQ(store_->GetJob(id)->state_reason, "canceled by user; checkpoint at step 5: " + ckpt);
  EXPECT_EQ(alloc.NumLaunches(), 1u);  // a canceled job is not restarted

  // Queued jobs end at once; ended ones refuse.
  const int64_t queued = Submit(*m, 1);
  (void)queued;
  auto again = m->Cancel(id, "");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m->Cancel(12345, "").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, WorkerReportsAreCheckedAndRecorded) {
  ScriptedAllocator alloc(1, *store_);
  auto m = MakeManager(alloc);
  const int64_t id = LaunchOne(*m, alloc);
  RankRef good = Ref(id, 0);
  RankRef bad = good;
  bad.credential = "forged";
  EXPECT_EQ(m->ReportMetrics(bad, {{1, "loss", 1.0, 1}}).code(), absl::StatusCode::kPermissionDenied);
  bad = good;
  bad.attempt = 7;
  EXPECT_EQ(m->Heartbeat(bad, 1, nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
  bad = good;
  bad.rank = 3;
  EXPECT_EQ(m->Heartbeat(bad, 1, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.job_id = 999;
  EXPECT_EQ(m->Heartbeat(bad, 1, nullptr).status().code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(m->ReportMetrics(good, {{10, "loss", 4.0, 1}, {10, "step_ms", 500, 1}}).ok());
  const JobRecord job = *store_->GetJob(id);
  JobProgress p = m->Progress(job);
  EXPECT_EQ(p.step, 10);
  EXPECT_DOUBLE_EQ(p.latest.at("loss"), 4.0);
  ASSERT_TRUE(p.eta_seconds.has_value());
  EXPECT_DOUBLE_EQ(*p.eta_seconds, (160 - 10) * 0.5);

  // A relative checkpoint path is the rank's, whose folder is the job's.
  ASSERT_TRUE(m->ReportCheckpoint(good, {10, "./outputs/nano/checkpoints/checkpoint_10", "interval", {}, 1}).ok());
  EXPECT_EQ(store_->Checkpoints(id).at(0).path, job.job_dir + "/outputs/nano/checkpoints/checkpoint_10");

  ASSERT_TRUE(m->ShipLogs(good, {"line one", "line two"}).ok());
  EXPECT_NE(test::ReadFile(m->LogPath(job, 0)).find("line one\nline two\n"), std::string::npos);

  ASSERT_TRUE(m->RequestCheckpoint(id).ok());
  EXPECT_EQ(m->Heartbeat(good, 11, nullptr)->command, RankCommand::kCheckpointNow);
  EXPECT_EQ(m->Heartbeat(good, 12, nullptr)->command, RankCommand::kNone);  // delivered once
}

TEST_F(JobManagerTest, SubmitValidatesAndDryRunWritesNothing) {
  ScriptedAllocator alloc(2, *store_);
  auto m = MakeManager(alloc);
  ASSERT_TRUE(m->Recover().ok());
  SubmitRequest r;
  r.config_json = R"({"model": {"num_layer": 2}, "training": {"learning_rate": -1}})";
  r.num_ranks = 3;
  r.name = "line\nbreak";
  r.base_dir = dir_.path().string();
  SubmitOutcome o = m->Submit(r);
  ASSERT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::string> paths;
  for (const auto& e : o.errors) paths.push_back(e.path);
  // 3 ranks: the slot count and the batch arithmetic (16 = 8 x 3 x accumulation) both fail.
  EXPECT_EQ(paths, (std::vector<std::string>{"num_ranks", "name", "/model/num_layer", "/training/learning_rate",
                                             "/training/global_batch_size"}));
  std::vector<std::string> codes;
  for (const auto& e : o.errors) codes.push_back(e.code);
  EXPECT_EQ(codes, (std::vector<std::string>{kProblemExceedsCapacity, kProblemInvalidRequest, kProblemInvalidConfig,
                                             kProblemInvalidConfig, kProblemInvalidConfig}));
  r.config_json = Config(1);
  r.num_ranks = 2;
  r.name = "";
  r.dry_run = true;
  o = m->Submit(r);
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_NE(o.plan.find("rank 1: RANK=1 WORLD_SIZE=2"), std::string::npos) << o.plan;
  // The parallel grid: what each rank holds.
  EXPECT_NE(o.plan.find("parallel grid"), std::string::npos) << o.plan;
  EXPECT_NE(o.plan.find("rank 1: pp 0 dp 1 tp 0 ep 0 | embedding, layers 0-"), std::string::npos) << o.plan;
  // Input paths are absolute against the submitter's folder in what the ranks read.
  const auto resolved = nlohmann::json::parse(o.resolved_json);
  EXPECT_EQ(resolved["data"]["sources"][0]["paths"][0], dir_.path().string() + "/data/sample/dolma_v1_6_cc/*.json.gz");
  EXPECT_EQ(resolved["data"]["cache_dir"], dir_.path().string() + "/data/cache");
  EXPECT_EQ(resolved["output_dir"], "./outputs/nano");  // outputs stay in the job's folder
  EXPECT_TRUE(store_->ListJobs({}).empty());
}

TEST_F(JobManagerTest, RecoveryRestartsJobsWhoseRanksDied) {
  int64_t first = 0, second = 0;
  {
    ScriptedAllocator alloc(2, *store_);
    auto m = MakeManager(alloc);
    ASSERT_TRUE(m->Recover().ok());
    m->Start();
    first = Submit(*m, 1);
    second = Submit(*m, 1);
    ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 2; }, std::chrono::seconds(10)));
    RegisterAll(*m, first, 1);
    RegisterAll(*m, second, 1);
    ASSERT_TRUE(WaitState(first, JobState::kRunning));
    ASSERT_TRUE(WaitState(second, JobState::kRunning));
    m->Stop();  // the controller goes away while its ranks run
  }
  // The new controller finds no rank alive (they died with the host, say).
  ScriptedAllocator alloc(2, *store_);
  auto m = MakeManager(alloc);
  ASSERT_TRUE(m->Recover().ok());
  m->Start();
  ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 2; }, std::chrono::seconds(10)));
  for (int64_t id : {first, second}) {
    const auto job = store_->GetJob(id);
    EXPECT_EQ(job->attempt, 2);
    EXPECT_EQ(job->restarts, 1);
    bool saw = false;
    for (const auto& h : store_->History(id)) {
      saw = saw || (h.state == JobState::kRestarting &&
                    h.reason.find("every rank of attempt 1 ended while dsv3d was down") != std::string::npos);
    }
    EXPECT_TRUE(saw);
  }
}

TEST_F(JobManagerTest, RecoveryAdoptsRunningRanksWithoutARestart) {
  int64_t id = 0;
  {
    ScriptedAllocator alloc(1, *store_);
    auto m = MakeManager(alloc);
    ASSERT_TRUE(m->Recover().ok());
    m->Start();
    id = Submit(*m, 1);
    ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 1; }, std::chrono::seconds(10)));
    RegisterAll(*m, id, 1);
    ASSERT_TRUE(WaitState(id, JobState::kRunning));
    ASSERT_TRUE(m->ReportMetrics(Ref(id, 0), {{40, "loss", 2.0, 1}}).ok());
    m->Stop();
  }
  ScriptedAllocator alloc(1, *store_);
  alloc.adoptable = {0};
  auto m = MakeManager(alloc);
  // Before recovery, reports are deferred, not refused for good.
  EXPECT_EQ(m->Heartbeat(Ref(id, 0), 41, nullptr).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(m->Recover().ok());
  EXPECT_EQ(m->Progress(*store_->GetJob(id)).step, 40);  // progress rebuilt from the store
  m->Start();
  EXPECT_TRUE(m->Heartbeat(Ref(id, 0), 41, nullptr).ok());
  EXPECT_EQ(m->Progress(*store_->GetJob(id)).step, 41);  // heartbeats carry the step too
  EXPECT_EQ(store_->GetJob(id)->state, JobState::kRunning);
  EXPECT_EQ(store_->GetJob(id)->state_reason, "dsv3d restarted; adopted all 1 running rank(s)");
  FinishAll(*m, alloc, id, 1);
  ASSERT_TRUE(WaitState(id, JobState::kCompleted));
  EXPECT_EQ(alloc.NumLaunches(), 0u);
  EXPECT_EQ(store_->GetJob(id)->restarts, 0);
}

}  // namespace
}  // namespace dsv3::server

namespace dsv3::server {
namespace {

// An external scheduler's queue (Slurm PENDING) holds the startup timeout and shows in the
// job's state reason; the timeout runs from the moment the scheduler starts the ranks; the
// allocation is kept in the store, one row per attempt.
TEST_F(JobManagerTest, ExternalQueueHoldsTheStartupTimeoutAndIsRecorded) {
  ScriptedAllocator alloc(1, *store_);
  auto m = MakeManager(alloc, milliseconds(500));
  ASSERT_TRUE(m->Recover().ok());
  m->Start();
  const int64_t id = Submit(*m, 1, 0, /*max_restarts=*/0);
  ASSERT_TRUE(WaitFor([&] { return alloc.NumLaunches() == 1; }, std::chrono::seconds(10)));
  alloc.Allocation({id, 1, "slurm", "41", "PENDING", "Priority", false});
  ASSERT_TRUE(WaitFor([&] { return store_->GetJob(id)->state_reason == "attempt 1: slurm job 41 PENDING (Priority)"; },
                      std::chrono::seconds(10)))
      << store_->GetJob(id)->state_reason;
  std::this_thread::sleep_for(milliseconds(1200));  // well past the startup timeout
  EXPECT_EQ(State(id), JobState::kStarting);
  alloc.Allocation({id, 1, "slurm", "41", "RUNNING", "", true});
  // It never registers once running: the attempt fails, its ranks are killed.
  ASSERT_TRUE(WaitFor([&] { return alloc.Signaled(id, SIGKILL); }, std::chrono::seconds(10)));
  alloc.End(id, 1, 0, 128 + SIGKILL);
  ASSERT_TRUE(WaitState(id, JobState::kFailed));
  EXPECT_NE(store_->GetJob(id)->state_reason.find("did not register within 0.5 s"), std::string::npos)
      << store_->GetJob(id)->state_reason;
  const auto allocations = store_->Allocations(id);
  ASSERT_EQ(allocations.size(), 1u);
  EXPECT_EQ(allocations[0].external_id, "41");
  EXPECT_EQ(allocations[0].state, "RUNNING");
}

}  // namespace
}  // namespace dsv3::server
