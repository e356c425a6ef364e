// The static allocator with real dsv3-agent processes, each its own "host" on a loopback
// address of this machine (127.0.0.2, 127.0.0.3, ...): placement over agents, lost agents,
// per-agent credentials, and agents that outlive a controller restart.
#include <chrono>

#include "controller_fixture.h"

namespace dsv3::test {
namespace {

using std::chrono::seconds;

class StaticTest : public ::testing::Test {
 protected:
  void SetUp() override { Corpus(); }

  // Starts dsv3d --allocator static; each agent joins with its own credential.
  void StartController(int heartbeat_timeout_s = 30, std::vector<std::string> more = {}) {
    std::vector<std::string> args = {"--allocator", "static"};
    args.insert(args.end(), more.begin(), more.end());
    d_ = std::make_unique<Dsv3d>(dir_.path() / "state", 1, heartbeat_timeout_s, args);
    d_->Start(port_);
    port_ = d_->port();
  }

  Child StartAgent(const std::string& name, const std::string& address, int slots, const std::string& token_file = "") {
    const std::string token = token_file.empty() ? d_->AgentCredential(name).string() : token_file;
    return Child({DSV3_AGENT_PATH, "--controller", d_->address(), "--name", name, "--slots", std::to_string(slots),
                  "--advertise", address, "--token-file", token, "--work-dir", (dir_.path() / ("agent-" + name)).string()},
                 dir_.path() / ("agent-" + name + ".log"));
  }

  std::map<std::string, v1::Node> Nodes() {
    grpc::ClientContext ctx;
    v1::ListNodesResponse resp;
    EXPECT_TRUE(d_->Stub()->ListNodes(&ctx, v1::ListNodesRequest{}, &resp).ok());
    std::map<std::string, v1::Node> out;
    for (const auto& n : resp.nodes()) out[n.name()] = n;
    return out;
  }
  bool Up(const std::vector<std::string>& names) {
    const auto nodes = Nodes();
    for (const auto& n : names) {
      const auto it = nodes.find(n);
      if (it == nodes.end() || it->second.state() != "up") return false;
    }
    return true;
  }

  static nlohmann::json Config(int64_t steps, int64_t save_every) {
    nlohmann::json c = QuickConfig(steps, save_every);
    c["training"]["micro_batch_size"] = 4;
    c["training"]["intra_op_threads"] = 1;
    return c;
  }

