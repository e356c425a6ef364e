// dsv3d end to end on loopback: real dsv3d and dsv3-worker processes, the real CLI verbs,
// promtool on a live scrape, and a Python client generated from the protos.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <regex>
#include <set>
#include <sstream>

#include "app.h"
#include "controller_fixture.h"
#include "dsv3/common/message_log.h"

namespace dsv3::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

std::string Scrape(const std::string& http) { return HttpGet(http, "/metrics"); }

// Every metric the Grafana dashboard and the alert rules use is one of `families` (the
// metric families of /metrics pages, which leave out families without series).
void ExpectDeployFilesUseOnly(const std::set<std::string>& families) {
  for (const char* file : {"deploy/grafana/dsv3-dashboard.json", "deploy/prometheus/dsv3-alerts.yml"}) {
    const std::string text = ReadFile(fs::path(DSV3_SOURCE_DIR) / file);
    static const std::regex kName(R"(\b((dsv3|process)_[a-z_]+))");
    int used = 0;
    for (std::sregex_iterator it(text.begin(), text.end(), kName), end; it != end; ++it, ++used) {
      std::string name = (*it)[1];
      if (name.size() > 7 && name.compare(name.size() - 7, 7, "_bucket") == 0) name.resize(name.size() - 7);
      EXPECT_TRUE(families.count(name)) << file << " uses " << name << ", which is not on the /metrics page";
    }
    EXPECT_GT(used, 5) << file;
  }
}

// The metric families on a /metrics page.
std::set<std::string> Families(const std::string& scrape) {
  std::set<std::string> families;
  static const std::regex kType(R"(# TYPE (\S+) )");
  for (std::sregex_iterator it(scrape.begin(), scrape.end(), kType), end; it != end; ++it) families.insert((*it)[1]);
  return families;
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override { Corpus(); }
  TempDir dir_;
};

