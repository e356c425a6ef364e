#include "controller_reporter.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iostream>
#include <mutex>
#include <thread>
#include <variant>

#include <grpcpp/grpcpp.h>

#include "dsv3/common/background_loop.h"
#include "dsv3/common/env.h"
#include "dsv3/common/message_log.h"
#include "dsv3/dist/flight_recorder.h"
#include "dsv3/procs/pem.h"
#include "dsv3/v1/worker.grpc.pb.h"
#include "stack_dump.h"

namespace dsv3::worker {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kCallDeadline = std::chrono::seconds(5);
constexpr auto kFlushInterval = std::chrono::milliseconds(1000);
constexpr size_t kMaxBatch = 1000;
constexpr size_t kMaxQueued = 20000;        // while the controller is away; oldest metrics go first
constexpr int kStopAfterRejections = 3;      // "your attempt is over" this many times in a row
constexpr size_t kMaxDumpBytes = 1 << 20;    // the proto's limit for ReportDiagnostics

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RequireEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    throw std::runtime_error(std::string(name) + " is not set, but " + env::kController +
                             " is: a rank started by dsv3d gets both");
  }
  return v;
}

int64_t ParseEnvInt(const char* name) {
  const std::string v = RequireEnv(name);
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || n < 0) throw std::runtime_error(std::string(name) + "='" + v + "' is not a number");
  return n;
}

// TLS when dsv3d handed the rank the CA to verify it with (DSV3_CONTROLLER_CA).
std::shared_ptr<grpc::ChannelCredentials> ControllerCredentials() {
  const char* ca_path = std::getenv(env::kControllerCa);
  if (ca_path == nullptr || *ca_path == '\0') return grpc::InsecureChannelCredentials();
  auto pem = procs::ReadPemFile(env::kControllerCa, ca_path);
  if (!pem.ok()) throw std::runtime_error(std::string(pem.status().message()));
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = *pem;
  return grpc::SslCredentials(o);
}

// The training thread's progress for a heartbeat.
void FillProgress(v1::RankProgress& out) {
  const dist::ProgressSnapshot p = dist::FlightRecorder::Get().Snapshot();
  out.set_step(p.step);
  out.set_micro_step(p.micro_step);
  out.set_phase(dist::TrainPhaseName(p.phase));
  out.set_phase_since_unix_ms(p.phase_since_ms);
  out.set_last_progress_unix_ms(p.last_progress_ms);
  out.set_last_step_seconds(p.last_step_seconds);
  out.set_last_busy_seconds(p.last_busy_seconds);
  for (const dist::GroupProgress& g : p.groups) {
    v1::GroupProgress* o = out.add_groups();
    o->set_name(g.name);
    o->set_size(g.size);
    o->set_entered(g.entered);
    o->set_completed(g.completed);
    o->set_last_op(g.last_op);
    o->set_waiting_seq(g.waiting_seq);
    o->set_waiting_op(g.waiting_op);
    o->set_waiting_since_unix_ms(g.waiting_since_ms);
  }
}

// A rank's dump: who it is, the flight recorder, every thread's stack.
std::string DiagnosticsText(const v1::RankRef& ref, int world_size) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::ostringstream o;
  o << "dsv3-worker diagnostics: job " << ref.job_id() << " attempt " << ref.attempt() << " rank " << ref.rank()
    << " of " << world_size << ", pid " << getpid() << " on " << host << ", at unix ms " << dist::UnixMs() << "\n\n"
    << "== flight recorder ==\n"
    << dist::FlightRecorder::Get().Dump() << "\n== stacks ==\n"
    << DumpAllThreadStacks();
  std::string text = o.str();
  if (text.size() > kMaxDumpBytes) text = text.substr(0, kMaxDumpBytes - 40) + "\n[cut at 1 MiB]\n";
  return text;
}

using Op = std::variant<v1::ReportMetricsRequest, v1::ReportCheckpointRequest, v1::ReportEvaluationRequest>;

class GrpcControllerReporter final : public ControllerReporter {
 public:
  GrpcControllerReporter(const std::string& address, v1::RankRef ref, int world_size)
      : stub_(v1::WorkerReports::NewStub(grpc::CreateChannel(address, ControllerCredentials()))),
        ref_(std::move(ref)),
        world_size_(world_size),
        address_(address) {
    loop_.Start([this](BackgroundLoop::Lock& lock) { Run(lock); });
  }

  ~GrpcControllerReporter() override { loop_.Stop(); }

  void SetCommandHandler(std::function<void(ControllerCommand)> handler) override {
    std::lock_guard<std::mutex> lock(mu_);
    on_command_ = std::move(handler);
  }

  void OnStart(const train::RunInfo& info) override {
    std::lock_guard<std::mutex> lock(mu_);
    start_ = info;
    have_start_ = true;
    loop_.Wake();
  }

