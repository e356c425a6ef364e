// The slurm allocator without a cluster: what Slurm's job states mean to dsv3d, and the
// allocator's side of the Allocator interface against scripted Slurm tools (sbatch, squeue,
// scancel, scontrol, sinfo) first on PATH, whose queue the test sets by hand. Slurm is not a
// kind of the typed Allocator contract (allocator_contract_test.cc): it holds no slots
// (its queue is the queue), runs one command on every task, and ends an allocation as one
// (one exit code for every rank). The real-Slurm runs are slurm_e2e.
#include "allocators/slurm_allocator.h"

#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <mutex>

#include <gtest/gtest.h>

#include "rank_exit_log.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

using test::ReadFile;
using test::WaitFor;

TEST(SlurmStates, MapToRunningWaitingOrEndedWithAnExitCode) {
  for (const char* waiting : {"PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED"}) {
    const SlurmStateMeaning m = InterpretSlurmState(waiting);
    EXPECT_FALSE(m.ended) << waiting;
    EXPECT_FALSE(m.running) << waiting;
  }
  for (const char* running : {"RUNNING", "COMPLETING"}) {
    EXPECT_TRUE(InterpretSlurmState(running).running) << running;
    EXPECT_FALSE(InterpretSlurmState(running).ended) << running;
  }
  EXPECT_TRUE(InterpretSlurmState("COMPLETED").ended);
  EXPECT_EQ(InterpretSlurmState("COMPLETED").exit_code, 0);
  EXPECT_EQ(InterpretSlurmState("CANCELLED").exit_code, 143);
  for (const char* failed : {"FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                             "VANISHED"}) {
    const SlurmStateMeaning m = InterpretSlurmState(failed);
    EXPECT_TRUE(m.ended) << failed;
    EXPECT_EQ(m.exit_code, 1) << failed;
  }
}

// Scripted Slurm tools. Each job is a file <state>/<id> holding "STATE|REASON"; squeue lists
// those not marked forgotten (<id>.gone), scontrol shows any whose file exists, sbatch keeps
// the script it was given and queues the job PENDING, scancel logs its arguments (and a
// plain one cancels), sinfo reports one node of 4 CPUs.
constexpr const char* kTools[][2] = {
    {"sbatch", R"sh(n=$(($(cat "$S/next" 2>/dev/null || echo 100) + 1)); echo $n > "$S/next"
cp "$2" "$S/$n.sh"; echo "PENDING|Priority" > "$S/$n"; echo "$n;fake")sh"},
    {"squeue", R"sh(for f in "$S"/[0-9]*; do case $f in *.sh|*.gone|*.nothing) continue;; esac
id=${f##*/}; [ -e "$S/$id.gone" ] || echo "$id|$(cat "$f")"; done)sh"},
    {"scontrol", R"sh(id=$4; [ -e "$S/$id" ] && [ ! -e "$S/$id.nothing" ] || exit 1
IFS='|' read -r st re < "$S/$id"; echo "JobId=$id JobName=x JobState=$st Reason=$re Dependency=(null)")sh"},
    {"scancel", R"sh(echo "$*" >> "$S/scancel.log"
case $1 in --signal=*) ;; *) echo "CANCELLED|None" > "$S/$1";; esac)sh"},
    {"sinfo", R"sh(case "$*" in *-N*) echo "fake1|idle|1/3/0/4|127.0.0.1";; *) echo "1/3/0/4";; esac)sh"},
};

class FakeSlurm : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::filesystem::path bin = dir_.path() / "bin";
    std::filesystem::create_directories(bin);
    std::filesystem::create_directories(state());
    for (const auto& [name, body] : kTools) {
      const std::string path = (bin / name).string();
      std::ofstream(path) << "#!/bin/bash\nS=" << state().string() << "\n" << body << "\n";
      chmod(path.c_str(), 0755);
    }
    old_path_ = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "/usr/bin:/bin";
    setenv("PATH", (bin.string() + ":" + old_path_).c_str(), 1);
    SlurmOptions o;
    o.poll_interval = std::chrono::milliseconds(50);
    auto a = MakeSlurmAllocator(o);
    ASSERT_TRUE(a.ok()) << a.status();
    alloc_ = std::move(*a);
    alloc_->SetExitCallback(exits_.Recorder());
    alloc_->SetAllocationCallback([this](const AllocationUpdate& u) {
      std::lock_guard<std::mutex> l(mu_);
      updates_.push_back(u);
    });
  }
  void TearDown() override {
    alloc_.reset();
    setenv("PATH", old_path_.c_str(), 1);
  }

  std::filesystem::path state() const { return dir_.path() / "slurm"; }
  void SetState(const std::string& id, const std::string& state_and_reason) {
    std::ofstream(state() / id) << state_and_reason << "\n";
  }

  JobRecord Job(int64_t id, int ranks) const {
    JobRecord j;
    j.id = id;
    j.name = "job" + std::to_string(id);
    j.num_ranks = ranks;
    j.attempt = 1;
    j.job_dir = (dir_.path() / ("job" + std::to_string(id))).string();
    std::filesystem::create_directories(j.job_dir);
    return j;
  }
  LaunchSpec Spec(const JobRecord& job) const {
    LaunchSpec s;
    s.job_id = job.id;
    s.attempt = 1;
    s.job = job;
    for (int r = 0; r < job.num_ranks; ++r) {
      RankLaunch rl;
      rl.rank = r;
      rl.argv = {"/opt/dsv3/dsv3-worker", "--config", job.job_dir + "/config.json"};
      rl.env = {{"RANK", std::to_string(r)}, {"DSV3_JOB_ID", std::to_string(job.id)}};
      rl.cwd = job.job_dir;
      s.ranks.push_back(rl);
    }
    return s;
  }
  bool SawState(int64_t job, const std::string& state) {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& u : updates_) {
      if (u.job_id == job && u.state == state) return true;
    }
    return false;
  }
  // Launches `job` and returns its Slurm id.
  std::string Launch(const JobRecord& job) {
    auto launched = alloc_->Launch(Spec(job));
    EXPECT_TRUE(launched.ok()) << launched.status();
    EXPECT_EQ(launched.ok() ? launched->size() : 0u, static_cast<size_t>(job.num_ranks));
    return std::to_string(std::stoi(ReadFile(state() / "next")));
  }

  test::TempDir dir_;
  std::string old_path_;
  std::unique_ptr<Allocator> alloc_;
  RankExitLog exits_;
  std::mutex mu_;
  std::vector<AllocationUpdate> updates_;
};