// submit --follow through the CLI -> COMPLETED with metrics, evaluations and checkpoints in
// the store; status, metrics, checkpoints verbs; promtool accepts a live scrape.
TEST_F(ControllerTest, SubmittedJobCompletesWithMetricsAndCheckpoints) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  const fs::path cfg = dir_.path() / "quick.json";
  std::ofstream(cfg) << QuickConfig(20, 10).dump(2);

  std::string out;
  ASSERT_EQ(Cli({"submit", cfg.string(), "--follow", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("COMPLETED"), std::string::npos) << out;
  EXPECT_NE(out.find("step 20/20"), std::string::npos) << out;  // the rank's log, streamed

  auto stub = d.Stub();
  const v1::Job job = GetJob(*stub, 1);
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  EXPECT_EQ(HistoryStates(job), (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_STARTING,
                                                            v1::JOB_STATE_RUNNING, v1::JOB_STATE_COMPLETED}));
  EXPECT_EQ(job.step(), 20);
  EXPECT_EQ(job.total_steps(), 20);
  EXPECT_EQ(job.restarts(), 0);
  ASSERT_EQ(job.evaluations_size(), 2);
  EXPECT_EQ(job.evaluations(1).step(), 20);
  EXPECT_GT(job.evaluations(1).loss(), 0.0);
  EXPECT_TRUE(fs::exists(job.tensorboard_dir()));
  EXPECT_EQ(job.ranks_size(), 1);
  EXPECT_EQ(job.ranks(0).exit_code(), 0);

  {
    grpc::ClientContext ctx;
    v1::GetMetricsRequest req;
    req.set_job_id(1);
    req.add_names("loss");
    v1::GetMetricsResponse resp;
    ASSERT_TRUE(stub->GetMetrics(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.series_size(), 1);
    ASSERT_EQ(resp.series(0).points_size(), 4);  // log_interval 5 over 20 steps
    EXPECT_EQ(resp.series(0).points(3).step(), 20);
    EXPECT_LT(resp.series(0).points(3).value(), resp.series(0).points(0).value());  // it learned
    EXPECT_DOUBLE_EQ(resp.series(0).points(3).value(), job.loss());
  }
  {
    grpc::ClientContext ctx;
    v1::ListCheckpointsRequest req;
    req.set_job_id(1);
    v1::ListCheckpointsResponse resp;
    ASSERT_TRUE(stub->ListCheckpoints(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.checkpoints_size(), 2);
    EXPECT_EQ(resp.checkpoints(0).step(), 10);
    EXPECT_EQ(resp.checkpoints(1).step(), 20);
    ASSERT_TRUE(resp.checkpoints(1).has_val_loss());
    EXPECT_DOUBLE_EQ(resp.checkpoints(1).val_loss(), job.evaluations(1).loss());
    EXPECT_EQ(resp.checkpoints(1).path(), job.last_checkpoint());
    EXPECT_TRUE(fs::exists(fs::path(resp.checkpoints(1).path()) / "manifest.json"));
  }

  ASSERT_EQ(Cli({"status", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("COMPLETED"), std::string::npos) << out;
  EXPECT_NE(out.find("20/20"), std::string::npos) << out;
  ASSERT_EQ(Cli({"list", "-q", "--controller", d.address()}, &out), 0) << out;
  EXPECT_EQ(out, "1\n");
  // --watch on an ended job draws once and exits with its outcome.
  ASSERT_EQ(Cli({"status", "1", "--watch", "0.2", "--controller", d.address()}, &out), 0) << out;
  EXPECT_EQ(out.rfind("every 0.2 s, ", 0), 0u) << out;
  EXPECT_NE(out.find("COMPLETED"), std::string::npos) << out;
  ASSERT_EQ(Cli({"metrics", "1", "--name", "loss", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("loss"), std::string::npos) << out;
  EXPECT_NE(out.find("█"), std::string::npos) << out;  // the sparkline's top
  ASSERT_EQ(Cli({"checkpoints", "1", "--controller", d.address(), "--output", "json"}, &out), 0) << out;
  EXPECT_EQ(json::parse(out)["checkpoints"].size(), 2u) << out;
  ASSERT_EQ(Cli({"logs", "1", "--tail", "1", "--controller", d.address()}, &out), 0) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(out.find("dsv3-worker: finished at step 20"), std::string::npos) << out;
  // The stamp the rank wrote is not part of the text; --timestamps prints it, --since filters by it.
  EXPECT_EQ(out.rfind("dsv3-worker: finished at step 20", 0), 0u) << out;
  ASSERT_EQ(Cli({"logs", "1", "--tail", "1", "--timestamps", "--controller", d.address()}, &out), 0) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z dsv3-worker: finished)")))
      << out;
  const int64_t finished_ms = msg::SplitLogStamp(out).unix_ms.value_or(0);
  EXPECT_NEAR(static_cast<double>(finished_ms), static_cast<double>(job.finished_unix_ms()), 5000.0);
  ASSERT_EQ(Cli({"logs", "1", "--since", "1h", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("step 20/20"), std::string::npos) << out;  // every line is younger than that
  ASSERT_EQ(Cli({"logs", "1", "--since", msg::LogStamp(std::chrono::system_clock::time_point(
                                                          std::chrono::milliseconds(finished_ms))),
                 "--controller", d.address()},
                &out),
            0)
      << out;
  // Only the lines of that millisecond on: the end, not the training before it.
  EXPECT_NE(out.find("dsv3-worker: finished at step 20"), std::string::npos) << out;
  EXPECT_EQ(out.find("step 20/20"), std::string::npos) << out;
  EXPECT_LE(std::count(out.begin(), out.end(), '\n'), 2) << out;
  EXPECT_EQ(Cli({"logs", "1", "--since", "yesterday", "--controller", d.address()}, &out), 2);
  EXPECT_NE(out.find("--since: 'yesterday' is neither a duration"), std::string::npos) << out;

  // Prometheus: the real parser accepts the page, and the job's series are on it.
  const std::string scrape = Scrape(d.http());
  std::ofstream(dir_.path() / "scrape.txt") << scrape;
  int rc = 0;
  const std::string check = Shell("promtool check metrics < " + (dir_.path() / "scrape.txt").string(), &rc);
  EXPECT_EQ(rc, 0) << check;
  EXPECT_NE(scrape.find("dsv3_job_step{job_id=\"1\",job_name=\"quick\"} 20\n"), std::string::npos) << scrape;
  EXPECT_NE(scrape.find("dsv3_job_state{job_id=\"1\",job_name=\"quick\",state=\"COMPLETED\"} 1\n"), std::string::npos);
  EXPECT_NE(scrape.find("dsv3_job_state{job_id=\"1\",job_name=\"quick\",state=\"RUNNING\"} 0\n"), std::string::npos);
  EXPECT_NE(scrape.find("dsv3_job_tokens_trained_total{job_id=\"1\",job_name=\"quick\"} 10240\n"), std::string::npos);
  EXPECT_NE(scrape.find("dsv3_jobs{state=\"COMPLETED\"} 1\n"), std::string::npos) << scrape;
  EXPECT_NE(scrape.find("dsv3_rpc_duration_seconds_bucket{method=\"dsv3.v1.Controller/SubmitJob\",le=\"+Inf\"} 1\n"),
            std::string::npos)
      << scrape;
  EXPECT_NE(scrape.find("dsv3_build_info{build_type="), std::string::npos) << scrape;
  EXPECT_NE(scrape.find("\nprocess_open_fds "), std::string::npos) << scrape;
  // The checkpoint's time, not an age: within this test's run.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(scrape, m, std::regex(R"(dsv3_job_last_checkpoint_timestamp_seconds\{[^}]*\} (\S+))")));
  EXPECT_NEAR(std::stod(m[1].str()), static_cast<double>(std::time(nullptr)), 600.0);

  // Fine-tuning from the run's weights as a HF directory: a config whose model differs is
  // refused field by field, by dsv3ctl and by dsv3d; a matching one starts from them, and
  // `status` says where its weights came from.
  const fs::path hf = dir_.path() / "quick_hf";
  ASSERT_EQ(Cli({"export-hf", job.last_checkpoint(), hf.string()}, &out), 0) << out;
  json other = QuickConfig(2, 0);
  other["model"]["mla"]["rope_theta"] = 50000.0;
  const fs::path other_cfg = dir_.path() / "other.json";
  std::ofstream(other_cfg) << other.dump(2);
  EXPECT_EQ(Cli({"submit", other_cfg.string(), "--init-from-hf", hf.string(), "--controller", d.address()}, &out), 1);
  EXPECT_NE(out.find("/model/mla/rope_theta: 50000.0 here, 10000.0 in the HF config"), std::string::npos) << out;
  EXPECT_NE(out.find("dsv3ctl config import-hf " + hf.string() + "/config.json"), std::string::npos) << out;
  {
    other["checkpointing"]["init_from_hf"] = hf.string();
    grpc::ClientContext ctx;
    v1::SubmitJobRequest req;
    req.set_config_json(other.dump());
    v1::SubmitJobResponse resp;
    const grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
    ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("/model/mla/rope_theta"), std::string::npos) << s.error_message();
  }
  const fs::path tune_cfg = dir_.path() / "tune.json";
  json tune = QuickConfig(2, 0);
  tune["output_dir"] = "./outputs/tune";
  std::ofstream(tune_cfg) << tune.dump(2);
  ASSERT_EQ(Cli({"submit", tune_cfg.string(), "--init-from-hf", hf.string(), "--follow", "--controller", d.address()},
                &out),
            0)
      << out;
  EXPECT_NE(out.find("initial weights from " + hf.string()), std::string::npos) << out;
  ASSERT_EQ(Cli({"status", "2", "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("weights from: " + hf.string() + " (HF)"), std::string::npos) << out;

  // dsv3ctl eval --submit: job 1's last checkpoint evaluated as a job of its own
  // (training.skip_train) reports job 1's final evaluation.
  ASSERT_EQ(Cli({"eval", job.last_checkpoint(), "--submit", "--controller", d.address(), "--output", "json"}, &out), 0)
      << out;
  const json evaluated = json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_TRUE(evaluated.is_object()) << out;
  EXPECT_EQ(evaluated["job_id"], 3);
  EXPECT_EQ(evaluated["step"], 20);
  EXPECT_NEAR(evaluated["loss"].get<double>(), job.evaluations(1).loss(), 1e-6 * job.evaluations(1).loss());
  EXPECT_EQ(GetJob(*stub, 3).state(), v1::JOB_STATE_COMPLETED);
}

// Two ranks on the local allocator: submit --gpus 2 --deepspeed trains data-parallel with
// ZeRO-1 over Gloo; the checkpoint holds each rank's optimizer shard.
TEST_F(ControllerTest, TwoRankDeepSpeedJobCompletesWithShardedCheckpoints) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  json c = QuickConfig(10, 10);
  c["distributed"].erase("zero_stage");
  c["deepspeed"] = {{"zero_optimization", {{"stage", 1}}}};
  c["training"]["micro_batch_size"] = 4;
  const fs::path cfg = dir_.path() / "two.json";
  std::ofstream(cfg) << c.dump(2);
  std::string out;
  ASSERT_EQ(Cli({"submit", cfg.string(), "--gpus", "2", "--deepspeed", "--follow", "--controller", d.address()}, &out),
            0)
      << out;
  const v1::Job job = GetJob(*d.Stub(), 1);
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  ASSERT_EQ(job.ranks_size(), 2);
  EXPECT_EQ(job.ranks(0).exit_code(), 0);
  EXPECT_EQ(job.ranks(1).exit_code(), 0);
  EXPECT_EQ(job.step(), 10);
  EXPECT_NE(out.find("rank 1 of 2 (gloo): data-parallel 2, tensor-parallel 1, pipeline-parallel 1, expert-parallel 1"),
            std::string::npos)
      << out;
  const fs::path ckpt = job.last_checkpoint();
  EXPECT_EQ(ckpt.filename(), "checkpoint_10");
  EXPECT_TRUE(fs::exists(ckpt / "shard_0.safetensors"));
  EXPECT_TRUE(fs::exists(ckpt / "shard_1.safetensors"));
  EXPECT_EQ(json::parse(ReadFile(ckpt / "manifest.json"))["world_size"], 2);
}

// An 8-rank grid under dsv3d: pipeline 2 x data 2 x tensor 2 with expert parallel 2 (1F1B),
// one whole checkpoint of 8 shards.
TEST_F(ControllerTest, GridJobWithTensorAndPipelineParallelCompletes) {
  Dsv3d d(dir_.path() / "state", 8);
  d.Start();
  json c = QuickConfig(4, 4);
  c["distributed"]["tensor_parallel_size"] = 2;
  c["distributed"]["pipeline_parallel_size"] = 2;
  c["distributed"]["expert_parallel_size"] = 2;
  c["training"]["micro_batch_size"] = 2;
  const fs::path cfg = dir_.path() / "grid.json";
  std::ofstream(cfg) << c.dump(2);
  std::string out;
  ASSERT_EQ(Cli({"submit", cfg.string(), "--gpus", "8", "--follow", "--controller", d.address()}, &out), 0) << out;
  const v1::Job job = GetJob(*d.Stub(), 1);
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  ASSERT_EQ(job.ranks_size(), 8);
  for (int r = 0; r < 8; ++r) EXPECT_EQ(job.ranks(r).exit_code(), 0) << "rank " << r;
  EXPECT_EQ(job.step(), 4);
  EXPECT_NE(out.find("data-parallel 2, tensor-parallel 2, pipeline-parallel 2, expert-parallel 2"), std::string::npos)
      << out;
  const fs::path ckpt = job.last_checkpoint();
  EXPECT_EQ(json::parse(ReadFile(ckpt / "manifest.json"))["world_size"], 8);
  EXPECT_TRUE(fs::exists(ckpt / "model.safetensors"));
}

// Cancel mid-run: SIGTERM -> the trainer checkpoints -> CANCELED with that checkpoint.
TEST_F(ControllerTest, CancelMidRunEndsCanceledWithACheckpoint) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  auto stub = d.Stub();
  const int64_t id = Submit(*stub, QuickConfig(100000, 100000));
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).step() >= 5; }, seconds(120)));
  std::string out;
  ASSERT_EQ(Cli({"cancel", std::to_string(id), "--wait", "--controller", d.address()}, &out), 0) << out;
  const v1::Job job = GetJob(*stub, id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELED) << job.state_reason();
  EXPECT_GE(job.last_checkpoint_step(), 5);
  EXPECT_NE(job.state_reason().find("checkpoint at step"), std::string::npos) << job.state_reason();
  EXPECT_TRUE(fs::exists(fs::path(job.last_checkpoint()) / "manifest.json")) << job.last_checkpoint();
  EXPECT_EQ(job.ranks(0).exit_code(), 0);  // it stopped cleanly within the grace period
  grpc::ClientContext ctx;
  v1::ListCheckpointsRequest req;
  req.set_job_id(id);
  v1::ListCheckpointsResponse resp;
  ASSERT_TRUE(stub->ListCheckpoints(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.checkpoints_size(), 1);
  EXPECT_EQ(resp.checkpoints(0).reason(), "signal");
  // Canceling again is refused with the state it ended in.
  EXPECT_EQ(Cli({"cancel", std::to_string(id), "--controller", d.address()}, &out), 1);
  EXPECT_NE(out.find("CANCELED"), std::string::npos) << out;
}

// kill -9 of a rank: the attempt fails, the job restarts from the newest intact checkpoint
// and completes.
TEST_F(ControllerTest, KilledRankRestartsFromCheckpointAndCompletes) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  auto stub = d.Stub();
  // Long enough that the kill lands well before the end even on a loaded machine.
  const int64_t id = Submit(*stub, QuickConfig(100, 20));
  const int64_t reference = Submit(*stub, QuickConfig(100, 20));  // the same run, uninterrupted
  v1::Job job;
  ASSERT_TRUE(WaitFor(
      [&] {
        job = GetJob(*stub, id);
        return job.last_checkpoint_step() >= 20 && job.ranks_size() == 1 && job.ranks(0).pid() > 0;
      },
      seconds(120)));
  ASSERT_EQ(kill(static_cast<pid_t>(job.ranks(0).pid()), SIGKILL), 0);
  job = WaitEnded(*stub, id, seconds(180));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  EXPECT_EQ(job.restarts(), 1);
  EXPECT_EQ(job.attempt(), 2);
  EXPECT_EQ(job.step(), 100);
  bool saw_kill = false, saw_resume = false;
  for (const auto& h : job.history()) {
    if (h.state() == v1::JOB_STATE_RESTARTING) saw_kill = h.reason().find("killed by signal 9") != std::string::npos;
    if (h.state() == v1::JOB_STATE_STARTING && h.attempt() == 2) {
      saw_resume = h.reason().find("resuming from") != std::string::npos &&
                   h.reason().find("checkpoint_") != std::string::npos;
    }
  }
  EXPECT_TRUE(saw_kill) << job.DebugString();
  EXPECT_TRUE(saw_resume) << job.DebugString();
  // Resuming is exact: the killed-and-restarted job ends with the uninterrupted one's loss.
  const v1::Job ref = WaitEnded(*stub, reference, seconds(180));
  ASSERT_EQ(ref.state(), v1::JOB_STATE_COMPLETED) << ref.state_reason();
  ASSERT_TRUE(job.has_loss() && ref.has_loss());
  EXPECT_EQ(job.loss(), ref.loss());
  ASSERT_TRUE(job.has_val_loss() && ref.has_val_loss());
  EXPECT_EQ(job.val_loss(), ref.val_loss());
}

// A hung rank (SIGSTOP: its heartbeat thread stops too) fails the attempt after the
// heartbeat timeout; the stopped process is killed and the job resumes and completes.
TEST_F(ControllerTest, HungRankIsKilledAfterTheHeartbeatTimeoutAndTheJobResumes) {
  Dsv3d d(dir_.path() / "state", 2, /*heartbeat_timeout_s=*/3);
  d.Start();
  auto stub = d.Stub();
  const int64_t id = Submit(*stub, QuickConfig(40, 10));
  v1::Job job;
  ASSERT_TRUE(WaitFor(
      [&] {
        job = GetJob(*stub, id);
        return job.last_checkpoint_step() >= 10 && job.state() == v1::JOB_STATE_RUNNING;
      },
      seconds(120)));
  ASSERT_EQ(kill(static_cast<pid_t>(job.ranks(0).pid()), SIGSTOP), 0);
  job = WaitEnded(*stub, id, seconds(180));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  EXPECT_EQ(job.restarts(), 1);
  bool saw_timeout = false;
  for (const auto& h : job.history()) {
    saw_timeout = saw_timeout || (h.state() == v1::JOB_STATE_RESTARTING &&
                                  h.reason().find("rank 0 sent no heartbeat for 3 s") != std::string::npos);
  }
  EXPECT_TRUE(saw_timeout) << job.DebugString();
}

// The training thread of rank 1 hangs (DSV3_FAULT) while its heartbeat thread lives on:
// the watchdog sees its progress stop, names it with the collective rank 0 waits in, keeps
// every rank's stacks and flight recorder with a summary, and restarts the job from its
// checkpoint; it ends with the loss of an undisturbed twin.
TEST_F(ControllerTest, HungTrainingThreadIsNamedDumpedAndTheJobResumes) {
  setenv("DSV3_FAULT", "hang:rank=1,step=14,job=1", 1);
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  unsetenv("DSV3_FAULT");
  auto stub = d.Stub();
  json c = QuickConfig(20, 10);
  c["training"]["micro_batch_size"] = 4;
  c["watchdog"] = {{"hang_timeout_s", 3}};
  const int64_t id = Submit(*stub, c, 0, 2);
  const int64_t twin = Submit(*stub, c, 0, 2);  // runs after it (two slots), undisturbed
  ASSERT_EQ(id, 1);
  const v1::Job job = WaitEnded(*stub, id, seconds(300));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason() << "\n" << job.DebugString();
  EXPECT_EQ(job.restarts(), 1);
  const std::string hang = FirstRestartReason(job);
  EXPECT_EQ(hang.rfind("rank 1 hung in forward (", 0), 0u) << job.DebugString();
  EXPECT_NE(hang.find("never entered)"), std::string::npos) << hang;
  EXPECT_NE(hang.find("restart 1 of 3 from checkpoint at step 10"), std::string::npos) << hang;
  // The evidence: a summary and both ranks' dumps, through `dsv3ctl diagnose`.
  const fs::path diag = fs::path(job.job_dir()) / "diagnostics" / "1";
  const std::string summary = ReadFile(diag / "summary.txt");
  EXPECT_NE(summary.find("rank 1 is the one the others wait for: it is in forward of step 14"), std::string::npos)
      << summary;
  const std::string rank1 = ReadFile(diag / "rank_1.txt");
  EXPECT_NE(rank1.find("progress: step 14, micro-step 0, phase forward"), std::string::npos) << rank1;
  EXPECT_NE(rank1.find("dsv3::dist::HangForever"), std::string::npos) << rank1;  // the stuck thread's frames
  const std::string rank0 = ReadFile(diag / "rank_0.txt");
  EXPECT_NE(rank0.find(", waiting in "), std::string::npos) << rank0;
  std::string out;
  EXPECT_EQ(Cli({"diagnose", std::to_string(id), "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("hang: rank 1 hung in forward"), std::string::npos) << out;
  EXPECT_NE(out.find("rank_0.txt"), std::string::npos) << out;
  EXPECT_NE(out.find("rank_1.txt"), std::string::npos) << out;
  const v1::Job ref = WaitEnded(*stub, twin, seconds(300));
  ASSERT_EQ(ref.state(), v1::JOB_STATE_COMPLETED) << ref.state_reason();
  EXPECT_EQ(ref.restarts(), 0);
  ASSERT_TRUE(job.has_loss() && ref.has_loss());
  EXPECT_EQ(job.loss(), ref.loss());
}

// Four ranks, one slowed (a straggler: flagged in status and history) and another whose
// training thread hangs in its backward pass: the hung one is named, not the slow one. Its
// newest checkpoint was damaged, so the restart resumes from the one before.
TEST_F(ControllerTest, FourRankJobFlagsAStragglerAndNamesTheHungRank) {
  setenv("DSV3_FAULT", "slow:rank=3,factor=4;hang:rank=2,step=12,phase=backward;corrupt_checkpoint:rank=1,step=10", 1);
  Dsv3d d(dir_.path() / "state", 4);
  d.Start();
  unsetenv("DSV3_FAULT");
  auto stub = d.Stub();
  json c = QuickConfig(14, 5);
  c["training"]["micro_batch_size"] = 2;
  c["watchdog"] = {{"hang_timeout_s", 4}, {"straggler_steps", 2}};
  const int64_t id = Submit(*stub, c, 0, 4);
  v1::Job job;
  ASSERT_TRUE(WaitFor(
      [&] {
        job = GetJob(*stub, id);
        return job.ranks_size() == 4 && job.ranks(3).straggler();
      },
      seconds(240)))
      << job.DebugString();
  EXPECT_GT(job.ranks(3).busy_ratio(), 1.5);
  std::string out;
  EXPECT_EQ(Cli({"status", std::to_string(id), "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("STRAGGLER"), std::string::npos) << out;
  EXPECT_NE(Scrape(d.http()).find("dsv3_rank_straggler{job_id=\"1\",job_name=\"quick\",rank=\"3\"} 1"),
            std::string::npos);
  job = WaitEnded(*stub, id, seconds(300));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason() << "\n" << job.DebugString();
  // Once per attempt (attempt 2 runs without the slowdown; on a loaded machine a rank may
  // still lag there now and then).
  int straggler_lines = 0;
  for (const auto& h : job.history()) {
    if (h.attempt() == 1 && h.reason().rfind("rank 3 is a straggler", 0) == 0) ++straggler_lines;
  }
  const std::string hang = FirstRestartReason(job);
  EXPECT_EQ(straggler_lines, 1) << job.DebugString();
  EXPECT_EQ(hang.rfind("rank 2 hung in backward (", 0), 0u) << job.DebugString();
  EXPECT_NE(hang.find("from checkpoint at step 5"), std::string::npos) << hang;
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(fs::exists(fs::path(job.job_dir()) / "diagnostics" / "1" / ("rank_" + std::to_string(r) + ".txt")))
        << r;
  }
}

// `dsv3ctl dump` takes every rank's stacks and flight recorder from a running job, which
// goes on; a rank that skips a collective is named for it; a worker that refuses its config
// fails the job at once, without restarts; a model the host cannot hold is refused.
TEST_F(ControllerTest, DumpOnDemandAndConfigRefusalFailsAtOnce) {
  setenv("DSV3_FAULT", "skip_collective:rank=1,group=dp0,seq=16,job=2", 1);
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  unsetenv("DSV3_FAULT");
  auto stub = d.Stub();
  json c = QuickConfig(100, 100);
  c["training"]["micro_batch_size"] = 4;
  const int64_t id = Submit(*stub, c, 0, 2);
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).step() >= 3; }, seconds(120)));
  std::string out;
  ASSERT_EQ(Cli({"dump", std::to_string(id), "--controller", d.address(), "--output", "json"}, &out), 0) << out;
  const fs::path dir = json::parse(out)["dir"].get<std::string>();
  ASSERT_TRUE(WaitFor([&] { return fs::exists(dir / "rank_0.txt") && fs::exists(dir / "rank_1.txt"); }, seconds(30)));
  const std::string dump = ReadFile(dir / "rank_1.txt");
  EXPECT_NE(dump.find("== flight recorder =="), std::string::npos) << dump;
  EXPECT_NE(dump.find("group world (2 ranks, this rank is 1)"), std::string::npos) << dump;
  EXPECT_NE(dump.find("== stacks =="), std::string::npos) << dump;
  const v1::Job job = WaitEnded(*stub, id, seconds(240));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason();
  EXPECT_EQ(job.restarts(), 0);

  // Job 2: rank 1 never issues dp0's allreduce #16 and goes on to the next collective.
  json skip = QuickConfig(20, 10);
  skip["training"]["micro_batch_size"] = 4;
  skip["watchdog"] = {{"hang_timeout_s", 3}};
  const int64_t skipped = Submit(*stub, skip, 0, 2);
  ASSERT_EQ(skipped, 2);
  const v1::Job resumed = WaitEnded(*stub, skipped, seconds(240));
  EXPECT_EQ(resumed.state(), v1::JOB_STATE_COMPLETED) << resumed.DebugString();
  const std::string hang = FirstRestartReason(resumed);
  EXPECT_EQ(hang.rfind("rank 1 hung in ", 0), 0u) << resumed.DebugString();
  EXPECT_NE(hang.find("(allreduce #16 of group dp0 never entered; it waits in "), std::string::npos) << hang;

  json bad = QuickConfig(10, 10);
  bad["training"]["use_fp8"] = true;  // valid for dsv3d, refused by this CPU build's worker
  const int64_t refused = Submit(*stub, bad);
  const v1::Job failed = WaitEnded(*stub, refused, seconds(120));
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.restarts(), 0);
  EXPECT_EQ(failed.state_reason().rfind("rank 0 refused its config (exit status 3): /training/use_fp8", 0), 0u)
      << failed.state_reason();
  EXPECT_NE(failed.state_reason().find("not restarted: a restart cannot fix this"), std::string::npos);

  // A model this host cannot hold is refused at submit, with the numbers.
  json huge = QuickConfig(10, 10);
  huge["model"]["vocab_size"] = 2000000000;
  const fs::path huge_path = dir_.path() / "huge.json";
  std::ofstream(huge_path) << huge.dump(2);
  std::string refusal;
  EXPECT_NE(Cli({"submit", huge_path.string(), "--controller", d.address()}, &refusal), 0);
  EXPECT_NE(refusal.find("/model: the estimator puts this job at"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("of memory"), std::string::npos) << refusal;
}

// kill -9 of the controller mid-job, then a new dsv3d on the same state dir: the running
// rank is adopted, re-registers and the job completes without a restart.
TEST_F(ControllerTest, ControllerRestartRecoversTheRunningJob) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  auto stub = d.Stub();
  const int64_t id = Submit(*stub, QuickConfig(80, 40));
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, id).step() >= 10; }, seconds(120)));
  std::set<std::string> families = Families(Scrape(d.http()));  // the ranks' series while they run
  const int port = d.port();
  d.Kill(SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  d.Start(port);
  stub = d.Stub();
  const v1::Job job = WaitEnded(*stub, id, seconds(180));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.state_reason() << "\n" << job.DebugString();
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_EQ(job.step(), 80);
  bool adopted = false;
  for (const auto& h : job.history()) adopted = adopted || h.reason().find("adopted") != std::string::npos;
  EXPECT_TRUE(adopted) << job.DebugString();
  // With the ended job's checkpoints and evaluations too: every series the deploy files use.
  families.merge(Families(Scrape(d.http())));
  ExpectDeployFilesUseOnly(families);
}

