// Controller throughput and latency, measured against a real dsv3d process on loopback:
//   submit latency (sequential SubmitJob, p50/p99),
//   status latency under N concurrent clients (GetJob and ListJobs, p50/p99),
//   log streaming to M followers of a live log (lines/s delivered),
//   metrics ingestion (ReportMetrics batches from several "ranks", points/s).
// The job's "rank" is a shell script that writes log lines and waits, so the figures are the
// controller's, not the trainer's. Prints figures only.
//
//   controller_bench [--dsv3d build/server/dsv3d] [--clients 100] [--followers 50]
//                    [--log-lines 200000] [--submits 200]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "dsv3/v1/controller.grpc.pb.h"
#include "dsv3/v1/worker.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Percentiles {
  double p50 = 0, p99 = 0, max = 0;
};

Percentiles Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  if (ms.empty()) return {};
  const auto at = [&](double q) { return ms[std::min(ms.size() - 1, static_cast<size_t>(q * ms.size()))]; };
  return {at(0.5), at(0.99), ms.back()};
}

// A channel of its own per client: separate connections, as separate users would have.
std::shared_ptr<grpc::Channel> Channel(const std::string& addr, int id) {
  grpc::ChannelArguments args;
  args.SetInt("dsv3.bench.client", id);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dsv3d = DSV3D_DEFAULT_PATH;
  int clients = 100, followers = 50, submits = 200;
  int64_t log_lines = 200000;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dsv3d") dsv3d = v;
    else if (k == "--clients") clients = std::stoi(v);
    else if (k == "--followers") followers = std::stoi(v);
    else if (k == "--log-lines") log_lines = std::stoll(v);
    else if (k == "--submits") submits = std::stoi(v);
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  const fs::path dir = fs::temp_directory_path() / ("dsv3_controller_bench_" + std::to_string(getpid()));
  fs::create_directories(dir);
  // The stand-in rank: leaves its credential for the ingestion benchmark, waits for "go",
  // writes the log lines as fast as it can and exits (the job then ends).
  const fs::path rank = dir / "rank.sh";
  std::ofstream(rank) << "#!/bin/sh\necho \"$DSV3_JOB_CREDENTIAL\" > credential\n"
                      << "while [ ! -e go ]; do sleep 0.05; done\n"
                      << "seq 1 " << log_lines
                      << " | sed 's/.*/step & | loss 2.5000 (main 2.1, mtp 2.2) | lr 3.00e-04 | gnorm 1.000 | 5000 "
                         "tok\\/s/'\n";
  fs::permissions(rank, fs::perms::owner_all);

  const fs::path state = dir / "state";
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string log = (dir / "dsv3d.log").string();
    freopen(log.c_str(), "w", stdout);
    freopen(log.c_str(), "a", stderr);
    execl(dsv3d.c_str(), dsv3d.c_str(), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--state-dir",
          state.c_str(), "--slots", "1", "--worker", rank.c_str(), "--heartbeat-timeout", "3600", "--startup-timeout",
          "3600", "--grace-period", "1", nullptr);
    _exit(127);
  }
  for (int i = 0; i < 300 && !fs::exists(state / "dsv3d.json"); ++i) usleep(100000);
  if (!fs::exists(state / "dsv3d.json")) {
    std::cerr << "dsv3d did not start:\n" << ReadFile(dir / "dsv3d.log");
    return 1;
  }
  usleep(100000);
  const std::string addr = nlohmann::json::parse(ReadFile(state / "dsv3d.json"))["grpc"];
  auto stub = dsv3::v1::Controller::NewStub(Channel(addr, 0));
  auto config = nlohmann::json::parse(ReadFile(fs::path(DSV3_SOURCE_DIR) / "configs/train_config_nano.json"), nullptr,
                                      true, true);
  config["max_restarts"] = 0;  // the stand-in rank exits early: end the job, do not retry
  dsv3::v1::SubmitJobRequest submit;
  submit.set_config_json(config.dump());
  submit.set_num_ranks(1);

  // Job 1 runs the stand-in rank; the others queue behind it.
  std::vector<double> submit_ms;
  for (int i = 0; i <= submits; ++i) {
    grpc::ClientContext ctx;
    dsv3::v1::SubmitJobResponse resp;
    const auto t = Clock::now();
    const grpc::Status s = stub->SubmitJob(&ctx, submit, &resp);
    if (!s.ok()) {
      std::cerr << "submit: " << s.error_message() << "\n";
      return 1;
    }
    if (i > 0) submit_ms.push_back(Seconds(t) * 1000);
  }
  const Percentiles sub = Summarize(submit_ms);

  // Status with one client, for reference.
  std::vector<double> single_ms;
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext g;
    dsv3::v1::GetJobRequest req;
    req.set_job_id(1 + i % (submits + 1));
    dsv3::v1::Job job;
    const auto t = Clock::now();
    if (stub->GetJob(&g, req, &job).ok()) single_ms.push_back(Seconds(t) * 1000);
  }
  const Percentiles single = Summarize(single_ms);

  // Status under load: every client asks for one job, then for the list, in a loop.
  std::vector<std::vector<double>> get_ms(clients), list_ms(clients);
  {
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        auto s = dsv3::v1::Controller::NewStub(Channel(addr, c + 1));
        for (int i = 0; i < 20; ++i) {
          grpc::ClientContext g;
          dsv3::v1::GetJobRequest req;
          req.set_job_id(1 + (c * 7 + i) % (submits + 1));
          dsv3::v1::Job job;
          auto t = Clock::now();
          if (s->GetJob(&g, req, &job).ok()) get_ms[c].push_back(Seconds(t) * 1000);
          grpc::ClientContext l;
          dsv3::v1::ListJobsRequest lr;
          lr.set_limit(20);
          dsv3::v1::ListJobsResponse jobs;
          t = Clock::now();
          if (s->ListJobs(&l, lr, &jobs).ok()) list_ms[c].push_back(Seconds(t) * 1000);
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  std::vector<double> all_get, all_list;
  for (int c = 0; c < clients; ++c) {
    all_get.insert(all_get.end(), get_ms[c].begin(), get_ms[c].end());
    all_list.insert(all_list.end(), list_ms[c].begin(), list_ms[c].end());
  }
  const Percentiles get = Summarize(all_get), list = Summarize(all_list);

  const fs::path job_dir = state / "jobs" / "1";
  for (int i = 0; i < 600 && ReadFile(job_dir / "credential").empty(); ++i) usleep(100000);

  // Metrics ingestion: 8 senders as rank 0 of job 1, batches of 500 points (about 30 steps
  // of a real trainer's metrics each).
  const std::string credential = [&] {
    std::string c = ReadFile(job_dir / "credential");
    while (!c.empty() && (c.back() == '\n' || c.back() == ' ')) c.pop_back();
    return c;
  }();
  const int senders = 8, batches = 40, batch = 500;
  std::atomic<int64_t> points{0};
  const auto ingest_start = Clock::now();
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < senders; ++w) {
      threads.emplace_back([&, w] {
        auto s = dsv3::v1::WorkerReports::NewStub(Channel(addr, 2000 + w));
        for (int b = 0; b < batches; ++b) {
          dsv3::v1::ReportMetricsRequest req;
          auto* ref = req.mutable_ref();
          ref->set_job_id(1);
          ref->set_attempt(1);
          ref->set_rank(0);
          ref->set_credential(credential);
          for (int i = 0; i < batch; ++i) {
            auto* m = req.add_samples();
            m->set_step((w * batches + b) * batch + i);
            m->set_name(i % 2 ? "loss" : "lr");
            m->set_value(1.0 / (1 + i));
          }
          grpc::ClientContext ctx;
          dsv3::v1::Ack ack;
          if (s->ReportMetrics(&ctx, req, &ack).ok()) points += batch;
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  const double ingest_s = Seconds(ingest_start);

  // Log streaming: followers attach to the live job, then the rank writes its lines; each
  // stream ends when the job does.
  std::atomic<int64_t> lines_read{0};
  std::atomic<int> attached{0};
  Clock::time_point log_start;
  {
    std::vector<std::thread> threads;
    for (int f = 0; f < followers; ++f) {
      threads.emplace_back([&, f] {
        auto s = dsv3::v1::Controller::NewStub(Channel(addr, 1000 + f));
        grpc::ClientContext ctx;
        dsv3::v1::StreamLogsRequest req;
        req.set_job_id(1);
        req.set_follow(true);
        auto reader = s->StreamLogs(&ctx, req);
        dsv3::v1::LogChunk chunk;
        int64_t n = 0;
        bool first = true;
        while (reader->Read(&chunk)) {
          if (first) ++attached;  // the header line of the attempt arrives first
          first = false;
          n += chunk.lines_size();
        }
        reader->Finish();
        lines_read += n;
      });
    }
    while (attached.load() < followers) usleep(10000);
    log_start = Clock::now();
    std::ofstream(job_dir / "go") << "go\n";
    for (auto& t : threads) t.join();
  }
  const double log_s = Seconds(log_start);

  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);

  std::printf("dsv3d controller bench (%u cores, loopback)\n", std::thread::hardware_concurrency());
  std::printf("  submit latency (%d sequential)         p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n", submits, sub.p50,
              sub.p99, sub.max);
  std::printf("  GetJob latency (1 client)              p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n", single.p50,
              single.p99, single.max);
  std::printf("  GetJob latency (%d concurrent clients)  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (%zu calls)\n",
              clients, get.p50, get.p99, get.max, all_get.size());
  std::printf("  ListJobs(20) latency (same clients)    p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (%zu calls)\n",
              list.p50, list.p99, list.max, all_list.size());
  std::printf("  log streaming to %d followers           %.0f lines/s in total (%lld lines each, %.2f s from the first "
              "line written to the last delivered)\n",
              followers, lines_read.load() / log_s, static_cast<long long>(lines_read.load() / std::max(1, followers)),
              log_s);
  std::printf("  metrics ingestion (%d senders)           %.0f points/s (%lld points in %.2f s)\n", senders,
              points.load() / ingest_s, static_cast<long long>(points.load()), ingest_s);
  fs::remove_all(dir);
  return 0;
}