  void OnMetrics(const train::StepMetrics& m) override {
    std::lock_guard<std::mutex> lock(mu_);
    step_ = m.step;
    if (ref_.rank() != 0) return;  // metrics are the job's; rank 0 speaks for it
    const int64_t now = NowMs();
    for (const auto& [name, value] : m.values) {
      auto* s = pending_metrics_.add_samples();
      s->set_step(m.step);
      s->set_name(name);
      s->set_value(value);
      s->set_time_unix_ms(now);
    }
  }

  void OnEval(const train::EvalResult& e) override {
    if (ref_.rank() != 0) return;
    v1::ReportEvaluationRequest r;
    r.set_step(e.step);
    r.set_loss(e.loss);
    r.set_perplexity(e.perplexity);
    r.set_tokens(e.tokens);
    for (const auto& [k, v] : e.per_source_loss) (*r.mutable_per_source_loss())[k] = v;
    r.set_sample(e.sample_prompt + e.sample);
    Enqueue(std::move(r));
  }

  void OnCheckpoint(const train::CheckpointEvent& c) override {
    if (ref_.rank() != 0) return;
    v1::ReportCheckpointRequest r;
    r.set_step(c.step);
    // Absolute: the controller does not share the rank's working folder.
    std::error_code ec;
    const auto abs = std::filesystem::absolute(c.path, ec);
    r.set_path(ec ? c.path : abs.lexically_normal().string());
    r.set_reason(c.reason);
    r.set_seconds(c.seconds);
    Enqueue(std::move(r));
  }

  void Finish(bool finished, bool failed, int64_t step, const std::string& message) override {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    {
      std::unique_lock<std::mutex> lock(mu_);
      FlushMetricsLocked();
      loop_.Wake();
      // Give the sender a moment to drain while the controller is reachable.
      loop_.WaitUntil(lock, deadline - std::chrono::seconds(5), [&] { return queue_.empty() || unreachable_; });
    }
    v1::ReportEndRequest r;
    *r.mutable_ref() = ref_;
    r.set_outcome(failed ? v1::RANK_OUTCOME_FAILED : finished ? v1::RANK_OUTCOME_FINISHED : v1::RANK_OUTCOME_STOPPED);
    r.set_step(step);
    r.set_message(message);
    v1::Ack ack;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    (void)stub_->ReportEnd(&ctx, r, &ack);
  }

 private:
  void Enqueue(Op op) {
    std::lock_guard<std::mutex> lock(mu_);
    FlushMetricsLocked();  // keep metrics before the event that followed them
    queue_.push_back(std::move(op));
    loop_.Wake();
  }

  void FlushMetricsLocked() {
    if (pending_metrics_.samples_size() == 0) return;
    queue_.push_back(std::move(pending_metrics_));
    pending_metrics_ = v1::ReportMetricsRequest();
    while (queue_.size() > kMaxQueued) {
      // Drop the oldest metrics batch; checkpoints and evaluations are worth keeping.
      auto it = std::find_if(queue_.begin(), queue_.end(), [](const Op& o) { return o.index() == 0; });
      if (it == queue_.end()) break;
      queue_.erase(it);
    }
  }

  template <class Req, class Resp, class Call>
  grpc::Status Send(Req req, Resp* resp, Call call) {
    *req.mutable_ref() = ref_;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    return (stub_.get()->*call)(&ctx, req, resp);
  }

  // Counts "the controller says this attempt is over"; several in a row stop the trainer.
  void Judge(const grpc::Status& s) {
    std::function<void(ControllerCommand)> handler;
    {
      std::lock_guard<std::mutex> lock(mu_);
      unreachable_ = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                     s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      const bool rejected = s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                            s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
      rejections_ = rejected ? rejections_ + 1 : 0;
      if (rejections_ == kStopAfterRejections) handler = on_command_;
    }
    if (handler) {
      msg::Warning("the controller no longer runs this attempt (" + s.error_message() + "); stopping");
      handler(ControllerCommand::kStop);
    }
  }