// A job whose data files do not exist fails at once (a restart cannot fix it: the worker
// exits with status 4) with the reason and the end of the rank's log.
TEST_F(ControllerTest, FailingJobGivesUpWithItsLastLogLines) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  auto stub = d.Stub();
  json c = QuickConfig(10, 10);
  c["max_restarts"] = 1;
  for (auto& s : c["data"]["sources"]) s["paths"] = {(dir_.path() / "missing" / "*.json.gz").string()};
  const int64_t id = Submit(*stub, c);
  const v1::Job job = WaitEnded(*stub, id, seconds(120));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.state_reason().rfind("rank 0 cannot find or read its data (exit status 4): ", 0), 0u)
      << job.state_reason();
  EXPECT_NE(job.state_reason().find("has no files"), std::string::npos) << job.state_reason();
  EXPECT_EQ(job.restarts(), 0);
  ASSERT_GT(job.last_log_lines_size(), 0);
  std::string tail;
  for (const auto& l : job.last_log_lines()) tail += l + "\n";
  EXPECT_NE(tail.find("has no files"), std::string::npos) << tail;
  EXPECT_NE(tail.find("missing"), std::string::npos) << tail;
  std::string out;
  EXPECT_EQ(Cli({"status", std::to_string(id), "--controller", d.address()}, &out), 0) << out;
  EXPECT_NE(out.find("last log lines:"), std::string::npos) << out;
}

