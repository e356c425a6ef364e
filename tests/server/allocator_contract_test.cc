// The Allocator contract: every allocator dsv3d can be given passes the same typed tests —
// slot accounting across Reserve/Release, launching ranks with their environment, folder and
// log, reporting each exit with its code, signals to the whole rank, all-or-nothing launches
// that name the failing rank, refusal of a job larger than the allocator, and the node view.
// Run here over `local` and `routing` (a daemon's allocator with a local primary).
#include <signal.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "allocators/local_allocator.h"
#include "allocators/slurm_allocator.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

using test::ReadFile;
using test::WaitFor;

constexpr int kSlots = 2;

struct LocalKind {
  static std::string Name() { return "local"; }
  static std::unique_ptr<Allocator> Make() { return MakeLocalAllocator(kSlots); }
};

struct RoutingKind {
  static std::string Name() { return "routing"; }
  static std::unique_ptr<Allocator> Make() {
    return MakeRoutingAllocator(MakeLocalAllocator(kSlots), nullptr, "no Slurm in this test");
  }
};

template <typename Kind>
class AllocatorContract : public ::testing::Test {
 protected:
  void SetUp() override {
    alloc_ = Kind::Make();
    alloc_->SetExitCallback([this](const RankExit& e) {
      std::lock_guard<std::mutex> l(mu_);
      exits_.push_back(e);
    });
  }
  void TearDown() override { alloc_->SetExitCallback(nullptr); }

  static JobRecord Job(int64_t id, int ranks) {
    JobRecord j;
    j.id = id;
    j.num_ranks = ranks;
    j.attempt = 1;
    return j;
  }
  RankLaunch Rank(int64_t job, int rank, const std::string& script) {
    RankLaunch r;
    r.rank = rank;
    r.argv = {"/bin/sh", "-c", script};
    r.env = {{"RANK", std::to_string(rank)}};
    r.cwd = dir_.path().string();
    r.log_path = (dir_.path() / ("job" + std::to_string(job) + "-rank" + std::to_string(rank) + ".log")).string();
    return r;
  }
  LaunchSpec Spec(int64_t job, std::vector<RankLaunch> ranks) {
    LaunchSpec s;
    s.job_id = job;
    s.attempt = 1;
    s.ranks = std::move(ranks);
    s.job = Job(job, static_cast<int>(s.ranks.size()));
    return s;
  }
  std::vector<RankExit> ExitsOf(int64_t job) {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<RankExit> out;
    for (const auto& e : exits_) {
      if (e.job_id == job) out.push_back(e);
    }
    return out;
  }
  bool WaitExits(int64_t job, size_t n) {
    return WaitFor([&] { return ExitsOf(job).size() >= n; }, std::chrono::seconds(20));
  }

  test::TempDir dir_;
  std::unique_ptr<Allocator> alloc_;
  std::mutex mu_;
  std::vector<RankExit> exits_;
};

using Kinds = ::testing::Types<LocalKind, RoutingKind>;
TYPED_TEST_SUITE(AllocatorContract, Kinds, test::NamedByType);

TYPED_TEST(AllocatorContract, SlotsAreReservedUntilReleased) {
  auto& a = *this->alloc_;
  EXPECT_EQ(a.TotalSlots(), kSlots);
  EXPECT_EQ(a.FreeSlots(), kSlots);
  const auto p = a.Reserve(this->Job(1, 2));
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->hosts.size(), 2u);
  EXPECT_EQ(a.FreeSlots(), 0);
  EXPECT_FALSE(a.Reserve(this->Job(2, 1)).has_value());
  EXPECT_TRUE(a.Reserve(this->Job(1, 2)).has_value());  // the job's own reservation holds
  EXPECT_NE(a.WhyNotPlaced(this->Job(2, 1)).find("0 free"), std::string::npos) << a.WhyNotPlaced(this->Job(2, 1));
  a.Release(1);
  EXPECT_EQ(a.FreeSlots(), kSlots);
  EXPECT_TRUE(a.Reserve(this->Job(2, 1)).has_value());
}