  TempDir dir_;
  std::unique_ptr<Dsv3d> d_;
  int port_ = 0;
};

// A hung rank on one agent is named by the watchdog; both agents' ranks send their dumps
// to the controller, which keeps them in the job's folder; the job resumes and completes.
TEST_F(StaticTest, HungRankOnOneAgentIsNamedDumpedAndTheJobResumes) {
  StartController();
  setenv("DSV3_FAULT", "hang:rank=1,step=14", 1);  // the agents pass it to their ranks
  Child a = StartAgent("node-a", "127.0.0.2", 1);
  Child b = StartAgent("node-b", "127.0.0.3", 1);
  unsetenv("DSV3_FAULT");
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a", "node-b"}); }, seconds(30))) << a.Log() << b.Log();
  auto stub = d_->Stub();
  nlohmann::json c = Config(20, 10);
  c["watchdog"] = {{"hang_timeout_s", 3}};
  const int64_t id = Submit(*stub, c, 0, 2);
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString() << a.Log() << b.Log();
  EXPECT_EQ(job.restarts(), 1);
  const std::string hang = FirstRestartReason(job);
  EXPECT_EQ(hang.rfind("rank 1 hung in forward (", 0), 0u) << job.DebugString();
  const fs::path diag = fs::path(job.job_dir()) / "diagnostics" / "1";
  EXPECT_NE(ReadFile(diag / "rank_0.txt").find(", waiting in "), std::string::npos);
  EXPECT_NE(ReadFile(diag / "rank_1.txt").find("dsv3::dist::HangForever"), std::string::npos);
}

// Two agents with one slot each run a 2-rank job: one rank on each, rank 0's agent is the
// rendezvous address, the ranks' output reaches the controller's logs, `dsv3ctl nodes`
// lists both.
TEST_F(StaticTest, TwoAgentsRunATwoRankJob) {
  StartController();
  Child a = StartAgent("node-a", "127.0.0.2", 1);
  Child b = StartAgent("node-b", "127.0.0.3", 1);
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a", "node-b"}); }, seconds(30))) << a.Log() << b.Log();
  std::string out;
  ASSERT_EQ(Cli({"nodes", "--controller", d_->address()}, &out), 0) << out;
  EXPECT_NE(out.find("allocator static"), std::string::npos) << out;
  EXPECT_NE(out.find("node-a"), std::string::npos) << out;
  EXPECT_NE(out.find("127.0.0.3"), std::string::npos) << out;

  auto stub = d_->Stub();
  const int64_t id = Submit(*stub, Config(20, 10), 0, 2);
  const v1::Job job = WaitEnded(*stub, id, seconds(240));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString() << a.Log() << b.Log();
  ASSERT_EQ(job.ranks_size(), 2);
  std::set<std::string> hosts = {job.ranks(0).host(), job.ranks(1).host()};
  EXPECT_EQ(hosts, (std::set<std::string>{"node-a", "node-b"}));
  for (const auto& r : job.ranks()) {
    const std::string log = ReadFile(r.log_path());
    EXPECT_NE(log.find("finished at step 20"), std::string::npos) << log;  // shipped by the agent
    EXPECT_NE(log.find("MASTER_ADDR=127.0.0.2"), std::string::npos) << log;
  }
  EXPECT_EQ(LastMetric(*stub, id, "loss").first, 20);
  EXPECT_EQ(Nodes()["node-a"].slots_used(), 0);  // released at the end
}

// Killing an agent mid-run loses its rank: the job waits for hosts, then restarts from its
// checkpoint on a third agent and completes.
TEST_F(StaticTest, LostAgentRestartsTheJobFromItsCheckpointOnAnotherAgent) {
  StartController();
  Child a = StartAgent("node-a", "127.0.0.2", 1);
  Child b = StartAgent("node-b", "127.0.0.3", 1);
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a", "node-b"}); }, seconds(30)));
  auto stub = d_->Stub();
  const int64_t id = Submit(*stub, Config(150, 10), 0, 2);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).last_checkpoint_step() >= 10; }, seconds(240)))
      << GetJob(*stub, id).DebugString();
  b.Kill(SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).state() == v1::JOB_STATE_RESTARTING; }, seconds(60)))
      << GetJob(*stub, id).DebugString();
  Child c = StartAgent("node-c", "127.0.0.4", 1);
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString() << a.Log() << c.Log();
  EXPECT_EQ(job.restarts(), 1);
  std::set<std::string> hosts = {job.ranks(0).host(), job.ranks(1).host()};
  EXPECT_EQ(hosts, (std::set<std::string>{"node-a", "node-c"}));
  bool lost = false, waited = false, resumed = false;
  for (const auto& h : job.history()) {
    lost = lost || h.reason().find("lost with agent node-b") != std::string::npos;
    waited = waited || h.reason().find("waiting for hosts") != std::string::npos;
    resumed = resumed || h.reason().find("resuming from") != std::string::npos;
  }
  EXPECT_TRUE(lost && waited && resumed) << job.DebugString();
  EXPECT_EQ(Nodes()["node-b"].state(), "lost");
  EXPECT_EQ(LastMetric(*stub, id, "loss").first, 150);
}

