// The Allocator contract: every allocator dsv3d can be given passes the same typed tests —
// slot accounting across Reserve/Release, launching ranks with their environment, folder and
// log, reporting each exit with its code, signals to the whole rank, all-or-nothing launches
// that name the failing rank, refusal of a job larger than the allocator, and the node view.
// Run here over `local`, `routing` (a daemon's allocator with a local primary) and `static`
// (one real dsv3-agent on loopback, joined over the AgentControl stream). Slurm, whose
// queue is the queue and whose allocation ends as one, has its own suites: scripted Slurm
// tools (slurm_allocator_test.cc) and a real one (slurm_e2e).
#include <signal.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "allocators/local_allocator.h"
#include "allocators/slurm_allocator.h"
#include "allocators/static_allocator.h"
#include "child_process.h"
#include "rank_exit_log.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

using test::ReadFile;
using test::WaitFor;

constexpr int kSlots = 2;

// Each kind owns what its allocator needs and says how its Launch reports: synchronously
// (pids at once, a rank that cannot start fails the call) or through a remote agent (pids
// when the agent says, a rank that cannot start reported as exits of the launch's ranks).
struct LocalKind {
  static constexpr bool kLaunchIsSynchronous = true;
  static std::string Name() { return "local"; }
  std::unique_ptr<Allocator> alloc = MakeLocalAllocator(kSlots);
};

struct RoutingKind {
  static constexpr bool kLaunchIsSynchronous = true;
  static std::string Name() { return "routing"; }
  std::unique_ptr<Allocator> alloc = MakeRoutingAllocator(MakeLocalAllocator(kSlots), nullptr, "no Slurm in this test");
};

// A static allocator behind a loopback gRPC server, one dsv3-agent with kSlots slots, and
// a hosts file that caps it there.
struct StaticKind {
  static constexpr bool kLaunchIsSynchronous = false;
  static std::string Name() { return "static"; }
  StaticKind() {
    StaticOptions o;
    o.agent_of_token = [](const std::string& token) -> absl::StatusOr<std::string> {
      if (token == "agent-secret") return std::string("node-a");
      return absl::UnauthenticatedError("unknown agent credential");
    };
    o.hosts = std::map<std::string, int>{{"node-a", kSlots}};
    o.heartbeat_interval = std::chrono::milliseconds(200);
    auto a = MakeStaticAllocator(o);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(a->service());
    server = builder.BuildAndStart();
    std::ofstream(dir.path() / "token") << "agent-secret\n";
    agent = test::Child({DSV3_AGENT_PATH, "--controller", "127.0.0.1:" + std::to_string(port), "--name", "node-a",
                         "--slots", std::to_string(kSlots), "--advertise", "127.0.0.1", "--token-file",
                         (dir.path() / "token").string(), "--work-dir", (dir.path() / "agent").string()},
                        dir.path() / "agent.log");
    joined = WaitFor([&] { return a->FreeSlots() == kSlots; }, std::chrono::seconds(30));
    static_ = a.get();
    alloc = std::move(a);
  }
  ~StaticKind() {
    agent.Kill(SIGTERM);  // the agent takes its ranks with it
    static_->Disconnect();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  test::TempDir dir;
  std::unique_ptr<grpc::Server> server;
  test::Child agent;
  bool joined = false;
  StaticAllocator* static_ = nullptr;
  std::unique_ptr<Allocator> alloc;
};

template <typename Kind>
class AllocatorContract : public ::testing::Test {
 protected:
  void SetUp() override {
    kind_ = std::make_unique<Kind>();
    alloc_ = kind_->alloc.get();
    if constexpr (!Kind::kLaunchIsSynchronous) {
      ASSERT_TRUE(kind_->joined) << kind_->agent.Log();
    }
    alloc_->SetExitCallback(exits_.Recorder());
  }
  void TearDown() override {
    if (alloc_ != nullptr) alloc_->SetExitCallback(nullptr);
  }

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
  test::TempDir dir_;
  std::unique_ptr<Kind> kind_;
  Allocator* alloc_ = nullptr;
  RankExitLog exits_;
};

using Kinds = ::testing::Types<LocalKind, RoutingKind, StaticKind>;
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
  for (const auto& l : *launched) {
    EXPECT_FALSE(l.host.empty());
    if (TypeParam::kLaunchIsSynchronous) {
      EXPECT_GT(l.pid, 0);  // an agent says its pids later
    }
  }
  ASSERT_TRUE(this->exits_.Wait(3, 2));
  std::map<int, int> codes;
  for (const auto& e : this->exits_.Of(3)) codes[e.rank] = e.exit_code;
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
  ASSERT_TRUE(this->exits_.Wait(4, 2));
  for (const auto& e : this->exits_.Of(4)) EXPECT_EQ(e.exit_code, 128 + SIGTERM) << e.how;
  a.Release(4);
  ASSERT_TRUE(a.Reserve(this->Job(5, 1)).has_value());
  ASSERT_TRUE(a.Launch(this->Spec(5, {this->Rank(5, 0, "trap '' TERM; sleep 30")})).ok());
  ASSERT_TRUE(WaitFor([&] { return a.LiveRanks(5) == 1; }, std::chrono::seconds(20)));
  a.Kill(5);
  ASSERT_TRUE(this->exits_.Wait(5, 1));
  EXPECT_EQ(this->exits_.Of(5)[0].exit_code, 128 + SIGKILL);
  a.Release(5);
}

TYPED_TEST(AllocatorContract, ALaunchThatCannotStartARankStartsNoneAndNamesIt) {
  auto& a = *this->alloc_;
  ASSERT_TRUE(a.Reserve(this->Job(6, 2)).has_value());
  RankLaunch missing = this->Rank(6, 1, "");
  missing.argv = {"/nonexistent/dsv3-worker"};
  auto launched = a.Launch(this->Spec(6, {this->Rank(6, 0, "sleep 30"), missing}));
  if (TypeParam::kLaunchIsSynchronous) {
    ASSERT_FALSE(launched.ok());
    EXPECT_NE(std::string(launched.status().message()).find("rank 1"), std::string::npos) << launched.status();
  } else {
    // The agent starts neither and reports both ranks of its launch ended, naming rank 1.
    ASSERT_TRUE(launched.ok()) << launched.status();
    ASSERT_TRUE(this->exits_.Wait(6, 2));
    for (const auto& e : this->exits_.Of(6)) {
      EXPECT_EQ(e.exit_code, 127);
      EXPECT_NE(e.how.find("rank 1"), std::string::npos) << e.how;
    }
  }
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
