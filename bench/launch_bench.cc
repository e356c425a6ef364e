// Time from submit to the first training step, per allocator, against real daemons: dsv3d
// with --allocator local, static (two dsv3-agent processes on 127.0.0.2 and 127.0.0.3) and
// slurm (the cluster SLURM_CONF names, e.g. tests/slurm/start-local-slurm.sh's). Each run
// is split into
//   allocation     submit -> the ranks' hosts are granted (Slurm: the job turns RUNNING)
//   process start  granted -> rank 0 runs and starts its rendezvous (exec, libraries, config)
//   rendezvous     rank 0's TCPStore + Gloo connect, which includes waiting for the slowest
//                  rank to start (its "joined ... in N ms (done at unix time T ms)" line)
//   first step     rendezvous done -> the first step's metrics: model and data set-up and
//                  the first optimizer step
// Prints one line per run and the median per allocator.
//
//   launch_bench [--allocators local,static,slurm] [--ranks 2] [--repeat 3]
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "bench_daemon.h"
#include "child_process.h"
#include "test_util.h"
#include "dsv3/data/synth.h"
#include "dsv3/procs/command.h"
#include "dsv3/v1/controller.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = dsv3::v1;
using Process = dsv3::test::Child;
using dsv3::test::ReadFile;
using dsv3::test::WaitFor;
using std::chrono::seconds;

struct Split {
  double allocation = 0, process_start = 0, rendezvous = 0, first_step = 0;
  double total() const { return allocation + process_start + rendezvous + first_step; }
};

// Splits one finished job's start-up from its history, its first metric and rank 0's log.
std::optional<Split> Measure(const v1::Job& job, const std::vector<v1::MetricPoint>& points) {
  int64_t granted = 0;
  for (const auto& h : job.history()) {
    const bool launching = h.state() == v1::JOB_STATE_STARTING && h.reason().find("launching") != std::string::npos;
    const bool slurm_running =
        h.reason().find("slurm job") != std::string::npos && h.reason().find(" RUNNING") != std::string::npos;
    if ((launching && granted == 0) || slurm_running) granted = h.time_unix_ms();
  }
  std::smatch m;
  const std::string log = job.ranks().empty() ? "" : ReadFile(job.ranks(0).log_path());
  if (points.empty() || granted == 0 ||
      !std::regex_search(log, m, std::regex(R"(joined \d+ ranks at \S+ in (\d+) ms \(done at unix time (\d+) ms\))"))) {
    return std::nullopt;
  }
  const double rendezvous_ms = std::stod(m[1]);
  const int64_t joined = std::stoll(m[2]);
  int64_t first = points.front().time_unix_ms();
  for (const auto& p : points) first = std::min(first, p.time_unix_ms());
  Split s;
  s.allocation = (granted - job.created_unix_ms()) / 1000.0;
  s.rendezvous = rendezvous_ms / 1000.0;
  s.process_start = (joined - granted) / 1000.0 - s.rendezvous;
  s.first_step = (first - joined) / 1000.0;
  return s;
}

nlohmann::json NanoConfig(const fs::path& corpus, const fs::path& source_dir) {
  std::ifstream f(source_dir / "configs/train_config_nano.json");
  nlohmann::json c = nlohmann::json::parse(f, nullptr, true, /*ignore_comments=*/true);
  c["experiment_name"] = "launch-bench";
  auto& t = c["training"];
  t["global_batch_size"] = 8;
  t["micro_batch_size"] = 4;
  t["seq_length"] = 64;
  t["train_steps"] = 2;
  t["log_interval"] = 1;
  t["save_interval"] = 1000;
  t["eval_interval"] = 1000;
  t["intra_op_threads"] = 1;
  c["validation"]["eval_batches"] = 1;
  c["data"]["cache_dir"] = (corpus / "cache").string();
  for (auto& s : c["data"]["sources"]) s["paths"] = {(corpus / "corpus" / s["subset"].get<std::string>() / "*.json.gz").string()};
  c["slurm"] = {{"enabled", false}, {"partition", "debug"}, {"nodes", 1}, {"gpus_per_node", 0}, {"cpus_per_task", 1},
                {"time", "10"}, {"mem", "2G"}, {"job_name", "launch-bench"}};
  return c;
}

// A fresh credential for the agent `name` from `dsv3d agent add`, in a file.
fs::path AgentCredential(const fs::path& state, const std::string& name) {
  const auto r = dsv3::procs::RunCommand({DSV3D_PATH, "agent", "add", name, "--state-dir", state.string()},
                                          std::chrono::seconds(30));
  const fs::path file = state / (name + ".credential");
  std::ofstream(file) << r.out;
  return file;
}

}  // namespace