TEST_F(FakeSlurm, ReserveNeverRefusesAndTheNodesAreSlurms) {
  const JobRecord job = Job(1, 3);
  const auto placement = alloc_->Reserve(job);
  ASSERT_TRUE(placement.has_value());  // Slurm queues what does not fit
  EXPECT_TRUE(placement->hosts.empty());
  ASSERT_TRUE(WaitFor([&] { return alloc_->TotalSlots() == 4; }, std::chrono::seconds(10)));
  EXPECT_EQ(alloc_->FreeSlots(), 3);
  const auto nodes = alloc_->Nodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].name, "fake1");
  EXPECT_EQ(nodes[0].slots, 4);
  EXPECT_EQ(nodes[0].used, 1);
}

TEST_F(FakeSlurm, CanRunNamesTheSlurmFieldThatDoesNotFitTheRanks) {
  JobRecord job = Job(2, 3);
  job.plan.launcher = "slurm";
  job.plan.slurm.enabled = true;
  job.plan.slurm.nodes = 2;
  job.plan.slurm.ntasks_per_node = 1;
  auto p = alloc_->CanRun(job);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/slurm/ntasks_per_node");
  EXPECT_EQ(p->code, kProblemSlurmLayout);
  EXPECT_EQ(p->message, "2 x 1 tasks is not the job's 3 rank(s)");
  job.num_ranks = 2;
  EXPECT_FALSE(alloc_->CanRun(job).has_value());
  // A config that leaves Slurm to dsv3d (--allocator slurm) spreads the ranks over its nodes.
  job.plan.slurm.enabled = false;
  job.num_ranks = 3;
  p = alloc_->CanRun(job);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/slurm/nodes");
  EXPECT_EQ(p->message, "2 node(s) cannot hold 3 rank(s) evenly");
  auto refused = alloc_->Launch(Spec(job));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message(), "/slurm/nodes: 2 node(s) cannot hold 3 rank(s) evenly");
}