// One slot: jobs wait in the queue and run one after another, higher priority first.
TEST_F(ControllerTest, QueueRunsJobsOneAfterAnotherByPriority) {
  Dsv3d d(dir_.path() / "state", 1);
  d.Start();
  auto stub = d.Stub();
  const int64_t a = Submit(*stub, QuickConfig(10, 10));
  ASSERT_TRUE(WaitFor([&] { return GetJob(*stub, a).state() != v1::JOB_STATE_QUEUED; }, seconds(30)));
  const int64_t low = Submit(*stub, QuickConfig(10, 10), 0);
  const int64_t high = Submit(*stub, QuickConfig(10, 10), 5);
  EXPECT_EQ(GetJob(*stub, low).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(GetJob(*stub, high).state(), v1::JOB_STATE_QUEUED);
  const v1::Job ja = WaitEnded(*stub, a, seconds(120));
  const v1::Job jl = WaitEnded(*stub, low, seconds(240));
  const v1::Job jh = WaitEnded(*stub, high, seconds(240));
  for (const auto& j : {ja, jl, jh}) EXPECT_EQ(j.state(), v1::JOB_STATE_COMPLETED) << j.state_reason();
  EXPECT_GE(jh.started_unix_ms(), ja.finished_unix_ms());
  EXPECT_GE(jl.started_unix_ms(), jh.finished_unix_ms());  // priority 5 went first
}

// An invalid config is refused with every field error and nothing is queued.
TEST_F(ControllerTest, InvalidConfigIsRefusedWithEveryError) {
  Dsv3d d(dir_.path() / "state", 2);
  d.Start();
  auto stub = d.Stub();
  json c = QuickConfig(10, 10);
  c["model"]["moe"]["num_experts_per_token"] = 9;
  c["training"]["learning_rate"] = -1;
  c["model"]["num_layer"] = 3;
  grpc::ClientContext ctx;
  v1::SubmitJobRequest req;
  req.set_config_json(c.dump());
  req.set_num_ranks(4);  // more than the 2 slots
  v1::SubmitJobResponse resp;
  const grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ValidateConfigResponse details;
  ASSERT_TRUE(details.ParseFromString(s.error_details()));
  std::vector<std::string> paths;
  for (const auto& e : details.errors()) {
    paths.push_back(e.path());
    EXPECT_EQ(e.code(), e.path() == "num_ranks" ? "exceeds_capacity" : "invalid_config") << e.path();
  }
  for (const char* want :
       {"num_ranks", "/model/moe/num_experts_per_token", "/training/learning_rate", "/model/num_layer"}) {
    EXPECT_NE(std::find(paths.begin(), paths.end(), want), paths.end()) << want << "\n" << s.error_message();
    EXPECT_NE(s.error_message().find(want), std::string::npos) << s.error_message();
  }
  grpc::ClientContext lctx;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(&lctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0);

  // The CLI refuses it locally, before anything reaches the controller.
  const fs::path cfg = dir_.path() / "bad.json";
  std::ofstream(cfg) << c.dump();
  std::string out;
  EXPECT_EQ(Cli({"submit", cfg.string(), "--controller", d.address()}, &out), 1);
  EXPECT_NE(out.find("/model/moe/num_experts_per_token"), std::string::npos) << out;
  EXPECT_NE(out.find("nothing was submitted"), std::string::npos) << out;
}

// dsv3d starts whole or not at all, and says why.
TEST_F(ControllerTest, DaemonRefusesToStartInABadStateAndSaysWhy) {
  Dsv3d running(dir_.path() / "state", 1);
  running.Start();
  const std::string base = std::string(DSV3D_PATH) + " --worker " + DSV3_WORKER_PATH + " --http-listen 127.0.0.1:0";
  for (const std::string& program : {std::string(DSV3D_PATH), std::string(DSV3_WORKER_PATH)}) {
    int rc = 0;
    const std::string version = Shell(program + " --version", &rc);
    EXPECT_EQ(rc, 0) << version;
    EXPECT_NE(version.find(" 0."), std::string::npos) << version;
    EXPECT_NE(version.find("(commit "), std::string::npos) << version;
  }
  {
    int rc = 0;
    const std::string out = Shell(std::string(DSV3D_PATH) + " --log-level loud", &rc);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("--log-level: \"loud\" is not a level; valid: debug, info, warning, error"), std::string::npos)
        << out;
  }
  {
    // --log-format json: every line dsv3d writes is one JSON object.
    Dsv3d json_logs(dir_.path() / "json_state", 1, 20, {"--log-format", "json"});
    json_logs.Start();
    json_logs.Kill(SIGTERM);
    std::istringstream lines(json_logs.log_text());
    std::set<std::string> messages;
    for (std::string line; std::getline(lines, line);) {
      const json j = json::parse(line, nullptr, false);
      ASSERT_TRUE(j.is_object() && j.value("program", "") == "dsv3d") << line;
      messages.insert(j.value("message", "").substr(0, 6));
    }
    EXPECT_TRUE(messages.count("ready:")) << json_logs.log_text();
    EXPECT_TRUE(messages.count("stoppe")) << json_logs.log_text();
  }
  const auto expect_refusal = [&](const std::string& args, const std::string& reason) {
    int rc = 0;
    const std::string out = Shell(base + " " + args, &rc);
    EXPECT_EQ(rc, 1) << args << "\n" << out;
    EXPECT_NE(out.find("dsv3d: cannot start: "), std::string::npos) << out;
    EXPECT_NE(out.find(reason), std::string::npos) << args << "\n" << out;
  };
  const std::string other = (dir_.path() / "other").string();
  expect_refusal("--state-dir " + (dir_.path() / "state").string() + " --listen 127.0.0.1:0",
                 "is in use by another dsv3d");
  expect_refusal("--state-dir " + other + " --listen " + running.address(), "cannot listen on " + running.address());
  expect_refusal("--state-dir " + other + " --listen 127.0.0.1:0 --allocator pbs",
                 "--allocator: 'pbs' is not one of local, static, slurm");
  expect_refusal("--state-dir " + other + " --listen 127.0.0.1:0 --hosts /etc/hosts",
                 "--hosts: only the static allocator reads a hosts file");
  {
    // No Slurm to reach: the daemon says so instead of starting without its allocator.
    int rc = 0;
    const std::string out =
        Shell("PATH=/nonexistent " + base + " --state-dir " + other + " --listen 127.0.0.1:0 --allocator slurm", &rc);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("--allocator slurm: Slurm is not available here: sbatch is not in PATH"), std::string::npos)
        << out;
  }
  expect_refusal("--state-dir " + other + " --listen nonsense", "--listen: 'nonsense' is not HOST:PORT");
  fs::create_directories(dir_.path() / "foreign");
  std::ofstream(dir_.path() / "foreign" / "dsv3.db") << "this is not a database, but a text file of some length......";
  expect_refusal("--state-dir " + (dir_.path() / "foreign").string() + " --listen 127.0.0.1:0", "job store");
  int rc = 0;
  const std::string out = Shell(std::string(DSV3D_PATH) + " --state-dir " + other + " --worker /nonexistent", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("--worker: /nonexistent is not an executable file"), std::string::npos) << out;

  // The same keys from a TOML file; SIGTERM shuts down cleanly.
  const fs::path toml = dir_.path() / "dsv3d.toml";
  std::ofstream(toml) << "listen = \"127.0.0.1:0\"\nhttp-listen = \"127.0.0.1:0\"\nstate-dir = \"" << other
                      << "\"\nslots = 3\nworker = \"" << DSV3_WORKER_PATH << "\"\n";
  const std::string log = (dir_.path() / "toml.log").string();
  const std::string script = std::string(DSV3D_PATH) + " --config " + toml.string() + " > " + log +
                             " 2>&1 & pid=$!; for i in $(seq 100); do [ -s " + other + "/dsv3d.json ] && break; sleep 0.1; done;"
                             " kill -TERM $pid; wait $pid";
  Shell(script, &rc);
  EXPECT_EQ(rc, 0) << ReadFile(log);
  EXPECT_NE(ReadFile(log).find("allocator local with 3 slot(s)"), std::string::npos) << ReadFile(log);
  EXPECT_NE(ReadFile(log).find("dsv3d: stopped"), std::string::npos) << ReadFile(log);
}

