// The watchdog's verbs: `diagnose JOB` prints what dsv3d kept of a hang (the one-page
// summary and where every rank's dump is), `dump JOB` takes every rank's stacks and flight
// recorder from a running job without stopping it.
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "job_rpc.h"
#include "job_views.h"

namespace dsv3::cli {

using nlohmann::json;

void AddDiagnose(CLI::App& app, CliContext& ctx) {
  struct State {
    Common common;
    int64_t job = 0;
    int attempt = 0;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "diagnose", "Why a job hung: the watchdog's summary (which rank, phase and collective) and the ranks' dumps");
  verb->add_option("JOB", st->job, "Job id")->required();
  verb->add_option("--attempt", st->attempt, "This attempt (default: the newest with diagnostics)")
      ->check(CLI::Range(1, 1 << 30));
  st->common.Add(*verb);
  verb->callback([st, &ctx] {
    v1::GetDiagnosticsRequest req;
    req.set_job_id(st->job);
    req.set_attempt(st->attempt);
    v1::GetDiagnosticsResponse resp;
    if (!Call(st->common, ctx, &v1::Controller::Stub::GetDiagnostics, req, &resp)) return;
    if (st->common.format == OutputFormat::kJson) {
      ctx.out << ToJsonText(resp) << "\n";
      ctx.exit_code = kExitOk;
      return;
    }
    ctx.out << "job " << st->job << ", attempt " << resp.attempt();
    if (resp.attempts_size() > 1) {
      ctx.out << " (attempts with diagnostics:";
      for (int a : resp.attempts()) ctx.out << " " << a;
      ctx.out << ")";
    }
    ctx.out << "\n\n"
            << (resp.summary().empty() ? "no hang in this attempt; dumps taken on request:\n" : resp.summary());
    ctx.out << "\nfiles:\n";
    for (const auto& f : resp.files()) ctx.out << "  " << f.path() << "  (" << f.bytes() << " bytes)\n";
    ctx.exit_code = kExitOk;
  });

  auto dump = std::make_shared<State>();
  CLI::App* now = app.add_subcommand(
      "dump", "Take every rank's thread stacks and collective flight recorder from a running job, without stopping it");
  now->add_option("JOB", dump->job, "Job id")->required();
  dump->common.Add(*now);
  now->callback([dump, &ctx] {
    v1::DumpJobRequest req;
    req.set_job_id(dump->job);
    v1::DumpJobResponse resp;
    if (!Call(dump->common, ctx, &v1::Controller::Stub::DumpJob, req, &resp)) return;
    if (dump->common.format == OutputFormat::kJson) {
      ctx.out << json{{"job_id", dump->job}, {"dir", resp.dir()}}.dump() << "\n";
    } else {
      ctx.out << "job " << dump->job << ": dumps requested; each rank writes " << resp.dir()
              << "/rank_<r>.txt at its next heartbeat (a few seconds)\n";
    }
    ctx.exit_code = kExitOk;
  });
}

}  // namespace dsv3::cli
