// dsv3 against a real Slurm (munged, slurmctld, slurmd on localhost, started by the test
// command with tests/slurm/start-local-slurm.sh): managed jobs under dsv3d, cancel, the
// time-limit signal and continuation in a new allocation, and standalone scripts.
#include <unistd.h>

#include <chrono>
#include <regex>

#include "controller_fixture.h"
#include "dsv3/procs/command.h"

namespace dsv3::test {
namespace {

using std::chrono::seconds;

std::string SlurmState(const std::string& slurm_id) {
  const auto r = procs::RunCommand({"scontrol", "show", "job", "-o", slurm_id}, std::chrono::seconds(10));
  std::smatch m;
  static const std::regex kState(R"( JobState=(\S+))");
  return std::regex_search(r.out, m, kState) ? m[1].str() : "unknown (" + r.Describe("scontrol") + ")";
}

class SlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto r = procs::RunCommand({"sinfo", "-h", "-o", "%t"}, std::chrono::seconds(10));
    ASSERT_TRUE(r.ok()) << "no Slurm here: start the test cluster with tests/slurm/start-local-slurm.sh (as root; "
                           "deploy/test.sh does it): "
                        << r.Describe("sinfo");
    Corpus();
  }

  // The quick nano config with a slurm section for this one-node, CPU-only cluster.
  static nlohmann::json SlurmConfig(int64_t steps, int64_t save_every, bool enabled, const std::string& time = "10") {
    nlohmann::json c = QuickConfig(steps, save_every);
    c["training"]["micro_batch_size"] = 4;
    c["training"]["intra_op_threads"] = 1;  // the same arithmetic wherever it runs
    c["slurm"] = {{"enabled", enabled}, {"partition", "debug"},  {"nodes", 1},         {"ntasks_per_node", 1},
                  {"gpus_per_node", 0}, {"cpus_per_task", 1},    {"time", time},       {"mem", "2G"},
                  {"job_name", "dsv3-test"}, {"output", "logs/slurm-%j.out"}, {"error", "logs/slurm-%j.err"}};
    return c;
  }

  TempDir dir_;
};

