// How fast a hang is found and handled, against a real dsv3d (local allocator) and real
// ranks: a nano job of N ranks whose last rank's training thread hangs at step 6 of its
// first attempt (DSV3_FAULT), with watchdog.hang_timeout_s T. Per run, from the moment the
// rank hung (its own log line):
//   decision   the watchdog decided the job is hung (summary.txt: "detected at unix ms")
//   dumps      every rank's dump is written (summary.txt: "dumps collected at unix ms")
//   restart    attempt 2 is launched (the job's history)
// and `over` = decision - T, the detection's own latency (progress reaches dsv3d with each
// heartbeat, every 0.5 s here, and the supervision loop ticks every 0.1 s).
//
//   hang_bench [--ranks 2,4] [--repeat 3] [--timeout 3]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_daemon.h"
#include "dsv3/data/synth.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = dsv3::v1;
using dsv3::test::ReadFile;
using dsv3::test::WaitFor;
using std::chrono::seconds;

struct Latency {
  double decision = 0, dumps = 0, restart = 0;
};

int64_t Find(const std::string& text, const std::string& pattern) {
  std::smatch m;
  return std::regex_search(text, m, std::regex(pattern)) ? std::stoll(m[1]) : 0;
}

nlohmann::json Config(const fs::path& corpus, int ranks, double timeout) {
  std::ifstream f(fs::path(DSV3_SOURCE_DIR) / "configs/train_config_nano.json");
  nlohmann::json c = nlohmann::json::parse(f, nullptr, true, /*ignore_comments=*/true);
  c["experiment_name"] = "hang-bench";
  auto& t = c["training"];
  t["global_batch_size"] = 8;
  t["micro_batch_size"] = 8 / ranks;
  t["seq_length"] = 64;
  t["train_steps"] = 8;
  t["log_interval"] = 1;
  t["save_interval"] = 4;
  t["eval_interval"] = 1000;
  t["intra_op_threads"] = 1;
  c["validation"]["eval_batches"] = 1;
  c["watchdog"] = {{"hang_timeout_s", timeout}};
  c["data"]["cache_dir"] = (corpus / "cache").string();
  for (auto& s : c["data"]["sources"]) {
    s["paths"] = {(corpus / "corpus" / s["subset"].get<std::string>() / "*.json.gz").string()};
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  std::string rank_list = "2,4";
  int repeat = 3;
  double timeout = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--ranks") rank_list = v;
    else if (k == "--repeat") repeat = std::stoi(v);
    else if (k == "--timeout") timeout = std::stod(v);
    else {
      std::cerr << "usage: hang_bench [--ranks 2,4] [--repeat N] [--timeout S]\n";
      return 2;
    }
  }
  const fs::path root = fs::temp_directory_path() / ("dsv3-hang-bench-" + std::to_string(getpid()));
  fs::create_directories(root);
  dsv3::data::SynthesizeDolma((root / "corpus").string(), 60, 7);
  std::printf("injected hang -> decision | dumps written | restart launched (seconds); watchdog.hang_timeout_s %g, "
              "heartbeats every 0.5 s\n", timeout);
  std::stringstream list(rank_list);
  for (std::string item; std::getline(list, item, ',');) {
    const int ranks = std::stoi(item);
    const fs::path state = root / ("ranks" + item);
    fs::create_directories(state);
    setenv("DSV3_FAULT", ("hang:rank=" + std::to_string(ranks - 1) + ",step=6").c_str(), 1);
    std::string error;
    const std::optional<dsv3::bench::BenchDaemon> d = dsv3::bench::StartBenchDaemon(state, ranks, {}, error);
    unsetenv("DSV3_FAULT");
    if (!d) {
      std::printf("%d ranks: %s\n", ranks, error.c_str());
      continue;
    }
    std::vector<Latency> runs;
    for (int r = 0; r < repeat; ++r) {
      const std::optional<v1::Job> submitted =
          dsv3::bench::SubmitAndWait(*d->stub, Config(root, ranks, timeout), ranks, error);
      if (!submitted) {
        std::printf("%d ranks: %s\n", ranks, error.c_str());
        break;
      }
      const v1::Job& job = *submitted;
      const std::string hung_log = job.ranks_size() == ranks ? ReadFile(job.ranks(ranks - 1).log_path()) : "";
      const int64_t hung = Find(hung_log, R"(hanging the training thread .* \(at unix ms (\d+)\))");
      const std::string summary = ReadFile(fs::path(job.job_dir()) / "diagnostics" / "1" / "summary.txt");
      const int64_t decided = Find(summary, R"(detected at unix ms (\d+))");
      const int64_t dumped = Find(summary, R"(dumps collected at unix ms (\d+))");
      int64_t restarted = 0;
      for (const auto& h : job.history()) {
        if (h.state() == v1::JOB_STATE_STARTING && h.attempt() == 2 && restarted == 0) restarted = h.time_unix_ms();
      }
      if (job.state() != v1::JOB_STATE_COMPLETED || hung == 0 || decided == 0 || dumped == 0 || restarted == 0) {
        std::printf("%d ranks, run %d: job %s (%s): no complete measurement\n", ranks, r + 1,
                    v1::JobState_Name(job.state()).c_str(), job.state_reason().c_str());
        continue;
      }
      Latency l{(decided - hung) / 1000.0, (dumped - hung) / 1000.0, (restarted - hung) / 1000.0};
      runs.push_back(l);
      std::printf("%d ranks, run %d: %6.2f | %6.2f | %6.2f   (over the timeout: %.2f)\n", ranks, r + 1, l.decision,
                  l.dumps, l.restart, l.decision - timeout);
    }
    if (!runs.empty()) {
      std::sort(runs.begin(), runs.end(), [](const Latency& a, const Latency& b) { return a.restart < b.restart; });
      const Latency& m = runs[runs.size() / 2];
      std::printf("%d ranks, median: %6.2f | %6.2f | %6.2f   (over the timeout: %.2f)\n", ranks, m.decision, m.dumps,
                  m.restart, m.decision - timeout);
    }
  }
  std::error_code ec;
  fs::remove_all(root, ec);
  return 0;
}
