#include "agent.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include <grpcpp/grpcpp.h>

#include "dsv3/common/background_loop.h"
#include "dsv3/common/env.h"
#include "dsv3/procs/log.h"
#include "dsv3/procs/rank_processes.h"
#include "dsv3/v1/agent.grpc.pb.h"

namespace dsv3::agent {
namespace {

namespace fs = std::filesystem;
namespace pb = dsv3::v1;
using dsv3::procs::RankExit;
using dsv3::procs::RankLaunch;
using Stream = grpc::ClientReaderWriter<pb::AgentMessage, pb::ControllerMessage>;

struct Key {
  int64_t job_id;
  int attempt, rank;
  bool operator<(const Key& o) const { return std::tie(job_id, attempt, rank) < std::tie(o.job_id, o.attempt, o.rank); }
};

pb::AgentRank ToProto(const Key& k, int64_t pid) {
  pb::AgentRank r;
  r.set_job_id(k.job_id);
  r.set_attempt(k.attempt);
  r.set_rank(k.rank);
  r.set_pid(pid);
  return r;
}

// The output of a rank, read from its spool file and shipped in whole lines.
struct LogTail {
  std::string path;
  std::streamoff offset = 0;
  bool rank_ended = false;
};

class Agent {
 public:
  Agent(AgentOptions o, const std::atomic<bool>& stop)
      : controller_(std::move(o.controller)), name_(std::move(o.name)), slots_(o.slots),
        advertise_(std::move(o.advertise)), token_(std::move(o.token)), work_(std::move(o.work_dir)),
        credentials_(std::move(o.credentials)), rank_ca_(std::move(o.rank_ca)), stop_(stop),
        procs_(/*die_with_parent=*/true) {
    procs_.SetExitCallback([this](const RankExit& e) { OnExit(e); });
    procs_.SetLogCap(o.max_rank_log_bytes);
  }
  ~Agent() { procs_.SetExitCallback(nullptr); }

  // Connects, serves, reconnects; returns the exit status (1: refused by the controller).
  int Run() {
    tailer_.Start([this](dsv3::BackgroundLoop::Lock& lock) { TailLoop(lock); });
    int status = 0;
    auto backoff = std::chrono::milliseconds(200);
    while (!stop_.load()) {
      const grpc::Status s = Serve();
      if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED || s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
          s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
        log::Error("refused by the controller: " + s.error_message());
        status = 1;
        break;
      }
      if (stop_.load()) break;
      if (served_) backoff = std::chrono::milliseconds(200);
      log::Warning("disconnected from " + controller_ + " (" + s.error_message() + "); retrying in " +
                   std::to_string(backoff.count()) + " ms");
      for (auto waited = std::chrono::milliseconds(0); waited < backoff && !stop_.load(); waited += std::chrono::milliseconds(50)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
    tailer_.Stop();
    // The host goes away: so do its ranks.
    for (int64_t j : procs_.Jobs()) procs_.Signal(j, SIGKILL);
    return status;
  }

 private:
  grpc::Status Serve() {
    served_ = false;
    grpc::ClientContext ctx;
    auto channel = grpc::CreateChannel(controller_, credentials_);
    auto stub = pb::AgentControl::NewStub(channel);
    std::unique_ptr<Stream> stream = stub->Connect(&ctx);
    bool connected = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pb::AgentMessage hello;
      auto* h = hello.mutable_hello();
      h->set_name(name_);
      h->set_address(advertise_);
      h->set_slots(slots_);
      h->set_join_token(token_);
      for (const auto& [k, pid] : running_) *h->add_running() = ToProto(k, pid);
      for (const auto& e : exited_) *h->add_exited() = e;
      if (stream->Write(hello)) {
        exited_.clear();
        stream_ = stream.get();
        connected = true;
      }
    }
    std::thread heartbeat;
    pb::ControllerMessage m;
    while (connected && !stop_.load() && stream->Read(&m)) {
      if (m.has_welcome()) {
        served_ = true;
        {
          std::lock_guard<std::mutex> lock(mu_);
          interval_ = std::chrono::milliseconds(std::max<int64_t>(100, m.welcome().heartbeat_interval_ms()));
        }
        log::Info(name_ + " joined " + controller_ + " with " + std::to_string(slots_) + " slot(s)");
        if (!heartbeat.joinable()) heartbeat = std::thread([this, &ctx] { HeartbeatLoop(ctx); });
      } else if (m.has_launch()) {
        Launch(m.launch());
      } else if (m.has_signal()) {
        procs_.Signal(m.signal().job_id(), m.signal().signal());
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_ = nullptr;
    }
    tailer_.Wake();  // the heartbeat loop waits on it too
    if (heartbeat.joinable()) heartbeat.join();
    // Stopping: the controller's side is still open. Otherwise Finish says why it closed.
    if (stop_.load()) ctx.TryCancel();
    return stream->Finish();
  }

  void HeartbeatLoop(grpc::ClientContext& ctx) {
    std::unique_lock<std::mutex> lock(mu_);
    while (stream_ != nullptr && !tailer_.Stopping()) {
      if (stop_.load()) {
        ctx.TryCancel();  // unblocks the reader
        break;
      }
      pb::AgentMessage hb;
      hb.mutable_heartbeat()->set_slots_used(static_cast<int>(running_.size()));
      if (!WriteLocked(hb)) {
        ctx.TryCancel();
        break;
      }
      tailer_.WaitFor(lock, std::min(interval_, std::chrono::milliseconds(500)));
    }
  }

  bool WriteLocked(const pb::AgentMessage& m) { return stream_ != nullptr && stream_->Write(m); }

  void Launch(const pb::AgentLaunch& l) {
    std::vector<RankLaunch> ranks;
    for (const auto& r : l.ranks()) {
      RankLaunch rl;
      rl.rank = r.rank();
      rl.argv.assign(r.argv().begin(), r.argv().end());
      for (size_t i = 0; i + 1 < rl.argv.size(); ++i) {
        // A rank's threads are this host's share: its cores over its slots.
        if (rl.argv[i] == "--threads") rl.argv[i + 1] = std::to_string(std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(slots_)));
      }
      rl.env.insert(r.env().begin(), r.env().end());
      // The CA path dsv3d names is a path on its host; ranks here verify with this host's copy.
      if (!rank_ca_.empty()) rl.env[dsv3::env::kControllerCa] = rank_ca_;
      rl.cwd = r.cwd();
      std::error_code ec;
      fs::create_directories(rl.cwd, ec);
      for (const auto& [file, content] : l.files()) {
        // Only plain names: the controller says what goes into the job's folder, nothing else.
        if (file.find('/') != std::string::npos || file == ".." || file.empty()) continue;
        const fs::path p = fs::path(rl.cwd) / file;
        if (!fs::exists(p, ec)) std::ofstream(p) << content;
      }
      rl.log_path = work_ + "/logs/job" + std::to_string(l.job_id()) + "-attempt" + std::to_string(l.attempt()) +
                    "-rank" + std::to_string(r.rank()) + ".log";
      std::ofstream(rl.log_path, std::ios::trunc);
      ranks.push_back(std::move(rl));
    }
    auto started = procs_.Start(l.job_id(), l.attempt(), ranks);
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& rl : ranks) {
      const Key k{l.job_id(), l.attempt(), rl.rank};
      if (!started.ok()) {
        pb::AgentMessage m;
        auto* e = m.mutable_exit();
        *e->mutable_rank() = ToProto(k, 0);
        e->set_exit_code(127);
        e->set_how(std::string(started.status().message()));
        if (!WriteLocked(m)) exited_.push_back(*e);
        continue;
      }
      int64_t pid = 0;
      for (const auto& s : *started) pid = s.rank == rl.rank ? s.pid : pid;
      running_[k] = pid;
      tails_[k] = LogTail{rl.log_path, 0, false};
      pb::AgentMessage m;
      *m.mutable_started()->mutable_rank() = ToProto(k, pid);
      WriteLocked(m);
    }
  }