// A managed job of 2 ranks under `dsv3d --allocator slurm`: the dry run shows the sbatch
// script, the job trains to COMPLETED with metrics and checkpoints in the store, and the
// Slurm job behind it is COMPLETED too. srun's rank logs are capped as local ones are.
TEST_F(SlurmTest, ManagedTwoRankJobCompletes) {
  Dsv3d d(dir_.path() / "state", 2, 30,
          {"--allocator", "slurm", "--slurm-poll", "0.5", "--max-rank-log-bytes", "1024"});
  d.Start();
  auto stub = d.Stub();
  nlohmann::json config = SlurmConfig(20, 10, false);
  const fs::path file = dir_.path() / "slurm.json";
  std::ofstream(file) << config.dump(2);
  std::string out;
  ASSERT_EQ(Cli({"submit", file.string(), "--gpus", "2", "--dry-run", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("Slurm layout: 1 node(s) x 2 task(s) = 2 rank(s)"), std::string::npos) << out;
  EXPECT_NE(out.find("#SBATCH --ntasks-per-node=2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("srun --kill-on-bad-exit=1"), std::string::npos) << out;

  const int64_t id = Submit(*stub, config, 0, 2);
  const v1::Job job = WaitEnded(*stub, id, seconds(240));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString();
  ASSERT_EQ(job.allocations_size(), 1);
  EXPECT_EQ(job.allocations(0).allocator(), "slurm");
  EXPECT_EQ(job.allocations(0).state(), "COMPLETED");
  EXPECT_EQ(SlurmState(job.allocations(0).external_id()), "COMPLETED");
  EXPECT_EQ(LastMetric(*stub, id, "loss").first, 20);
  grpc::ClientContext ctx;
  v1::ListCheckpointsRequest req;
  req.set_job_id(id);
  v1::ListCheckpointsResponse ckpts;
  ASSERT_TRUE(stub->ListCheckpoints(&ctx, req, &ckpts).ok());
  ASSERT_FALSE(ckpts.checkpoints().empty());
  EXPECT_EQ(ckpts.checkpoints(ckpts.checkpoints_size() - 1).step(), 20);
  ASSERT_EQ(job.ranks_size(), 2);
  for (const auto& r : job.ranks()) {
    EXPECT_GT(r.pid(), 0);  // told by the rank itself: Slurm started it
    // The log went past 1 KiB while the job ran: its older part is in <log>.1.
    ASSERT_TRUE(fs::exists(r.log_path() + ".1")) << r.log_path();
    EXPECT_LE(fs::file_size(r.log_path() + ".1"), 4096u);
    const std::string both = ReadFile(r.log_path() + ".1") + ReadFile(r.log_path());
    EXPECT_NE(both.find("finished at step 20"), std::string::npos) << r.log_path();
  }
  ASSERT_EQ(Cli({"status", std::to_string(id), "--controller", d.address()}, &out), 0);
  EXPECT_NE(out.find("slurm jobs:   " + job.allocations(0).external_id() + " COMPLETED"), std::string::npos) << out;
}

// A rank whose training thread hangs under Slurm (DSV3_FAULT reaches it through sbatch's
// exported environment) is named by the watchdog; its dumps come back over gRPC into the
// job's folder and the job continues in a new allocation from its checkpoint.
TEST_F(SlurmTest, HungRankIsNamedDumpedAndTheJobContinuesInANewAllocation) {
  setenv("DSV3_FAULT", "hang:rank=1,step=14", 1);
  Dsv3d d(dir_.path() / "state", 2, 30, {"--allocator", "slurm", "--slurm-poll", "0.5"});
  d.Start();
  unsetenv("DSV3_FAULT");
  auto stub = d.Stub();
  nlohmann::json config = SlurmConfig(20, 10, false);
  config["watchdog"] = {{"hang_timeout_s", 3}};
  const int64_t id = Submit(*stub, config, 0, 2);
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString();
  EXPECT_EQ(job.restarts(), 1);
  EXPECT_EQ(job.allocations_size(), 2);
  const std::string hang = FirstRestartReason(job);
  EXPECT_EQ(hang.rfind("rank 1 hung in forward (", 0), 0u) << job.DebugString();
  const fs::path diag = fs::path(job.job_dir()) / "diagnostics" / "1";
  EXPECT_NE(ReadFile(diag / "rank_1.txt").find("dsv3::dist::HangForever"), std::string::npos);
  EXPECT_NE(ReadFile(diag / "summary.txt").find("rank 1 is the one the others wait for"), std::string::npos);
}

// dsv3ctl cancel: the Slurm job ends CANCELLED, ours CANCELED with the checkpoint the
// ranks wrote on SIGTERM.
TEST_F(SlurmTest, CancelEndsTheSlurmJobWithACheckpoint) {
  Dsv3d d(dir_.path() / "state", 2, 30, {"--allocator", "slurm", "--slurm-poll", "0.5"});
  d.Start();
  auto stub = d.Stub();
  const int64_t id = Submit(*stub, SlurmConfig(100000, 100000, false), 0, 1);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).step() >= 3; }, seconds(180))) << GetJob(*stub, id).DebugString();
  std::string out;
  ASSERT_EQ(Cli({"cancel", std::to_string(id), "--controller", d.address()}, &out), 0) << out;
  const v1::Job job = WaitEnded(*stub, id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_CANCELED) << job.DebugString();
  EXPECT_NE(job.state_reason().find("checkpoint at step"), std::string::npos) << job.state_reason();
  EXPECT_GE(job.last_checkpoint_step(), 3);
  ASSERT_EQ(job.allocations_size(), 1);
  EXPECT_EQ(job.allocations(0).state(), "CANCELLED");
  EXPECT_EQ(SlurmState(job.allocations(0).external_id()), "CANCELLED");
}

// dsv3d dies mid-run: the Slurm job keeps running, the next dsv3d follows it again from
// the store (the Slurm job id of the attempt), the ranks re-register, the job completes
// without a restart.
TEST_F(SlurmTest, ControllerRestartFollowsTheSlurmJob) {
  auto d = std::make_unique<Dsv3d>(dir_.path() / "state", 2, 30,
                                   std::vector<std::string>{"--allocator", "slurm", "--slurm-poll", "0.5"});
  d->Start();
  const int64_t id = Submit(*d->Stub(), SlurmConfig(120, 40, false), 0, 1);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*d->Stub(), id).step() >= 5; }, seconds(180)));
  const int port = d->port();
  d->Kill(SIGKILL);
  d->Start(port);
  auto stub = d->Stub();
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString();
  EXPECT_EQ(job.restarts(), 0);
  ASSERT_EQ(job.allocations_size(), 1);
  EXPECT_EQ(job.allocations(0).state(), "COMPLETED");
  EXPECT_EQ(LastMetric(*stub, id, "loss").first, 120);
}