  void Run(BackgroundLoop::Lock& lock) {
    auto next_heartbeat = Clock::now();
    auto next_flush = Clock::now() + kFlushInterval;
    std::chrono::milliseconds interval(2000);
    bool registered = false;
    // Queued reports wake the thread only while the controller answers; otherwise they
    // wait for the next heartbeat, which probes it.
    while (loop_.WaitUntil(lock, std::min(next_heartbeat, next_flush),
                           [&] { return registered && !queue_.empty() && !unreachable_; })) {
      const auto now = Clock::now();
      if (now >= next_flush) {
        FlushMetricsLocked();
        next_flush = now + kFlushInterval;
      }
      if (!registered) {
        v1::RegisterRankRequest req;
        req.set_world_size(world_size_);
        req.set_pid(getpid());
        char host[256] = {};
        gethostname(host, sizeof(host) - 1);
        req.set_host(host);
        if (have_start_) {
          req.set_start_step(start_.start_step);
          req.set_train_steps(start_.train_steps);
          req.set_parameters(start_.parameters);
          req.set_device(start_.device);
          req.set_resumed_from(start_.resumed_from);
        }
        lock.unlock();
        v1::RegisterRankResponse resp;
        const grpc::Status s = Send(req, &resp, &v1::WorkerReports::Stub::RegisterRank);
        Judge(s);
        lock.lock();
        if (s.ok()) {
          registered = true;
          if (resp.heartbeat_interval_ms() > 0) interval = std::chrono::milliseconds(resp.heartbeat_interval_ms());
        } else if (!warned_) {
          msg::Warning("cannot register with the controller at " + address_ + ": " + s.error_message() +
                       " (retrying)");
          warned_ = true;
        }
        next_heartbeat = Clock::now() + (s.ok() ? interval : std::chrono::milliseconds(1000));
        continue;
      }
      if (Clock::now() >= next_heartbeat) {
        v1::HeartbeatRequest req;
        req.set_step(step_);
        lock.unlock();
        FillProgress(*req.mutable_progress());
        v1::HeartbeatResponse resp;
        const grpc::Status s = Send(req, &resp, &v1::WorkerReports::Stub::Heartbeat);
        Judge(s);
        if (s.ok() && resp.dump_request() > dumped_request_) {
          // On this thread: the training thread may be the one that is stuck.
          dumped_request_ = resp.dump_request();
          v1::ReportDiagnosticsRequest d;
          d.set_dump_request(resp.dump_request());
          d.set_text(DiagnosticsText(ref_, world_size_));
          v1::Ack ack;
          Judge(Send(d, &ack, &v1::WorkerReports::Stub::ReportDiagnostics));
        }
        if (s.ok() && resp.command() != v1::RANK_COMMAND_NONE) {
          std::function<void(ControllerCommand)> handler;
          {
            std::lock_guard<std::mutex> g(mu_);
            handler = on_command_;
          }
          if (handler) {
            handler(resp.command() == v1::RANK_COMMAND_STOP ? ControllerCommand::kStop
                                                            : ControllerCommand::kCheckpointNow);
          }
        }
        lock.lock();
        next_heartbeat = Clock::now() + interval;
      }
      // Send queued reports in order; on an unreachable controller keep them for later.
      while (!queue_.empty() && !loop_.Stopping()) {
        Op op = queue_.front();
        lock.unlock();
        v1::Ack ack;
        grpc::Status s;
        if (auto* m = std::get_if<v1::ReportMetricsRequest>(&op)) {
          s = Send(*m, &ack, &v1::WorkerReports::Stub::ReportMetrics);
        } else if (auto* c = std::get_if<v1::ReportCheckpointRequest>(&op)) {
          s = Send(*c, &ack, &v1::WorkerReports::Stub::ReportCheckpoint);
        } else {
          s = Send(std::get<v1::ReportEvaluationRequest>(op), &ack, &v1::WorkerReports::Stub::ReportEvaluation);
        }
        Judge(s);
        lock.lock();
        if (unreachable_) break;  // retry at the next heartbeat
        queue_.pop_front();       // sent, or refused for good
        loop_.Wake();
      }
    }
  }

  std::unique_ptr<v1::WorkerReports::Stub> stub_;
  const v1::RankRef ref_;
  const int world_size_;
  const std::string address_;

  std::mutex mu_;
  bool unreachable_ = false, warned_ = false, have_start_ = false;
  int rejections_ = 0;
  int64_t step_ = 0;
  int64_t dumped_request_ = 0;  // the reporter thread's own
  train::RunInfo start_;
  v1::ReportMetricsRequest pending_metrics_;
  std::deque<Op> queue_;
  std::function<void(ControllerCommand)> on_command_;
  BackgroundLoop loop_{mu_};  // last: stopped before the members it reads go away
};

}  // namespace

std::unique_ptr<ControllerReporter> MakeControllerReporterFromEnv(int rank, int world_size) {
  const char* address = std::getenv(env::kController);
  if (address == nullptr || *address == '\0') return nullptr;
  v1::RankRef ref;
  ref.set_job_id(ParseEnvInt(env::kJobId));
  ref.set_attempt(static_cast<int32_t>(ParseEnvInt(env::kAttempt)));
  ref.set_rank(rank);
  ref.set_credential(RequireEnv(env::kJobCredential));
  return std::make_unique<GrpcControllerReporter>(address, std::move(ref), world_size);
}

}  // namespace dsv3::worker
