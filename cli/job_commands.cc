#include "job_commands.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/env.h"
#include "connection.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "output.h"

namespace dsv3::cli {
namespace {

using nlohmann::json;
constexpr auto kCallDeadline = std::chrono::seconds(30);

// Options every job verb has: where the controller is, how to reach it, the output format.
struct Common {
  ConnectionFlags connection;
  OutputFormat format = OutputFormat::kText;
  mutable std::optional<Connection> resolved;
  void Add(CLI::App& verb) {
    connection.Add(verb);
    AddOutputOption(verb, format);
  }
  // Throws CLI::ValidationError (a usage error) when a TLS file cannot be read.
  const Connection& Conn() const {
    if (!resolved) {
      auto c = Connect(connection);
      if (!c.ok()) throw CLI::ValidationError(std::string(c.status().message()));
      resolved = *c;
    }
    return *resolved;
  }
  std::string Address() const { return Conn().address; }
  std::unique_ptr<v1::Controller::Stub> Stub() const {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    return v1::Controller::NewStub(grpc::CreateCustomChannel(Address(), Conn().credentials, args));
  }
  // Every call carries the user's token.
  void Prepare(grpc::ClientContext& rpc) const { Authorize(rpc, Conn()); }
};

void SetDeadline(grpc::ClientContext& ctx) { ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline); }

// The one place a gRPC status becomes an exit code and a message.
int ReportRpcError(const grpc::Status& s, const Common& c, CliContext& ctx) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE && s.error_message().find("andshake") != std::string::npos) {
    ctx.err << "dsv3ctl: the TLS handshake with " << c.Address() << " failed: " << s.error_message() << "\n"
            << "Check that --tls-ca (or DSV3_TLS_CA) is the CA that signed the controller's certificate, that the "
               "certificate names the host you dial, and, for a controller with --tls-client-ca, your --tls-cert.\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    if (!c.Conn().tls && s.error_message().find("Socket closed") != std::string::npos) {
      ctx.err << "dsv3ctl: the controller at " << c.Address() << " closed the connection: if it serves TLS, pass "
              << "--tls-ca FILE (or --tls for a certificate of a public CA)\n";
      return ctx.exit_code = kExitUnreachable;
    }
    ctx.err << "dsv3ctl: cannot reach the controller at " << c.Address() << ": " << s.error_message() << "\n"
            << "Start one with `dsv3d --state-dir ./var/dsv3` (build/server/dsv3d in a build tree), or point "
               "--controller / DSV3_CONTROLLER at a running one.\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    ctx.err << "dsv3ctl: the controller at " << c.Address() << " did not accept you: " << s.error_message() << "\n";
    return ctx.exit_code = kExitFailed;
  }
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    ctx.err << "dsv3ctl: the controller at " << c.Address() << " did not answer in time\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && !s.error_details().empty()) {
    v1::ValidateConfigResponse details;
    if (details.ParseFromString(s.error_details())) {
      if (c.format == OutputFormat::kJson) {
        std::string text;
        (void)google::protobuf::util::MessageToJsonString(details, &text);
        ctx.out << text << "\n";
      } else {
        for (const auto& e : details.errors()) ctx.err << e.path() << ": " << e.message() << "\n";
        ctx.err << "dsv3ctl: the controller refused the job (" << details.errors_size()
                << (details.errors_size() == 1 ? " error)\n" : " errors)\n");
      }
      return ctx.exit_code = kExitFailed;
    }
  }
  ctx.err << "dsv3ctl: " << s.error_message() << "\n";
  return ctx.exit_code = kExitFailed;
}

// One unary call with the verbs' deadline. On failure reports it (message and exit code)
// and returns false.
template <class Req, class Resp>
bool Call(const Common& c, CliContext& ctx,
          grpc::Status (v1::Controller::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Req& req,
          Resp* resp) {
  auto stub = c.Stub();
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  SetDeadline(rpc);
  const grpc::Status s = ((*stub).*method)(&rpc, req, resp);
  if (s.ok()) return true;
  ReportRpcError(s, c, ctx);
  return false;
}

std::string ToJsonText(const google::protobuf::Message& m) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &text, o);
  return text;
}

std::string StateName(v1::JobState s) {
  std::string n = v1::JobState_Name(s);
  const std::string prefix = "JOB_STATE_";
  return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : n;
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELED;
}