int main(int argc, char** argv) {
  std::string allocators = "local,static,slurm";
  int ranks = 2, repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--allocators") allocators = v;
    else if (k == "--ranks") ranks = std::stoi(v);
    else if (k == "--repeat") repeat = std::stoi(v);
    else {
      std::cerr << "usage: launch_bench [--allocators local,static,slurm] [--ranks N] [--repeat N]\n";
      return 2;
    }
  }
  const fs::path root = fs::temp_directory_path() / ("dsv3-launch-bench-" + std::to_string(getpid()));
  fs::create_directories(root);
  dsv3::data::SynthesizeDolma((root / "corpus").string(), 60, 7);
  const nlohmann::json config = NanoConfig(root, DSV3_SOURCE_DIR);
  std::printf("submit -> first step, nano config, %d rank(s), seconds (allocation | process start | rendezvous | "
              "first step = total)\n", ranks);
  std::stringstream list(allocators);
  for (std::string allocator; std::getline(list, allocator, ',');) {
    const fs::path state = root / allocator;
    fs::create_directories(state);
    std::string error;
    std::optional<dsv3::bench::BenchDaemon> d =
        dsv3::bench::StartBenchDaemon(state, ranks, {"--allocator", allocator, "--slurm-poll", "0.2"}, error);
    if (!d) {
      std::printf("%-7s %s\n", allocator.c_str(), error.c_str());
      continue;
    }
    const std::string address = d->address;
    v1::Controller::Stub* stub = d->stub.get();
    std::vector<std::unique_ptr<Process>> agents;
    if (allocator == "static") {
      for (int a = 0; a < ranks; ++a) {
        const std::string name = "bench-" + std::to_string(a);
        agents.push_back(std::make_unique<Process>(
            std::vector<std::string>{DSV3_AGENT_PATH, "--controller", address, "--name", name, "--slots", "1",
                                     "--advertise", "127.0.0." + std::to_string(2 + a), "--token-file",
                                     AgentCredential(state, name).string(), "--work-dir", (state / name).string()},
            state / (name + ".log")));
      }
      WaitFor([&] {
        grpc::ClientContext ctx;
        v1::ListNodesResponse nodes;
        return stub->ListNodes(&ctx, v1::ListNodesRequest{}, &nodes).ok() && nodes.nodes_size() == ranks;
      }, seconds(30));
    }
    std::vector<Split> runs;
    for (int r = 0; r < repeat; ++r) {
      const std::optional<v1::Job> submitted = dsv3::bench::SubmitAndWait(*stub, config, ranks, error);
      if (!submitted) {
        std::printf("%-7s %s\n", allocator.c_str(), error.c_str());
        break;
      }
      const v1::Job& job = *submitted;
      grpc::ClientContext mctx;
      v1::GetMetricsRequest mreq;
      mreq.set_job_id(job.id());
      mreq.add_names("loss");
      v1::GetMetricsResponse metrics;
      (void)stub->GetMetrics(&mctx, mreq, &metrics);
      std::vector<v1::MetricPoint> points;
      for (const auto& series : metrics.series()) points.assign(series.points().begin(), series.points().end());
      const auto split = job.state() == v1::JOB_STATE_COMPLETED ? Measure(job, points) : std::nullopt;
      if (!split) {
        std::printf("%-7s run %d: job %s: %s\n", allocator.c_str(), r + 1, v1::JobState_Name(job.state()).c_str(),
                    job.state_reason().c_str());
        continue;
      }
      runs.push_back(*split);
      std::printf("%-7s run %d: %6.2f | %6.2f | %6.2f | %6.2f = %6.2f\n", allocator.c_str(), r + 1, split->allocation,
                  split->process_start, split->rendezvous, split->first_step, split->total());
    }
    if (!runs.empty()) {
      std::sort(runs.begin(), runs.end(), [](const Split& a, const Split& b) { return a.total() < b.total(); });
      const Split& m = runs[runs.size() / 2];
      std::printf("%-7s median: %6.2f | %6.2f | %6.2f | %6.2f = %6.2f\n", allocator.c_str(), m.allocation,
                  m.process_start, m.rendezvous, m.first_step, m.total());
    }
  }
  std::error_code ec;
  fs::remove_all(root, ec);
  return 0;
}
