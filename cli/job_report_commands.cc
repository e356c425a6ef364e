// The job verbs that report rather than act: metrics, checkpoints, nodes, login and whoami.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/env.h"
#include "job_rpc.h"
#include "job_views.h"

namespace dsv3::cli {

using nlohmann::json;

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

static std::string CallerText(const v1::WhoAmIResponse& w) {
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


}  // namespace dsv3::cli