std::string Duration(double seconds) {
  if (seconds < 0) seconds = 0;
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  if (s < 86400) return std::to_string(s / 3600) + "h" + std::to_string(s % 3600 / 60) + "m";
  return std::to_string(s / 86400) + "d" + std::to_string(s % 86400 / 3600) + "h";
}

std::string Fixed(double v, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

std::string TimeOf(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const std::time_t t = unix_ms / 1000;
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::vector<std::string> JobRow(const v1::Job& j) {
  const double age = NowSeconds() - j.created_unix_ms() / 1000.0;
  return {std::to_string(j.id()),
          j.name(),
          StateName(j.state()),
          std::to_string(j.step()) + "/" + std::to_string(j.total_steps()),
          j.has_loss() ? Fixed(j.loss(), 4) : "-",
          j.has_tokens_per_second() ? HumanCount(j.tokens_per_second()) : "-",
          j.has_eta_seconds() ? Duration(j.eta_seconds()) : "-",
          Duration(age)};
}

const std::vector<std::string> kJobHeader = {"ID", "NAME", "STATE", "STEP", "LOSS", "TOK/S", "ETA", "AGE"};

// "▁▂▃▄▅▆▇█" over the value range.
std::string Sparkline(const std::vector<double>& values) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  if (values.empty()) return "";
  double lo = values[0], hi = values[0];
  for (double v : values) {
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  std::string out;
  for (double v : values) {
    const int level = !std::isfinite(v) || hi <= lo ? 0 : static_cast<int>(std::lround((v - lo) / (hi - lo) * 7));
    out += kBars[std::clamp(level, 0, 7)];
  }
  return out;
}

void PrintJobDetail(const v1::Job& j, std::ostream& os) {
  os << RenderTable({kJobHeader, JobRow(j)});
  os << "\nstate:        " << StateName(j.state()) << (j.state_reason().empty() ? "" : " (" + j.state_reason() + ")")
     << "\nowner:        " << j.owner() << "\nranks:        " << j.num_ranks() << ", attempt " << j.attempt()
     << ", restarts " << j.restarts() << " of " << j.max_restarts() << "\nsubmitted:    " << TimeOf(j.created_unix_ms())
     << "\nstarted:      " << TimeOf(j.started_unix_ms()) << "\nfinished:     " << TimeOf(j.finished_unix_ms())
     << "\njob folder:   " << j.job_dir() << "\noutputs:      " << j.output_dir()
     << "\ncheckpoints:  " << j.checkpoint_dir() << "\ntensorboard:  "
     << (j.tensorboard_dir().empty() ? "off" : j.tensorboard_dir()) << "\n";
  if (!j.last_checkpoint().empty()) {
    os << "last checkpoint: step " << j.last_checkpoint_step() << " " << j.last_checkpoint() << "\n";
  }
  if (j.allocations_size() > 0) {
    // The chain of Slurm jobs, one per attempt: a time limit continues in a new one.
    os << j.allocations(0).allocator() << " jobs:   ";
    for (int i = 0; i < j.allocations_size(); ++i) {
      const auto& a = j.allocations(i);
      os << (i > 0 ? " -> " : "") << a.external_id() << " " << a.state() << (a.reason().empty() ? "" : " (" + a.reason() + ")");
    }
    os << "\n";
  }
  if (j.has_val_loss()) os << "val loss:     " << Fixed(j.val_loss(), 4) << " (ppl " << Fixed(std::exp(j.val_loss()), 2) << ")\n";
  if (j.ranks_size() > 0) {
    std::vector<std::vector<std::string>> rows = {{"RANK", "PID", "HOST", "STATE", "EXIT", "LOG"}};
    for (const auto& r : j.ranks()) {
      rows.push_back({std::to_string(r.rank()), std::to_string(r.pid()), r.host(), r.state(),
                      r.state() == "exited" ? std::to_string(r.exit_code()) : "-", r.log_path()});
    }
    os << "\n" << RenderTable(rows);
  }
  if (j.history_size() > 0) {
    os << "\nhistory:\n";
    for (const auto& h : j.history()) {
      os << "  " << TimeOf(h.time_unix_ms()) << "  " << StateName(h.state()) << "  " << h.reason() << "\n";
    }
  }
  if (j.evaluations_size() > 0) {
    const auto& e = j.evaluations(j.evaluations_size() - 1);
    os << "\nlast evaluation (step " << e.step() << "): loss " << Fixed(e.loss(), 4) << ", perplexity "
       << Fixed(e.perplexity(), 2) << "\n";
    if (!e.sample().empty()) os << "  sample: " << e.sample() << "\n";
  }
  if (j.last_log_lines_size() > 0) {
    os << "\nlast log lines:\n";
    for (const auto& l : j.last_log_lines()) os << "  " << l << "\n";
  }
}

std::optional<v1::Job> FetchJob(v1::Controller::Stub& stub, int64_t id, const Common& c, CliContext& ctx) {
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  SetDeadline(rpc);
  v1::GetJobRequest req;
  req.set_job_id(id);
  v1::Job job;
  const grpc::Status s = stub.GetJob(&rpc, req, &job);
  if (!s.ok()) {
    ReportRpcError(s, c, ctx);
    return std::nullopt;
  }
  return job;
}

// Streams logs to `os`; returns the RPC status (OK when the stream ended normally).
grpc::Status StreamLogs(v1::Controller::Stub& stub, const Common& c, int64_t id, std::optional<int> rank, bool follow,
                        int tail, bool prefix_rank, std::ostream& os) {
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  v1::StreamLogsRequest req;
  req.set_job_id(id);
  if (rank) req.set_rank(*rank);
  req.set_follow(follow);
  req.set_tail_lines(tail);
  auto reader = stub.StreamLogs(&rpc, req);
  v1::LogChunk chunk;
  while (reader->Read(&chunk)) {
    for (const auto& l : chunk.lines()) {
      if (prefix_rank) os << "[" << l.rank() << "] ";
      os << l.text() << "\n";
    }
    os.flush();
  }
  return reader->Finish();
}

// ------------------------------------------------------------------ submit
void AddSubmit(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    std::string file, resume, name;
    int gpus = 0, priority = 0;
    bool follow = false, dry_run = false, deepspeed = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand("submit", "Submit a training config as a job to dsv3d");
  verb->add_option("CONFIG", st->file, "Config file")->required();
  verb->add_option("--gpus,--world-size", st->gpus,
                   "Ranks to run (GPUs, or CPU processes); default: the slurm section's nodes x ntasks_per_node "
                   "when enabled, else distributed.data_parallel_size, else 1")
      ->check(CLI::PositiveNumber);
  verb->add_option("--resume", st->resume, "Checkpoint to start from (a path or 'latest')");
  verb->add_option("--name", st->name, "Job name (default: experiment_name)");
  verb->add_option("--priority", st->priority, "Higher runs first; equal priorities run in submission order");
  verb->add_flag("--follow,-f", st->follow, "Stream the job's logs until it ends; exit with its outcome");
  verb->add_flag("--dry-run", st->dry_run, "Validate on the controller and show what would start; queue nothing");
  verb->add_flag("--deepspeed", st->deepspeed,
                 "Turn the deepspeed section on (ZeRO, precision, clipping from it and its config_file)");
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    // Validate here first: a broken config never reaches the controller's queue.
    config::LoadOptions lo;
    if (st->gpus > 0) lo.world_size = st->gpus;
    lo.enable_deepspeed = st->deepspeed;
    const config::LoadResult loaded = config::LoadConfigFile(st->file, lo);
    for (const auto& w : loaded.warnings) ctx.err << st->file << ": warning: " << w.ToString() << "\n";
    if (!loaded.ok()) {
      if (st->common.format == OutputFormat::kJson) {
        json errors = json::array();
        for (const auto& e : loaded.errors) errors.push_back({{"path", e.path}, {"message", e.message}});
        ctx.out << json{{"file", st->file}, {"valid", false}, {"errors", errors}}.dump(2) << "\n";
      } else {
        for (const auto& e : loaded.errors) ctx.err << st->file << ": " << e.ToString() << "\n";
        ctx.err << "dsv3ctl: " << st->file << " is invalid (" << loaded.errors.size()
                << (loaded.errors.size() == 1 ? " error" : " errors") << "); nothing was submitted\n";
      }
      ctx.exit_code = kExitFailed;
      return;
    }
    auto stub = st->common.Stub();
    v1::SubmitJobRequest req;
    req.set_config_json(config::ToJsonText(loaded.config));
    req.set_name(st->name);
    req.set_resume_from(st->resume);
    req.set_num_ranks(st->gpus);
    req.set_priority(st->priority);
    req.set_dry_run(st->dry_run);
    std::error_code ec;
    req.set_working_dir(std::filesystem::current_path(ec).string());
    req.set_config_path(st->file);
    v1::SubmitJobResponse resp;
    if (!Call(st->common, ctx, &v1::Controller::Stub::SubmitJob, req, &resp)) return;
    const bool json_out = st->common.format == OutputFormat::kJson;
    if (st->dry_run) {
      if (json_out) {
        ctx.out << ToJsonText(resp) << "\n";
      } else {
        for (const auto& w : resp.warnings()) ctx.err << "warning: " << w.path() << ": " << w.message() << "\n";
        ctx.out << "dry run: " << st->file << " is valid; nothing was queued\n" << resp.plan();
      }
      ctx.exit_code = kExitOk;
      return;
    }
    const v1::Job& job = resp.job();
    if (!st->follow) {
      if (json_out) {
        ctx.out << ToJsonText(job) << "\n";
      } else {
        ctx.out << "submitted job " << job.id() << " (" << job.name() << "): " << StateName(job.state()) << "\n"
                << "  dsv3ctl status " << job.id() << "    dsv3ctl logs " << job.id() << " -f    dsv3ctl cancel "
                << job.id() << "\n";
      }
      ctx.exit_code = kExitOk;
      return;
    }
    if (!json_out) ctx.out << "submitted job " << job.id() << " (" << job.name() << "); following its logs\n";
    // Follow: JSON output gets only the final job; text gets the logs as they come.
    std::ostringstream sink;
    const grpc::Status ls =
        StreamLogs(*stub, st->common, job.id(), std::nullopt, true, 0, job.num_ranks() > 1, json_out ? sink : ctx.out);
    if (!ls.ok()) {
      ReportRpcError(ls, st->common, ctx);
      return;
    }
    // The stream ends when the job does; the final state may take a moment to be written.
    std::optional<v1::Job> final_job;
    for (int i = 0; i < 50; ++i) {
      final_job = FetchJob(*stub, job.id(), st->common, ctx);
      if (!final_job || IsTerminal(final_job->state())) break;
      usleep(200 * 1000);
    }
    if (!final_job) return;
    if (json_out) {
      ctx.out << ToJsonText(*final_job) << "\n";
    } else {
      ctx.out << "\n";
      PrintJobDetail(*final_job, ctx.out);
    }
    ctx.exit_code = final_job->state() == v1::JOB_STATE_COMPLETED ? kExitOk : kExitFailed;
  });
}