  void OnExit(const RankExit& e) {
    const Key k{e.job_id, e.attempt, e.rank};
    std::lock_guard<std::mutex> lock(mu_);
    if (auto t = tails_.find(k); t != tails_.end()) {
      t->second.rank_ended = true;
      ShipLocked(k, t->second);  // the last lines go before the exit
    }
    pb::AgentMessage m;
    auto* x = m.mutable_exit();
    *x->mutable_rank() = ToProto(k, running_.count(k) ? running_[k] : 0);
    x->set_exit_code(e.exit_code);
    x->set_how(e.how);
    running_.erase(k);
    if (!WriteLocked(m)) exited_.push_back(*x);
  }

  // Sends the rank's new whole lines (and a final partial one once it ended). Nothing is
  // consumed while disconnected: the lines go after the reconnect.
  void ShipLocked(const Key& k, LogTail& t) {
    if (stream_ == nullptr) return;
    std::ifstream f(t.path, std::ios::binary);
    if (!f) return;
    f.seekg(t.offset);
    std::string chunk((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    size_t end = chunk.rfind('\n');
    if (t.rank_ended && !chunk.empty()) end = chunk.size() - 1;
    if (end == std::string::npos) return;
    pb::AgentMessage m;
    auto* logs = m.mutable_logs();
    logs->set_job_id(k.job_id);
    logs->set_attempt(k.attempt);
    logs->set_rank(k.rank);
    size_t start = 0;
    while (start <= end) {
      size_t nl = chunk.find('\n', start);
      if (nl == std::string::npos || nl > end) nl = end + 1;
      logs->add_lines(chunk.substr(start, nl - start));
      start = nl + 1;
    }
    if (WriteLocked(m)) t.offset += static_cast<std::streamoff>(end + 1);
  }

  // Ships new output every 250 ms (the tailer's body, with mu_ held).
  void TailLoop(dsv3::BackgroundLoop::Lock& lock) {
    while (tailer_.WaitFor(lock, std::chrono::milliseconds(250))) {
      for (auto it = tails_.begin(); it != tails_.end();) {
        ShipLocked(it->first, it->second);
        it = it->second.rank_ended && stream_ != nullptr ? tails_.erase(it) : std::next(it);
      }
    }
  }

  const std::string controller_, name_;
  const int slots_;
  const std::string advertise_, token_, work_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::string rank_ca_;
  const std::atomic<bool>& stop_;  // set by SIGTERM/SIGINT
  dsv3::procs::RankProcesses procs_;  // started ranks; they die with this process
  std::mutex mu_;
  Stream* stream_ = nullptr;  // the connected stream; null while disconnected
  bool served_ = false;
  std::chrono::milliseconds interval_{2000};
  std::map<Key, int64_t> running_;          // rank -> pid
  std::map<Key, LogTail> tails_;
  std::vector<pb::AgentRankExit> exited_;   // not yet delivered to a controller
  // Ships rank output; its stop flag also ends the heartbeat loop. Last: stopped first.
  dsv3::BackgroundLoop tailer_{mu_};
};

}  // namespace

int RunAgent(AgentOptions options, const std::atomic<bool>& stop) {
  Agent agent(std::move(options), stop);
  return agent.Run();
}

}  // namespace dsv3::agent