// The HTTP port: health, a clear 404, and a bounded request size.
TEST_F(ControllerTest, HttpEndpointAnswersHealthAndBoundsRequests) {
  Dsv3d d(dir_.path() / "state", 1);
  d.Start();
  EXPECT_EQ(HttpGet(d.http(), "/healthz"), "ok\n");
  EXPECT_EQ(HttpGet(d.http(), "/nothing"), "not found: try /, /metrics, /healthz or /api/v1/jobs\n");
  EXPECT_NE(HttpGet(d.http(), "/metrics?x=1").find("# TYPE dsv3_queue_length gauge"), std::string::npos);
  // 16 KiB of headers is over the 8 KiB limit: refused with 431, not buffered.
  const std::string big = "/metrics HTTP/1.1\r\nX-Padding: " + std::string(16 * 1024, 'a') + "\r\nX-End: 1";
  const std::string reply = HttpGet(d.http(), big, /*whole_response=*/true);
  EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply.substr(0, 100);
}

TEST_F(ControllerTest, CliSaysHowToStartAnUnreachableController) {
  std::string out;
  EXPECT_EQ(Cli({"status", "--controller", "127.0.0.1:1"}, &out), 3) << out;
  EXPECT_NE(out.find("cannot reach the controller at 127.0.0.1:1"), std::string::npos) << out;
  EXPECT_NE(out.find("dsv3d --state-dir"), std::string::npos) << out;
}

