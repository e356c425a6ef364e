// Test helpers for the controller: a dsv3d subprocess on loopback with a temp state dir, a
// small synthetic corpus, quick job configs, and waits on job state.
#pragma once

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app.h"
#include "child_process.h"
#include "dsv3/data/synth.h"
#include "dsv3/procs/command.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "test_util.h"

namespace dsv3::test {

namespace fs = std::filesystem;

// Sends `request` (a whole HTTP/1.1 request) to host:port over a plain socket and returns the
// whole response ("" when it could not connect).
inline std::string HttpExchange(const std::string& host_port, const std::string& request) {
  const auto colon = host_port.rfind(':');
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host_port.substr(0, colon).c_str(), host_port.substr(colon + 1).c_str(), &hints, &res) != 0) return "";
  const int fd = socket(res->ai_family, res->ai_socktype, 0);
  const bool connected = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  std::string response;
  if (connected && write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
  }
  if (fd >= 0) close(fd);
  return response;
}

// GET http://<host:port><path>; returns the body ("" on failure), or the whole response with
// its status line and headers. `headers`: more header lines, each ending in \r\n.
inline std::string HttpGet(const std::string& host_port, const std::string& path, bool whole_response = false,
                           const std::string& headers = "") {
  const std::string response = HttpExchange(
      host_port, "GET " + path + " HTTP/1.1\r\nHost: " + host_port + "\r\n" + headers + "Connection: close\r\n\r\n");
  if (whole_response) return response;
  const auto body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// `command` through /bin/sh with stderr joined to stdout; its exit code in `rc`.
inline std::string Shell(const std::string& command, int* rc) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// dsv3ctl in-process: its exit code, and stdout followed by stderr in `out`.
inline int Cli(const std::vector<std::string>& args, std::string* out) {
  std::ostringstream o, e;
  const int rc = cli::RunCli(args, o, e);
  *out = o.str() + e.str();
  return rc;
}

// dsv3d as a child process. The state dir outlives restarts of the daemon.
class Dsv3d {
 public:
  // `heartbeat_timeout_s`: how long a silent rank may go before its attempt fails.
  // `extra_args`: more flags, e.g. {"--allocator", "slurm"}.
  Dsv3d(fs::path state_dir, int slots, int heartbeat_timeout_s = 20, std::vector<std::string> extra_args = {})
      : state_dir_(std::move(state_dir)), slots_(slots), heartbeat_timeout_s_(heartbeat_timeout_s),
        extra_args_(std::move(extra_args)) {}
  ~Dsv3d() { Kill(SIGKILL); }

  // Starts dsv3d (on `port`, 0 = any) and waits until it is ready.
  void Start(int port = 0) {
    fs::remove(state_dir_ / "dsv3d.json");
    fs::create_directories(state_dir_);
    const std::string log = (state_dir_ / ("dsv3d." + std::to_string(starts_++) + ".log")).string();
    std::vector<std::string> args = {DSV3D_PATH,
                                     "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--http-listen", "127.0.0.1:0",
                                     "--state-dir", state_dir_.string(),
                                     "--slots", std::to_string(slots_),
                                     "--worker", DSV3_WORKER_PATH,
                                     "--heartbeat-interval", "0.5",
                                     "--heartbeat-timeout", std::to_string(heartbeat_timeout_s_),
                                     "--grace-period", "30"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    // An explicit --listen among the extra flags replaces the loopback default.
    if (std::find(extra_args_.begin(), extra_args_.end(), "--listen") != extra_args_.end()) {
      args.erase(args.begin() + 1, args.begin() + 3);
    }
    process_ = Child(args, log);
    const fs::path info = state_dir_ / "dsv3d.json";
    ASSERT_TRUE(WaitFor([&] { return fs::exists(info) && !ReadFile(info).empty(); }, std::chrono::seconds(30)))
        << "dsv3d did not start: " << ReadFile(log);
    const auto j = nlohmann::json::parse(ReadFile(info));
    address_ = j["grpc"].get<std::string>();
    http_ = j["http"].get<std::string>();
    port_ = std::stoi(address_.substr(address_.rfind(':') + 1));
  }

  void Kill(int sig) { process_.Kill(sig); }

  std::unique_ptr<v1::Controller::Stub> Stub() const {
    return v1::Controller::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }
  const std::string& address() const { return address_; }
  const std::string& http() const { return http_; }
  int port() const { return port_; }
  const fs::path& state_dir() const { return state_dir_; }
  std::string log_text() const { return process_.Log(); }

  // `dsv3d ARGS --state-dir S` (user/token/agent administration); returns its exit code and
  // fills `out` with what it printed.
  int Admin(std::vector<std::string> args, std::string* out = nullptr) const {
    args.insert(args.begin(), DSV3D_PATH);
    args.insert(args.end(), {"--state-dir", state_dir_.string()});
    const auto r = procs::RunCommand(args, std::chrono::seconds(30));
    if (out != nullptr) *out = r.out + r.err;
    return r.exit_code;
  }
  // The last word `dsv3d ARGS` printed: a token or an agent's credential.
  std::string Issue(const std::vector<std::string>& args) const {
    std::string out;
    EXPECT_EQ(Admin(args, &out), 0) << out;
    std::istringstream words(out);
    std::string last;
    for (std::string w; words >> w;) last = w;
    return last;
  }
  // A file holding a fresh credential for the agent `name` (what dsv3-agent --token-file reads).
  fs::path AgentCredential(const std::string& name) const {
    std::string out;
    EXPECT_EQ(Admin({"agent", "add", name}, &out), 0) << out;
    const fs::path file = state_dir_ / (name + ".credential");
    std::ofstream(file) << out;
    return file;
  }

 private:
  fs::path state_dir_;
  int slots_, heartbeat_timeout_s_;
  std::vector<std::string> extra_args_;
  Child process_;
  int starts_ = 0;
  std::string address_, http_;
  int port_ = 0;
};

// A small corpus for every test of the binary, made once.
inline const fs::path& Corpus() {
  static TempDir* dir = [] {
    auto* d = new TempDir();
    data::SynthesizeDolma((d->path() / "corpus").string(), 150, 7);
    return d;
  }();
  static const fs::path path = dir->path();
  return path;
}

// The nano config shrunk for tests: 8x64-token steps (a few per second on one core).
inline nlohmann::json QuickConfig(int64_t steps, int64_t save_every) {
  nlohmann::json c = nlohmann::json::parse(ReadFile(fs::path(DSV3_SOURCE_DIR) / "configs/train_config_nano.json"),
                                           nullptr, true, /*ignore_comments=*/true);
  c["experiment_name"] = "quick";
  c["output_dir"] = "./outputs/quick";
  c["logging"]["tensorboard"]["log_dir"] = "./outputs/quick/tensorboard";
  auto& t = c["training"];
  t["global_batch_size"] = 8;
  t["micro_batch_size"] = 8;
  t["seq_length"] = 64;
  t["train_steps"] = steps;
  t["save_interval"] = save_every;
  t["eval_interval"] = save_every;
  t["log_interval"] = 5;
  t["lr_warmup_steps"] = 4;
  c["validation"]["eval_batches"] = 1;
  c["validation"]["sample_tokens"] = 8;
  c["data"]["cache_dir"] = (Corpus() / "cache").string();
  for (auto& s : c["data"]["sources"]) {
    const std::string subset = s["subset"];
    s["paths"] = {(Corpus() / "corpus" / subset / "*.json.gz").string()};
  }
  return c;
}

// Why the job's first restart happened (its first RESTARTING entry), or "".
inline std::string FirstRestartReason(const v1::Job& job) {
  for (const auto& h : job.history()) {
    if (h.state() == v1::JOB_STATE_RESTARTING) return h.reason();
  }
  return "";
}

inline v1::Job GetJob(v1::Controller::Stub& stub, int64_t id) {
  grpc::ClientContext ctx;
  v1::GetJobRequest req;
  req.set_job_id(id);
  v1::Job job;
  const grpc::Status s = stub.GetJob(&ctx, req, &job);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return job;
}

inline int64_t Submit(v1::Controller::Stub& stub, const nlohmann::json& config, int priority = 0, int num_ranks = 1) {
  grpc::ClientContext ctx;
  v1::SubmitJobRequest req;
  req.set_config_json(config.dump());
  req.set_num_ranks(num_ranks);
  req.set_priority(priority);
  v1::SubmitJobResponse resp;
  const grpc::Status s = stub.SubmitJob(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.job().id();
}

inline bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELED;
}

// Waits for a terminal state and returns the job; fails the test with the job's story if
// it takes longer than `timeout`.
inline v1::Job WaitEnded(v1::Controller::Stub& stub, int64_t id, std::chrono::seconds timeout) {
  v1::Job job;
  const bool ended = WaitFor(
      [&] {
        job = GetJob(stub, id);
        return Terminal(job.state());
      },
      timeout);
  EXPECT_TRUE(ended) << "job " << id << " still " << v1::JobState_Name(job.state()) << ": " << job.DebugString();
  return job;
}

// The newest value of a metric series of a job, and the step it was reported at.
inline std::pair<int64_t, double> LastMetric(v1::Controller::Stub& stub, int64_t id, const std::string& name) {
  grpc::ClientContext ctx;
  v1::GetMetricsRequest req;
  req.set_job_id(id);
  req.add_names(name);
  v1::GetMetricsResponse resp;
  const grpc::Status s = stub.GetMetrics(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  std::pair<int64_t, double> last{-1, 0};
  for (const auto& series : resp.series()) {
    for (const auto& p : series.points()) {
      if (p.step() >= last.first) last = {p.step(), p.value()};
    }
  }
  return last;
}

inline std::vector<v1::JobState> HistoryStates(const v1::Job& job) {
  std::vector<v1::JobState> out;
  for (const auto& h : job.history()) out.push_back(h.state());
  return out;
}

}  // namespace dsv3::test
