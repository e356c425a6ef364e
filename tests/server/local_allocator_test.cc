// The local allocator with real processes: exit statuses, logs, environment and working
// folder, signals to the process group (grandchildren included), a missing program, slot
// accounting, and adoption of ranks a previous controller started.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>

#include <gtest/gtest.h>

#include "allocators/local_allocator.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

namespace fs = std::filesystem;
using test::ReadFile;
using test::WaitFor;

class LocalAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    alloc_ = MakeLocalAllocator(2);
    alloc_->SetExitCallback([this](const RankExit& e) {
      std::lock_guard<std::mutex> l(mu_);
      exits_.push_back(e);
    });
  }
  void TearDown() override { alloc_->SetExitCallback(nullptr); }

  LaunchSpec Shell(int64_t job, const std::string& script, std::map<std::string, std::string> env = {}) {
    RankLaunch r;
    r.rank = 0;
    r.argv = {"/bin/sh", "-c", script};
    r.env = std::move(env);
    r.cwd = dir_.path().string();
    r.log_path = (dir_.path() / ("job" + std::to_string(job) + ".log")).string();
    return LaunchSpec{job, 1, {r}, {}};
  }
  static JobRecord Job(int64_t id, int ranks, int attempt = 1) {
    JobRecord j;
    j.id = id;
    j.num_ranks = ranks;
    j.attempt = attempt;
    return j;
  }
  std::optional<RankExit> ExitOf(int64_t job) {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& e : exits_) {
      if (e.job_id == job) return e;
    }
    return std::nullopt;
  }
  bool WaitExit(int64_t job) {
    return WaitFor([&] { return ExitOf(job).has_value(); }, std::chrono::seconds(20));
  }

  test::TempDir dir_;
  std::unique_ptr<Allocator> alloc_;
  std::mutex mu_;
  std::vector<RankExit> exits_;
};

TEST_F(LocalAllocatorTest, ReportsExitStatusAndCapturesOutput) {
  ASSERT_TRUE(alloc_->Reserve(Job(1, 1)).has_value());
  auto launched = alloc_->Launch(Shell(1, "echo out; echo err >&2; echo rank=$RANK; pwd; exit 3", {{"RANK", "5"}}));
  ASSERT_TRUE(launched.ok()) << launched.status();
  ASSERT_EQ(launched->size(), 1u);
  EXPECT_GT((*launched)[0].pid, 0);
  ASSERT_TRUE(WaitExit(1));
  EXPECT_EQ(ExitOf(1)->exit_code, 3);
  EXPECT_EQ(ExitOf(1)->how, "exited with status 3");
  EXPECT_EQ(ReadFile(dir_.path() / "job1.log"), "out\nerr\nrank=5\n" + dir_.path().string() + "\n");
  EXPECT_EQ(alloc_->LiveRanks(1), 0);
}

// A rank log past the cap (--max-rank-log-bytes) is copied to <log>.1 and emptied while the
// rank keeps writing; its newest lines are in the log, the ones before in <log>.1.
TEST_F(LocalAllocatorTest, RankLogsPastTheCapRotate) {
  auto capped = MakeLocalAllocator(1, 1000);
  std::atomic<bool> ended{false};
  capped->SetExitCallback([&](const RankExit&) { ended = true; });
  ASSERT_TRUE(capped->Reserve(Job(7, 1)).has_value());
  // 50 lines of 60 bytes over 5 s: the 2 s checks find the log past 1000 bytes.
  const std::string script =
      "i=0; while [ $i -lt 50 ]; do echo line-$i-$(printf '%050d' 0); i=$((i+1)); sleep 0.1; done";
  ASSERT_TRUE(capped->Launch(Shell(7, script)).ok());
  ASSERT_TRUE(WaitFor([&] { return ended.load(); }, std::chrono::seconds(30)));
  capped->SetExitCallback(nullptr);
  const fs::path log = dir_.path() / "job7.log", rotated = dir_.path() / "job7.log.1";
  ASSERT_TRUE(fs::exists(rotated));
  EXPECT_GT(fs::file_size(rotated), 1000u);
  EXPECT_LT(fs::file_size(log), 50u * 61u);  // not everything: it was emptied at least once
  const std::string newest = ReadFile(log), older = ReadFile(rotated);
  EXPECT_EQ(older.rfind("line-", 0), 0u) << older;  // whole lines: the rank started over at 0
  EXPECT_NE(newest.find("line-49-"), std::string::npos) << newest;
}