// The Python client package (clients/python: stubs generated from the .proto files by
// protoc's grpc_python_plugin, run by Debian's python3 with python3-grpcio) against a dsv3d
// with users: it finds the controller and token in the file `dsv3ctl login` wrote.
TEST_F(ControllerTest, PythonClientSubmitsAndListsJobs) {
  // Users' jobs read shared inputs from a --read-root and write in their work root.
  Dsv3d d(dir_.path() / "state", 1, 20, {"--read-root", Corpus().string()});
  d.Start();
  ASSERT_EQ(d.Admin({"user", "add", "alice"}), 0);
  const std::string token = d.Issue({"token", "create", "alice"});
  const fs::path config_home = dir_.path() / "config";
  setenv("XDG_CONFIG_HOME", config_home.c_str(), 1);
  std::string out;
  ASSERT_EQ(Cli({"login", "--controller", d.address(), "--token", token}, &out), 0) << out;
  unsetenv("XDG_CONFIG_HOME");
  const fs::path cfg = dir_.path() / "quick.json";
  json quick = QuickConfig(5, 5);
  quick["data"]["cache_dir"] = "cache";
  std::ofstream(cfg) << "// a comment, as configs have them\n" << quick.dump(2);
  int rc = 0;
  out = Shell("XDG_CONFIG_HOME=" + config_home.string() + " /usr/bin/python3 " + DSV3_SOURCE_DIR +
                  "/tests/server/python_client.py --gen " + DSV3_PYTHON_GEN_DIR + " --config " + cfg.string(),
              &rc);
  ASSERT_EQ(rc, 0) << out;
  const json report = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(report["controller_from_login"], d.address());
  EXPECT_EQ(report["submitted"], 1);
  EXPECT_EQ(report["listed"], std::vector<int>{1});
  EXPECT_EQ(report["final_state"], "JOB_STATE_COMPLETED");
  ASSERT_EQ(report["log_tail"].size(), 1u) << report;
  EXPECT_NE(report["log_tail"][0].get<std::string>().find("[0] "), std::string::npos) << report;
  EXPECT_EQ(report["loss_last_step"], 5);
  EXPECT_EQ(report["refused"]["code"], "INVALID_ARGUMENT") << report;
  EXPECT_EQ(report["refused"]["paths"], std::vector<std::string>{"/training/learning_rate"}) << report;
  EXPECT_EQ(report["canceled_state"], "JOB_STATE_CANCELED");
  EXPECT_TRUE(report["reflection_lists_controller"].get<bool>());
  EXPECT_EQ(report["wrong_token"], "UNAUTHENTICATED");
  EXPECT_EQ(report["cli_exit"], 0) << report;
  EXPECT_EQ(report["cli_state"], "JOB_STATE_COMPLETED") << report;
}

}  // namespace
}  // namespace dsv3::test
