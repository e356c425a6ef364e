#include "job_commands.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/env.h"
#include "dsv3/common/hf_import.h"
#include "job_rpc.h"
#include "progress.h"
#include "job_views.h"

namespace dsv3::cli {

// The verbs that report on the cluster and the caller (job_report_commands.cc).
void AddMetrics(CLI::App& app, CliContext& ctx);
void AddCheckpoints(CLI::App& app, CliContext& ctx);
void AddDiagnose(CLI::App& app, CliContext& ctx);
void AddNodes(CLI::App& app, CliContext& ctx);
void AddLoginAndWhoAmI(CLI::App& app, CliContext& ctx);

namespace {

using nlohmann::json;

// A HF directory readable here must describe the config's model; the controller and the
// worker check again where it is elsewhere.
void CheckHfDirectory(const config::Config& c, const std::string& dir, std::vector<config::Diagnostic>& errors) {
  const std::string file = dir + "/config.json";
  std::ifstream in(file);
  if (!in) return;  // not on this host: the controller's, or the compute nodes'
  const json hf = json::parse(in, nullptr, false);
  if (hf.is_discarded()) {
    errors.push_back({"--init-from-hf", file + " is not valid JSON"});
    return;
  }
  std::vector<config::Diagnostic> problems = config::CompareWithHfConfig(c, hf);
  if (problems.empty()) return;
  for (auto& p : problems) errors.push_back(std::move(p));
  errors.push_back({"--init-from-hf", file + " describes another model; `dsv3ctl config import-hf " + file +
                                          "` writes a config whose model section matches"});
}

// ------------------------------------------------------------------ submit
void AddSubmit(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    std::string file, resume, name, init_from_hf;
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
  verb->add_option("--init-from-hf", st->init_from_hf,
                   "Start from the weights of this HuggingFace DeepSeek-V2/V3 directory (sets "
                   "checkpointing.init_from_hf; the config's model must match its config.json)");
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
    config::LoadResult loaded = config::LoadConfigFile(st->file, lo);
    if (loaded.ok() && !st->init_from_hf.empty()) {
      loaded.config.checkpointing.init_from_hf = st->init_from_hf;
      CheckHfDirectory(loaded.config, st->init_from_hf, loaded.errors);
    }
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
        StreamLogs(*stub, st->common, job.id(), LogRequest{std::nullopt, true, 0, 0, job.num_ranks() > 1, false},
                   json_out ? sink : ctx.out);
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
// The jobs table of `status`, `list` and `status --watch` ("no jobs" when there are none).
std::string JobsTable(const v1::ListJobsResponse& resp, bool color) {
  if (resp.jobs_size() == 0) return "no jobs\n";
  std::vector<std::vector<std::string>> rows = {kJobHeader};
  for (const auto& j : resp.jobs()) rows.push_back(JobRow(j, color));
  return RenderTable(rows);
}

// `status --watch`: the table (or one job) again every `seconds`, like `watch dsv3ctl status`;
// on a terminal the screen is redrawn in place. With a job id it stops when the job ends and
// exits with the job's outcome, like `submit --follow`.
void WatchStatus(Common& common, const std::optional<int64_t>& job_id, double seconds, CliContext& ctx) {
  const bool tty = &ctx.out == &std::cout && isatty(STDOUT_FILENO);
  const bool color = UseColor(ctx.out);
  auto stub = common.Stub();
  while (true) {
    std::ostringstream frame;
    std::optional<v1::Job> job;
    if (job_id) {
      CliContext quiet{frame, ctx.err};
      job = FetchJob(*stub, *job_id, common, quiet);
      if (!job) {
        ctx.exit_code = quiet.exit_code;
        return;
      }
      PrintJobDetail(*job, frame);
    } else {
      v1::ListJobsRequest req;
      req.set_limit(20);
      v1::ListJobsResponse resp;
      CliContext quiet{frame, ctx.err};
      if (!Call(common, quiet, &v1::Controller::Stub::ListJobs, req, &resp)) {
        ctx.exit_code = quiet.exit_code;
        return;
      }
      frame << JobsTable(resp, color);
    }
    const std::time_t now = std::time(nullptr);
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    if (tty) ctx.out << "\033[H\033[2J";  // home and clear: a redraw, not a scroll
    ctx.out << "every " << seconds << " s, " << when << (tty ? " (Ctrl-C to stop)" : "") << "\n"
            << frame.str() << (tty ? "" : "\n") << std::flush;
    if (job && IsTerminal(job->state())) {
      ctx.exit_code = job->state() == v1::JOB_STATE_COMPLETED ? kExitOk : kExitFailed;
      return;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  }
}

void AddStatusAndList(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    std::optional<int64_t> job;
    std::vector<std::string> states;
    std::string name;
    int limit = 0;
    bool quiet = false;
    std::optional<double> watch;  // seconds between redraws
  };
  for (const bool is_list : {false, true}) {
    auto st = std::make_shared<State>();
    CLI::App* verb =
        is_list ? app.add_subcommand("list", "List jobs, newest first")
                : app.add_subcommand("status", "Show active and recent jobs as a table, or one job in detail");
    if (!is_list) {
      verb->add_option("JOB", st->job, "Job id: show this job in detail");
      verb->add_option("--watch,-w", st->watch,
                       "Redraw every SECONDS (default 2) until interrupted, or with JOB until it ends")
          ->expected(0, 1)
          ->default_str("2")
          ->check(CLI::Range(0.1, 3600.0));
    } else {
      verb->add_option("--state", st->states, "Only jobs in these states (QUEUED, RUNNING, COMPLETED, ...)");
      verb->add_option("--name", st->name, "Only jobs whose name contains this");
      verb->add_option("--limit", st->limit, "At most this many jobs (default 100)")->check(CLI::PositiveNumber);
      verb->add_flag("-q,--quiet", st->quiet, "Only the job ids, one per line (for xargs)");
    }
    st->common.Add(*verb);
    verb->callback([st, &ctx, is_list] {
      if (st->watch) {
        WatchStatus(st->common, st->job, *st->watch, ctx);
        return;
      }
      auto stub = st->common.Stub();
      const bool json_out = st->common.format == OutputFormat::kJson;
      const bool color = UseColor(ctx.out);
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
      } else if (st->quiet) {
        for (const auto& j : resp.jobs()) ctx.out << j.id() << "\n";
      } else {
        ctx.out << JobsTable(resp, color);
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
    LogRequest request;
    std::string since;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand("logs", "Print a job's rank logs (stdout and stderr)");
  verb->add_option("JOB", st->job, "Job id")->required();
  verb->add_flag("-f,--follow", st->request.follow, "Keep printing until the job ends");
  verb->add_option("--rank", st->request.rank, "Only this rank (default: every rank, prefixed [rank])");
  verb->add_option("--tail", st->request.tail, "Start with the last N lines of each rank")
      ->check(CLI::NonNegativeNumber);
  verb->add_option("--since", st->since,
                   "Only lines written since then: a duration before now (90s, 10m, 2h, 1d) or a UTC time "
                   "(2026-12-02T19:00:00Z)");
  verb->add_flag("-t,--timestamps", st->request.timestamps,
                 "Start each line with its time (UTC; lines without a time of their own take the one before)");
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    LogRequest r = st->request;
    if (!st->since.empty()) {
      const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      const auto since = ParseSince(st->since, now);
      if (!since) {
        ctx.err << "dsv3ctl: --since: '" << st->since
                << "' is neither a duration (90s, 10m, 2h, 1d) nor a UTC time like 2026-12-02T19:00:00Z\n";
        ctx.exit_code = kExitUsage;
        return;
      }
      r.since_unix_ms = *since;
    }
    auto stub = st->common.Stub();
    auto job = FetchJob(*stub, st->job, st->common, ctx);
    if (!job) return;
    r.prefix_rank = !r.rank && job->num_ranks() > 1;
    if (st->common.format == OutputFormat::kJson) {
      grpc::ClientContext rpc;
      st->common.Prepare(rpc);
      auto reader = stub->StreamLogs(&rpc, ToStreamLogsRequest(st->job, r));
      v1::LogChunk chunk;
      while (reader->Read(&chunk)) {
        for (const auto& l : chunk.lines()) {
          ctx.out << json{{"rank", l.rank()}, {"time_unix_ms", l.time_unix_ms()}, {"text", l.text()}}.dump() << "\n";
        }
      }
      const grpc::Status s = reader->Finish();
      if (!s.ok()) {
        ReportRpcError(s, st->common, ctx);
        return;
      }
    } else {
      const grpc::Status s = StreamLogs(*stub, st->common, st->job, r, ctx.out);
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
    Progress waiting(st->wait ? ProgressStream(st->common.format == OutputFormat::kJson) : nullptr,
                     "waiting for job " + std::to_string(st->job) + " to end");
    while (st->wait && !IsTerminal(job.state())) {
      waiting.Update(0, StateName(job.state()));
      usleep(250 * 1000);
      auto j = FetchJob(*stub, st->job, st->common, ctx);
      if (!j) return;
      job = *j;
    }
    waiting.Finish();
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
  AddDiagnose(app, ctx);
}

}  // namespace dsv3::cli