TEST_F(LocalAllocatorTest, SignalsReachTheRankEvenWhenTheCallerBlocksThem) {
  // dsv3d blocks SIGTERM in its threads for sigwait; ranks must not inherit that.
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &old);
  auto launched = alloc_->Launch(Shell(2, "exec sleep 30"));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(launched.ok()) << launched.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  alloc_->Signal(2, SIGTERM);
  ASSERT_TRUE(WaitExit(2));
  EXPECT_EQ(ExitOf(2)->exit_code, 128 + SIGTERM);
  EXPECT_NE(ExitOf(2)->how.find("killed by signal 15"), std::string::npos) << ExitOf(2)->how;
}

TEST_F(LocalAllocatorTest, KillTakesTheWholeProcessGroup) {
  const std::string pidfile = (dir_.path() / "grandchild.pid").string();
  auto launched = alloc_->Launch(Shell(3, "sleep 30 & echo $! > " + pidfile + "; wait"));
  ASSERT_TRUE(launched.ok());
  ASSERT_TRUE(WaitFor([&] { return !ReadFile(pidfile).empty(); }, std::chrono::seconds(10)));
  const int64_t grandchild = std::stoll(ReadFile(pidfile));
  EXPECT_GT(procs::ProcessStartTime(grandchild), 0);
  alloc_->Kill(3);
  ASSERT_TRUE(WaitExit(3));
  EXPECT_EQ(ExitOf(3)->exit_code, 128 + SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return procs::ProcessStartTime(grandchild) == 0; }, std::chrono::seconds(10)));
}

TEST_F(LocalAllocatorTest, AMissingProgramIsAnErrorNotAnExit) {
  LaunchSpec spec = Shell(4, "");
  spec.ranks[0].argv = {"/nonexistent/dsv3-worker"};
  auto launched = alloc_->Launch(spec);
  ASSERT_FALSE(launched.ok());
  EXPECT_NE(std::string(launched.status().message()).find("cannot start /nonexistent/dsv3-worker"), std::string::npos)
      << launched.status();
  EXPECT_NE(std::string(launched.status().message()).find("No such file"), std::string::npos) << launched.status();
  spec = Shell(4, "true");
  spec.ranks[0].cwd = "/nonexistent-folder";
  EXPECT_FALSE(alloc_->Launch(spec).ok());
}

TEST_F(LocalAllocatorTest, ReservesOnlyFreeSlots) {
  EXPECT_EQ(alloc_->TotalSlots(), 2);
  ASSERT_TRUE(alloc_->Reserve(Job(10, 2)).has_value());
  EXPECT_EQ(alloc_->FreeSlots(), 0);
  EXPECT_FALSE(alloc_->Reserve(Job(11, 1)).has_value());
  EXPECT_TRUE(alloc_->Reserve(Job(10, 2)).has_value());  // a job keeps its own reservation
  alloc_->Release(10);
  EXPECT_EQ(alloc_->FreeSlots(), 2);
  EXPECT_EQ(alloc_->Reserve(Job(11, 1))->master_addr, "127.0.0.1");
}

TEST_F(LocalAllocatorTest, AdoptsLiveRanksOfAPreviousController) {
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sleep", "sleep", "30", nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int64_t start = procs::ProcessStartTime(pid);
  ASSERT_GT(start, 0);
  RankRecord alive{20, 1, 0, pid, start, "h", "", "registered", 0, 0, 0};
  RankRecord reused{20, 1, 1, pid, start + 1, "h", "", "registered", 0, 0, 0};  // same pid, other process
  RankRecord gone{20, 1, 2, 999999, 1, "h", "", "launched", 0, 0, 0};
  const auto adopted = alloc_->Adopt(Job(20, 3), {alive, reused, gone}, "");
  EXPECT_EQ(adopted, std::vector<int>{0});
  EXPECT_EQ(alloc_->FreeSlots(), -1);  // 3 ranks reserved on 2 slots: what was running keeps running
  EXPECT_EQ(alloc_->LiveRanks(20), 1);
  kill(pid, SIGKILL);
  ASSERT_TRUE(WaitExit(20));
  EXPECT_EQ(ExitOf(20)->exit_code, -1);  // not our child: the status is unknown
  EXPECT_EQ(ExitOf(20)->rank, 0);
  waitpid(pid, nullptr, 0);
}

}  // namespace
}  // namespace dsv3::server