// ------------------------------------------------------------------ status / list
void AddStatusAndList(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    std::optional<int64_t> job;
    std::vector<std::string> states;
    std::string name;
    int limit = 0;
  };
  for (const bool is_list : {false, true}) {
    auto st = std::make_shared<State>();
    CLI::App* verb =
        is_list ? app.add_subcommand("list", "List jobs, newest first")
                : app.add_subcommand("status", "Show active and recent jobs as a table, or one job in detail");
    if (!is_list) {
      verb->add_option("JOB", st->job, "Job id: show this job in detail");
    } else {
      verb->add_option("--state", st->states, "Only jobs in these states (QUEUED, RUNNING, COMPLETED, ...)");
      verb->add_option("--name", st->name, "Only jobs whose name contains this");
      verb->add_option("--limit", st->limit, "At most this many jobs (default 100)")->check(CLI::PositiveNumber);
    }
    st->common.Add(*verb);
    verb->callback([st, &ctx, is_list] {
      auto stub = st->common.Stub();
      const bool json_out = st->common.format == OutputFormat::kJson;
      if (st->job) {
        auto job = FetchJob(*stub, *st->job, st->common, ctx);
        if (!job) return;
        if (json_out) {
          ctx.out << ToJsonText(*job) << "\n";
        } else {
          PrintJobDetail(*job, ctx.out);
        }
        ctx.exit_code = kExitOk;
        return;
      }
      v1::ListJobsRequest req;
      for (const auto& name : st->states) {
        v1::JobState s;
        std::string upper = name;
        for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        if (!v1::JobState_Parse("JOB_STATE_" + upper, &s) || s == v1::JOB_STATE_UNSPECIFIED) {
          ctx.err << "dsv3ctl: --state: '" << name
                  << "' is not a job state; valid: QUEUED STARTING RUNNING RESTARTING COMPLETED FAILED CANCELED\n";
          ctx.exit_code = kExitUsage;
          return;
        }
        req.add_states(s);
      }
      // `status` shows what is active plus the last few that ended, like squeue + sacct.
      req.set_limit(is_list ? st->limit : 20);
      req.set_name_contains(st->name);
      v1::ListJobsResponse resp;
      if (!Call(st->common, ctx, &v1::Controller::Stub::ListJobs, req, &resp)) return;
      if (json_out) {
        ctx.out << ToJsonText(resp) << "\n";
      } else if (resp.jobs_size() == 0) {
        ctx.out << "no jobs\n";
      } else {
        std::vector<std::vector<std::string>> rows = {kJobHeader};
        for (const auto& j : resp.jobs()) rows.push_back(JobRow(j));
        ctx.out << RenderTable(rows);
      }
      ctx.exit_code = kExitOk;
    });
  }
}