// Agents without a credential of their own are refused and say why; none becomes a node:
// a made-up credential, another agent's credential, and a revoked one.
TEST_F(StaticTest, AgentWithAWrongCredentialIsRefused) {
  StartController();
  const fs::path bad = dir_.path() / "bad.token";
  std::ofstream(bad) << "not-the-token\n";
  Child rogue = StartAgent("rogue", "127.0.0.5", 4, bad.string());
  const fs::path a_credential = d_->AgentCredential("node-a");
  Child impostor = StartAgent("node-b", "127.0.0.6", 4, a_credential.string());
  const fs::path c_credential = d_->AgentCredential("node-c");
  std::string out;
  std::istringstream words(ReadFile(c_credential));
  std::string c_token;
  for (std::string w; words >> w;) c_token = w;
  ASSERT_EQ(d_->Admin({"token", "revoke", c_token}, &out), 0) << out;
  Child revoked = StartAgent("node-c", "127.0.0.7", 4, c_credential.string());
  for (Child* c : {&rogue, &impostor, &revoked}) {
    ASSERT_TRUE(WaitFor([&] { return c->Exited(); }, seconds(30)));
    EXPECT_EQ(c->exit_code(), 1) << c->Log();
  }
  EXPECT_NE(rogue.Log().find("wrong or revoked agent credential"), std::string::npos) << rogue.Log();
  EXPECT_NE(impostor.Log().find("its credential belongs to agent 'node-a'"), std::string::npos) << impostor.Log();
  EXPECT_NE(revoked.Log().find("wrong or revoked agent credential"), std::string::npos) << revoked.Log();
  const auto nodes = Nodes();
  EXPECT_EQ(nodes.count("rogue") + nodes.count("node-b") + nodes.count("node-c"), 0u);
}

// With --hosts, only the listed agents join, with at most their listed slots.
TEST_F(StaticTest, HostsFileLimitsWhoJoinsAndTheirSlots) {
  const fs::path hosts = dir_.path() / "hosts";
  std::ofstream(hosts) << "# the cluster\nnode-a slots=1   # one GPU\nnode-b slots=2\n";
  StartController(30, {"--hosts", hosts.string()});
  Child a = StartAgent("node-a", "127.0.0.2", 4);
  Child z = StartAgent("node-z", "127.0.0.9", 1);
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a"}); }, seconds(30))) << a.Log();
  EXPECT_EQ(Nodes()["node-a"].slots(), 1);
  ASSERT_TRUE(WaitFor([&] { return z.Exited(); }, seconds(30)));
  EXPECT_EQ(z.exit_code(), 1);
  EXPECT_NE(z.Log().find("agent 'node-z' is not in dsv3d's hosts file"), std::string::npos) << z.Log();
  EXPECT_EQ(Nodes().count("node-z"), 0u);
  // A job larger than the hosts file could ever hold is refused at submit, naming the limit.
  grpc::ClientContext ctx;
  v1::SubmitJobRequest req;
  req.set_config_json(Config(10, 10).dump());
  req.set_num_ranks(4);
  v1::SubmitJobResponse resp;
  const grpc::Status s = d_->Stub()->SubmitJob(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("num_ranks: the job needs 4 slots but the hosts file allows 3"), std::string::npos)
      << s.error_message();
}

// dsv3d restarts mid-run: the agents keep their ranks, reconnect, report them running, and
// the job completes without a restart.
TEST_F(StaticTest, AgentsKeepTheirRanksAcrossAControllerRestart) {
  StartController();
  Child a = StartAgent("node-a", "127.0.0.2", 1);
  Child b = StartAgent("node-b", "127.0.0.3", 1);
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a", "node-b"}); }, seconds(30)));
  const int64_t id = Submit(*d_->Stub(), Config(120, 40), 0, 2);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*d_->Stub(), id).step() >= 10; }, seconds(240)));
  d_->Kill(SIGKILL);
  d_.reset();
  StartController();
  ASSERT_TRUE(WaitFor([&] { return Up({"node-a", "node-b"}); }, seconds(30))) << a.Log();
  auto stub = d_->Stub();
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString() << a.Log() << b.Log();
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_EQ(job.attempt(), 1);
}

}  // namespace
}  // namespace dsv3::test