TYPED_TEST(AllocatorContract, RanksRunWithTheirEnvironmentAndEachExitIsReported) {
  auto& a = *this->alloc_;
  ASSERT_TRUE(a.Reserve(this->Job(3, 2)).has_value());
  auto launched = a.Launch(this->Spec(3, {this->Rank(3, 0, "echo rank=$RANK; pwd; exit 0"),
                                          this->Rank(3, 1, "echo rank=$RANK; exit 7")}));
  ASSERT_TRUE(launched.ok()) << launched.status();
  ASSERT_EQ(launched->size(), 2u);
  for (const auto& l : *launched) EXPECT_GT(l.pid, 0);
  ASSERT_TRUE(this->WaitExits(3, 2));
  std::map<int, int> codes;
  for (const auto& e : this->ExitsOf(3)) codes[e.rank] = e.exit_code;
  EXPECT_EQ(codes, (std::map<int, int>{{0, 0}, {1, 7}}));
  EXPECT_EQ(ReadFile(this->dir_.path() / "job3-rank0.log"), "rank=0\n" + this->dir_.path().string() + "\n");
  EXPECT_EQ(ReadFile(this->dir_.path() / "job3-rank1.log"), "rank=1\n");
  EXPECT_EQ(a.LiveRanks(3), 0);
  a.Release(3);
}

TYPED_TEST(AllocatorContract, SignalAndKillReachEveryRankOfTheJob) {
  auto& a = *this->alloc_;
  ASSERT_TRUE(a.Reserve(this->Job(4, 2)).has_value());
  ASSERT_TRUE(a.Launch(this->Spec(4, {this->Rank(4, 0, "sleep 30"), this->Rank(4, 1, "sleep 30")})).ok());
  EXPECT_EQ(a.LiveRanks(4), 2);
  a.Signal(4, SIGTERM);
  ASSERT_TRUE(this->WaitExits(4, 2));
  for (const auto& e : this->ExitsOf(4)) EXPECT_EQ(e.exit_code, 128 + SIGTERM) << e.how;
  ASSERT_TRUE(a.Launch(this->Spec(5, {this->Rank(5, 0, "trap '' TERM; sleep 30")})).ok());
  a.Kill(5);
  ASSERT_TRUE(this->WaitExits(5, 1));
  EXPECT_EQ(this->ExitsOf(5)[0].exit_code, 128 + SIGKILL);
  a.Release(4);
}

TYPED_TEST(AllocatorContract, ALaunchThatCannotStartARankStartsNoneAndNamesIt) {
  auto& a = *this->alloc_;
  ASSERT_TRUE(a.Reserve(this->Job(6, 2)).has_value());
  RankLaunch missing = this->Rank(6, 1, "");
  missing.argv = {"/nonexistent/dsv3-worker"};
  auto launched = a.Launch(this->Spec(6, {this->Rank(6, 0, "sleep 30"), missing}));
  ASSERT_FALSE(launched.ok());
  EXPECT_NE(std::string(launched.status().message()).find("rank 1"), std::string::npos) << launched.status();
  EXPECT_TRUE(WaitFor([&] { return a.LiveRanks(6) == 0; }, std::chrono::seconds(20)));
  a.Release(6);
}

TYPED_TEST(AllocatorContract, AJobLargerThanTheAllocatorIsRefusedNamingTheSlots) {
  const std::optional<FieldProblem> p = this->alloc_->CanRun(this->Job(7, kSlots + 1));
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->code, kProblemExceedsCapacity);
  EXPECT_EQ(p->path, "num_ranks");
  EXPECT_NE(p->message.find(std::to_string(kSlots + 1) + " slots"), std::string::npos) << p->message;
  EXPECT_FALSE(this->alloc_->CanRun(this->Job(8, kSlots)).has_value());
}

TYPED_TEST(AllocatorContract, NodesShowSlotsInUseAndTheirJobs) {
  auto& a = *this->alloc_;
  ASSERT_TRUE(a.Reserve(this->Job(9, 1)).has_value());
  const std::vector<NodeInfo> nodes = a.Nodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].slots, kSlots);
  EXPECT_EQ(nodes[0].used, 1);
  EXPECT_EQ(nodes[0].jobs, std::vector<int64_t>{9});
  a.Release(9);
  EXPECT_EQ(a.Nodes()[0].used, 0);
}

}  // namespace
}  // namespace dsv3::server