// ------------------------------------------------------------------ logs
void AddLogs(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    int64_t job = 0;
    std::optional<int> rank;
    int tail = 0;
    bool follow = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand("logs", "Print a job's rank logs (stdout and stderr)");
  verb->add_option("JOB", st->job, "Job id")->required();
  verb->add_flag("-f,--follow", st->follow, "Keep printing until the job ends");
  verb->add_option("--rank", st->rank, "Only this rank (default: every rank, prefixed [rank])");
  verb->add_option("--tail", st->tail, "Start with the last N lines of each rank")->check(CLI::NonNegativeNumber);
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    auto stub = st->common.Stub();
    auto job = FetchJob(*stub, st->job, st->common, ctx);
    if (!job) return;
    const bool prefix = !st->rank && job->num_ranks() > 1;
    if (st->common.format == OutputFormat::kJson) {
      grpc::ClientContext rpc;
      st->common.Prepare(rpc);
      v1::StreamLogsRequest req;
      req.set_job_id(st->job);
      if (st->rank) req.set_rank(*st->rank);
      req.set_follow(st->follow);
      req.set_tail_lines(st->tail);
      auto reader = stub->StreamLogs(&rpc, req);
      v1::LogChunk chunk;
      while (reader->Read(&chunk)) {
        for (const auto& l : chunk.lines()) ctx.out << json{{"rank", l.rank()}, {"text", l.text()}}.dump() << "\n";
      }
      const grpc::Status s = reader->Finish();
      if (!s.ok()) {
        ReportRpcError(s, st->common, ctx);
        return;
      }
    } else {
      const grpc::Status s = StreamLogs(*stub, st->common, st->job, st->rank, st->follow, st->tail, prefix, ctx.out);
      if (!s.ok()) {
        ReportRpcError(s, st->common, ctx);
        return;
      }
    }
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ cancel / checkpoint-now
void AddCancel(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    int64_t job = 0;
    std::string reason;
    bool wait = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "cancel", "Cancel a job: its ranks save a checkpoint and stop (SIGKILL after the grace period)");
  verb->add_option("JOB", st->job, "Job id")->required();
  verb->add_option("--reason", st->reason, "Recorded in the job's history");
  verb->add_flag("--wait", st->wait, "Wait until the job has ended");
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    v1::CancelJobRequest req;
    req.set_job_id(st->job);
    req.set_reason(st->reason);
    v1::CancelJobResponse resp;
    if (!Call(st->common, ctx, &v1::Controller::Stub::CancelJob, req, &resp)) return;
    auto stub = st->common.Stub();
    v1::Job job = resp.job();
    while (st->wait && !IsTerminal(job.state())) {
      usleep(250 * 1000);
      auto j = FetchJob(*stub, st->job, st->common, ctx);
      if (!j) return;
      job = *j;
    }
    if (st->common.format == OutputFormat::kJson) {
      ctx.out << ToJsonText(job) << "\n";
    } else {
      ctx.out << "job " << job.id() << " (" << job.name() << "): " << StateName(job.state()) << " ("
              << job.state_reason() << ")\n";
    }
    ctx.exit_code = kExitOk;
  });

  auto ck = std::make_shared<State>();
  CLI::App* now = app.add_subcommand("checkpoint-now", "Ask a running job to save a checkpoint after its current step");
  now->add_option("JOB", ck->job, "Job id")->required();
  ck->common.Add(*now);
  now->callback([ck, &ctx] {
    v1::CheckpointJobRequest req;
    req.set_job_id(ck->job);
    v1::CheckpointJobResponse resp;
    if (!Call(ck->common, ctx, &v1::Controller::Stub::CheckpointJob, req, &resp)) return;
    if (ck->common.format == OutputFormat::kJson) {
      ctx.out << json{{"job_id", ck->job}, {"requested", true}}.dump() << "\n";
    } else {
      ctx.out << "job " << ck->job << ": checkpoint requested; it is saved after the current step\n";
    }
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ metrics
void AddMetrics(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    int64_t job = 0;
    std::vector<std::string> names;
    int width = 60;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand("metrics", "A job's metric series: latest values and a sparkline each");
  verb->add_option("JOB", st->job, "Job id")->required();
  verb->add_option("--name", st->names, "Only these series (loss, lr, tokens_per_s, val_loss, ...)");
  verb->add_option("--width", st->width, "Points per sparkline")->check(CLI::Range(2, 400))->capture_default_str();
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    v1::GetMetricsRequest req;
    req.set_job_id(st->job);
    for (const auto& n : st->names) req.add_names(n);
    const bool json_out = st->common.format == OutputFormat::kJson;
    if (!json_out) req.set_max_points(st->width);
    v1::GetMetricsResponse resp;
    if (!Call(st->common, ctx, &v1::Controller::Stub::GetMetrics, req, &resp)) return;
    if (json_out) {
      ctx.out << ToJsonText(resp) << "\n";
      ctx.exit_code = kExitOk;
      return;
    }
    if (resp.series_size() == 0) {
      ctx.out << "no metrics yet for job " << st->job << "\n";
      ctx.exit_code = kExitOk;
      return;
    }
    std::vector<std::vector<std::string>> rows = {{"METRIC", "STEP", "LAST", "MIN", "MAX", "TREND"}};
    for (const auto& series : resp.series()) {
      std::vector<double> values;
      for (const auto& p : series.points()) values.push_back(p.value());
      const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
      const auto fmt = [](double v) {
        std::ostringstream os;
        os.precision(5);
        os << v;
        return os.str();
      };
      rows.push_back({series.name(), std::to_string(series.points().rbegin()->step()), fmt(values.back()), fmt(*lo),
                      fmt(*hi), Sparkline(values)});
    }
    ctx.out << RenderTable(rows);
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ checkpoints
void AddCheckpoints(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    int64_t job = 0;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand("checkpoints", "A job's checkpoints on disk, with validation loss");
  verb->add_option("JOB", st->job, "Job id")->required();
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    v1::ListCheckpointsRequest req;
    req.set_job_id(st->job);
    v1::ListCheckpointsResponse resp;
    if (!Call(st->common, ctx, &v1::Controller::Stub::ListCheckpoints, req, &resp)) return;
    if (st->common.format == OutputFormat::kJson) {
      ctx.out << ToJsonText(resp) << "\n";
    } else if (resp.checkpoints_size() == 0) {
      ctx.out << "no checkpoints for job " << st->job << "\n";
    } else {
      std::vector<std::vector<std::string>> rows = {{"STEP", "VAL LOSS", "REASON", "SAVED", "PATH"}};
      for (const auto& c : resp.checkpoints()) {
        rows.push_back({std::to_string(c.step()), c.has_val_loss() ? Fixed(c.val_loss(), 4) : "-", c.reason(),
                        TimeOf(c.time_unix_ms()), c.path()});
      }
      ctx.out << RenderTable(rows);
    }
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ nodes
void AddNodes(CLI::App& app, CliContext& ctx) {
  auto common = std::make_shared<Common>();
  CLI::App* verb = app.add_subcommand("nodes", "The controller's hosts: agents (slots in use, last heartbeat), Slurm nodes");
  common->Add(*verb);
  verb->callback([common, &ctx] {
    auto stub = common->Stub();
    v1::ListNodesResponse resp;
    if (!Call(*common, ctx, &v1::Controller::Stub::ListNodes, v1::ListNodesRequest{}, &resp)) return;
    if (common->format == OutputFormat::kJson) {
      ctx.out << ToJsonText(resp) << "\n";
    } else if (resp.nodes_size() == 0) {
      ctx.out << "allocator " << resp.allocator() << ": no nodes"
              << (resp.allocator() == "static" ? " (no dsv3-agent has joined yet)" : "") << "\n";
    } else {
      std::vector<std::vector<std::string>> rows = {{"NODE", "ADDRESS", "STATE", "SLOTS", "USED", "HEARTBEAT", "JOBS"}};
      const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch()).count();
      for (const auto& n : resp.nodes()) {
        std::string jobs;
        for (int64_t id : n.job_ids()) jobs += (jobs.empty() ? "" : ",") + std::to_string(id);
        const int64_t hb = n.last_heartbeat_unix_ms();
        rows.push_back({n.name(), n.address(), n.state(), std::to_string(n.slots()), std::to_string(n.slots_used()),
                        hb == 0 ? "-" : Fixed((now - hb) / 1000.0, 1) + " s ago", jobs.empty() ? "-" : jobs});
      }
      ctx.out << "allocator " << resp.allocator() << "\n" << RenderTable(rows);
    }
    ctx.exit_code = kExitOk;
  });
}

std::string CallerText(const v1::WhoAmIResponse& w) {
  if (w.trusted_local()) return w.user() + " (trusted: a loopback controller without users)";
  return w.user() + (w.admin() ? " (admin)" : "");
}

void AddLoginAndWhoAmI(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
  };
  auto st = std::make_shared<State>();
  CLI::App* login = app.add_subcommand(
      "login", "Save a controller's address, TLS settings and your token (read from stdin without --token)");
  st->common.Add(*login);
  login->callback([st, &ctx] {
    Common& c = st->common;
    if (c.connection.token.empty()) {
      std::string line;
      while (std::getline(std::cin, line)) {
        line.erase(0, line.find_first_not_of(" \t\r"));
        line.erase(line.find_last_not_of(" \t\r") + 1);
        if (!line.empty()) break;
      }
      if (line.empty()) throw CLI::ValidationError("--token", "no token given (pass --token or pipe it on stdin)");
      c.connection.token = line;
    }
    v1::WhoAmIResponse who;
    if (!Call(c, ctx, &v1::Controller::Stub::WhoAmI, v1::WhoAmIRequest(), &who)) return;
    SavedLogin saved;
    saved.controller = c.Address();
    saved.token = c.Conn().token;
    saved.tls = c.Conn().tls;
    const char* env_ca = std::getenv(env::kTlsCa);
    const std::string ca = !c.connection.tls_ca.empty() ? c.connection.tls_ca : env_ca != nullptr ? env_ca : "";
    if (!ca.empty()) {
      saved.tls_ca = std::filesystem::absolute(ca).string();
    } else if (const auto previous = LoadLogin(saved.controller)) {
      saved.tls_ca = previous->tls_ca;  // a new token for a controller already set up
    }
    if (absl::Status s = SaveLogin(saved); !s.ok()) {
      ctx.err << "dsv3ctl: " << s.message() << "\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    ctx.out << "logged in to " << saved.controller << " as " << CallerText(who) << "; saved in " << CredentialsPath()
            << "\n";
    ctx.exit_code = kExitOk;
  });

  auto who_st = std::make_shared<State>();
  CLI::App* whoami = app.add_subcommand("whoami", "Who the controller takes you for");
  who_st->common.Add(*whoami);
  whoami->callback([who_st, &ctx] {
    v1::WhoAmIResponse who;
    if (!Call(who_st->common, ctx, &v1::Controller::Stub::WhoAmI, v1::WhoAmIRequest(), &who)) return;
    if (who_st->common.format == OutputFormat::kJson) {
      ctx.out << ToJsonText(who) << "\n";
    } else {
      ctx.out << CallerText(who) << " at " << who_st->common.Address() << "\n";
    }
    ctx.exit_code = kExitOk;
  });
}

}  // namespace

void AddJobCommands(CLI::App& app, CliContext& ctx) {
  AddLoginAndWhoAmI(app, ctx);
  AddNodes(app, ctx);
  AddSubmit(app, ctx);
  AddStatusAndList(app, ctx);
  AddLogs(app, ctx);
  AddCancel(app, ctx);
  AddMetrics(app, ctx);
  AddCheckpoints(app, ctx);
}

}  // namespace dsv3::cli