// A 1-minute time limit: Slurm signals the ranks (--signal=USR2@30), they checkpoint and
// stop, and dsv3d continues the job in a new Slurm allocation until it completes, with the
// same final loss as an uninterrupted run. The job asks for Slurm itself (slurm.enabled)
// on a dsv3d whose allocator is local; the uninterrupted run is the same config there.
TEST_F(SlurmTest, TimeLimitContinuesInANewAllocationWithTheSameLoss) {
  Dsv3d d(dir_.path() / "state", 1, 30, {"--slurm-poll", "0.5"});
  d.Start();
  auto stub = d.Stub();
  constexpr int64_t kSteps = 300;
  // A loss logged every step: a log line averages the steps since the previous one, and an
  // allocation ends at whatever step the signal found it.
  nlohmann::json limited = SlurmConfig(kSteps, 100000, true, "1");
  limited["training"]["log_interval"] = 1;
  limited["max_restarts"] = 8;
  nlohmann::json uninterrupted = SlurmConfig(kSteps, 100000, false);
  uninterrupted["training"]["log_interval"] = 1;
  const int64_t id = Submit(*stub, limited, 0, 1);
  const int64_t reference = Submit(*stub, uninterrupted, 0, 1);
  const v1::Job job = WaitEnded(*stub, id, seconds(600));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString();
  ASSERT_GE(job.allocations_size(), 2) << "the run never met its time limit: " << job.DebugString();
  // Every allocation but the last ended at the time limit's signal, checkpointed.
  bool stopped_for_time = false;
  for (const auto& h : job.history()) {
    stopped_for_time = stopped_for_time || h.reason().find("stopped for the time limit") != std::string::npos;
  }
  EXPECT_TRUE(stopped_for_time) << job.DebugString();
  EXPECT_EQ(job.allocations(job.allocations_size() - 1).state(), "COMPLETED");
  const v1::Job ref = WaitEnded(*stub, reference, seconds(300));
  ASSERT_EQ(ref.state(), v1::JOB_STATE_COMPLETED) << ref.DebugString();
  EXPECT_EQ(ref.allocations_size(), 0);
  const auto [step, loss] = LastMetric(*stub, id, "loss");
  const auto [ref_step, ref_loss] = LastMetric(*stub, reference, "loss");
  EXPECT_EQ(step, kSteps);
  EXPECT_EQ(ref_step, kSteps);
  EXPECT_NEAR(loss, ref_loss, 1e-6 * std::abs(ref_loss)) << "resumed " << job.allocations_size() - 1 << " time(s)";
  std::string out;
  ASSERT_EQ(Cli({"status", std::to_string(id), "--controller", d.address()}, &out), 0);
  EXPECT_NE(out.find(job.allocations(0).external_id() + " COMPLETED -> " + job.allocations(1).external_id()),
            std::string::npos)
      << out;
}

// `dsv3ctl slurm submit` without any dsv3d: the standalone script trains under Slurm, ranks
// log to files, and the checkpoint lands where the config says.
TEST_F(SlurmTest, StandaloneScriptRunsUnderSlurm) {
  nlohmann::json config = SlurmConfig(10, 10, true);
  config["output_dir"] = (dir_.path() / "out").string();
  config["logging"]["tensorboard"]["log_dir"] = (dir_.path() / "out/tb").string();
  const fs::path file = dir_.path() / "standalone.json";
  std::ofstream(file) << config.dump(2);
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(chdir(dir_.path().c_str()), 0);  // the script runs where it was made
  std::string out;
  const int rc = Cli({"slurm", "submit", file.string(), "--script-file", "job.sh", "--worker", DSV3_WORKER_PATH}, &out);
  ASSERT_EQ(chdir(cwd), 0);
  ASSERT_EQ(rc, 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(submitted Slurm job (\d+))"))) << out;
  const std::string slurm_id = m[1].str();
  const std::string script = ReadFile(dir_.path() / "job.sh");
  EXPECT_EQ(script.find("DSV3_CONTROLLER"), std::string::npos) << script;  // nobody to report to
  std::string state;
  ASSERT_TRUE(WaitFor(
      [&] {
        state = SlurmState(slurm_id);
        return state != "PENDING" && state != "RUNNING" && state != "CONFIGURING" && state != "COMPLETING";
      },
      seconds(180)));
  const fs::path rank_log = dir_.path() / ("logs/dsv3-test-" + slurm_id + "-rank0.log");
  ASSERT_EQ(state, "COMPLETED") << ReadFile(rank_log);
  EXPECT_NE(ReadFile(rank_log).find("finished at step 10"), std::string::npos) << ReadFile(rank_log);
  EXPECT_TRUE(fs::exists(dir_.path() / "out/checkpoints/checkpoint_10/manifest.json"));
}

}  // namespace
}  // namespace dsv3::test