// One batch job per attempt: the script runs the first rank's command on every task with the
// environment the ranks share; Slurm's states reach the manager; its end is every rank's.
TEST_F(FakeSlurm, AnAttemptIsOneBatchJobWhoseEndIsEveryRanks) {
  const JobRecord job = Job(3, 2);
  ASSERT_TRUE(alloc_->Reserve(job).has_value());
  const std::string id = Launch(job);
  const std::string script = ReadFile(state() / (id + ".sh"));
  EXPECT_NE(script.find("export DSV3_JOB_ID='3'"), std::string::npos) << script;
  EXPECT_EQ(script.find("export RANK="), std::string::npos) << script;  // each task's own, from SLURM_PROCID
  EXPECT_NE(script.find("'/opt/dsv3/dsv3-worker' '--config' '" + job.job_dir + "/config.json'"), std::string::npos)
      << script;
  EXPECT_TRUE(WaitFor([&] { return SawState(3, "PENDING"); }, std::chrono::seconds(10)));
  EXPECT_EQ(alloc_->LiveRanks(3), 2);
  SetState(id, "RUNNING|None");
  EXPECT_TRUE(WaitFor([&] { return SawState(3, "RUNNING"); }, std::chrono::seconds(10)));
  EXPECT_TRUE(exits_.Of(3).empty());
  SetState(id, "FAILED|NonZeroExitCode");
  ASSERT_TRUE(WaitFor([&] { return exits_.Of(3).size() == 2; }, std::chrono::seconds(10)));
  for (const auto& e : exits_.Of(3)) {
    EXPECT_EQ(e.exit_code, 1);
    EXPECT_EQ(e.how, "ended with Slurm job " + id + " FAILED (NonZeroExitCode)");
  }
  EXPECT_EQ(alloc_->LiveRanks(3), 0);
  alloc_->Release(3);
}

// SIGTERM and SIGKILL cancel the allocation (the ranks get Slurm's KillWait to checkpoint);
// other signals go to its steps.
TEST_F(FakeSlurm, SignalsAreScancelsAndACancelEndsEveryRankWith143) {
  const JobRecord job = Job(4, 2);
  const std::string id = Launch(job);
  SetState(id, "RUNNING|None");
  alloc_->Signal(4, SIGUSR1);
  alloc_->Signal(4, SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return exits_.Of(4).size() == 2; }, std::chrono::seconds(10)));
  for (const auto& e : exits_.Of(4)) EXPECT_EQ(e.exit_code, 128 + SIGTERM) << e.how;
  EXPECT_EQ(ReadFile(state() / "scancel.log"), "--signal=" + std::to_string(SIGUSR1) + " " + id + "\n" + id + "\n");
}

// A job squeue no longer lists is read with scontrol; one neither knows ends VANISHED after
// five polls.
TEST_F(FakeSlurm, AJobSqueueForgetsIsReadWithScontrolOrEndsVanished) {
  const std::string first = Launch(Job(5, 1));
  SetState(first, "COMPLETED|None");
  std::ofstream(state() / (first + ".gone")).flush();
  ASSERT_TRUE(WaitFor([&] { return exits_.Of(5).size() == 1; }, std::chrono::seconds(10)));
  EXPECT_EQ(exits_.Of(5)[0].exit_code, 0);
  const std::string second = Launch(Job(6, 1));
  std::ofstream(state() / (second + ".gone")).flush();
  std::ofstream(state() / (second + ".nothing")).flush();
  ASSERT_TRUE(WaitFor([&] { return exits_.Of(6).size() == 1; }, std::chrono::seconds(10)));
  EXPECT_EQ(exits_.Of(6)[0].exit_code, 1);
  EXPECT_NE(exits_.Of(6)[0].how.find("VANISHED"), std::string::npos) << exits_.Of(6)[0].how;
}

}  // namespace
}  // namespace dsv3::server
