// dsv3d: the dsv3 controller. Flags, or a TOML file with the same keys (--config), then
// run until SIGTERM/SIGINT. Exits non-zero with the reason when it cannot start cleanly.
#include <signal.h>

#include <functional>
#include <iostream>

#include <CLI/CLI.hpp>

#include "admin.h"
#include "cli_docs.h"
#include "dsv3/common/build_info.h"
#include "dsv3/procs/log.h"
#include "daemon.h"

namespace {

// `dsv3d user|token|agent ...`: administration against a state dir, then exit.
void AddAdminCommands(CLI::App& app, std::function<void(absl::StatusOr<std::string>)>& run_admin,
                      std::string& state_dir) {
  namespace s = dsv3::server;
  auto state = [&](CLI::App* c) {
    c->add_option("--state-dir", state_dir, "The state dir of the dsv3d whose users these are")->capture_default_str();
  };
  static std::string name, label, which;
  static bool admin = false;
  static int max_jobs = 0, max_slots = 0;
  CLI::App* user = app.add_subcommand("user", "Users of a shared controller (run on the controller host)");
  user->require_subcommand(1);
  CLI::App* add = user->add_subcommand("add", "Add a user; once one exists, every call needs a token");
  add->add_option("NAME", name, "User name")->required();
  add->add_flag("--admin", admin, "May see and control every user's jobs");
  add->add_option("--max-jobs", max_jobs, "Jobs not yet ended at once (0 = the daemon's --max-jobs-per-user)");
  add->add_option("--max-slots", max_slots, "Ranks of those jobs together (0 = the daemon's --max-slots-per-user)");
  state(add);
  add->callback([&] { run_admin(s::AdminAddUser(state_dir, name, admin, max_jobs, max_slots)); });
  CLI::App* list = user->add_subcommand("list", "List the users");
  state(list);
  list->callback([&] { run_admin(s::AdminListUsers(state_dir)); });

  CLI::App* token = app.add_subcommand("token", "Bearer tokens of users (stored only as hashes)");
  token->require_subcommand(1);
  CLI::App* create = token->add_subcommand("create", "Issue a token for a user; it is the last word printed");
  create->add_option("NAME", name, "User name")->required();
  create->add_option("--label", label, "A note shown by `token list` (e.g. laptop)");
  state(create);
  create->callback([&] { run_admin(s::AdminCreateToken(state_dir, name, label)); });
  CLI::App* revoke = token->add_subcommand("revoke", "Revoke a token (or an agent's credential) at once");
  revoke->add_option("ID_OR_TOKEN", which, "An id from `dsv3d token list`, or the token itself")->required();
  state(revoke);
  revoke->callback([&] { run_admin(s::AdminRevokeToken(state_dir, which)); });
  CLI::App* tlist = token->add_subcommand("list", "List tokens and agent credentials (never the secrets)");
  state(tlist);
  tlist->callback([&] { run_admin(s::AdminListTokens(state_dir)); });

  CLI::App* agent = app.add_subcommand("agent", "Credentials of dsv3-agent hosts (static allocator)");
  agent->require_subcommand(1);
  CLI::App* aadd = agent->add_subcommand("add", "Issue the credential of the agent NAME; it is the last word printed");
  aadd->add_option("NAME", name, "The agent's --name")->required();
  state(aadd);
  aadd->callback([&] { run_admin(s::AdminAddAgent(state_dir, name)); });
}

}  // namespace

int main(int argc, char** argv) {
  dsv3::server::DaemonOptions o;
  CLI::App app{"dsv3d: the dsv3 controller (job queue, store, supervision, metrics)", "dsv3d"};
  app.set_config("--config", "", "TOML file with any of these options as keys (listen = \"0.0.0.0:50051\")");
  app.add_option("--listen", o.listen, "gRPC address HOST:PORT")->capture_default_str();
  app.add_option("--http-listen", o.http_listen, "HTTP address for /metrics, /healthz, the web dashboard and /api/v1")
      ->capture_default_str();
  app.add_option("--state-dir", o.state_dir, "Job store (dsv3.db) and job folders")->capture_default_str();
  app.add_option("--allocator", o.allocator,
                 "Where ranks run: local (this machine), static (hosts running dsv3-agent), slurm (sbatch/srun)")
      ->capture_default_str();
  app.add_option("--slots", o.slots, "Ranks that may run at once on this machine (0 = one per CPU core)")
      ->capture_default_str();
  app.add_option("--hosts", o.hosts_file, "static: the agents that may join, one per line: NAME [slots=N]");
  app.add_option("--advertise", o.advertise,
                 "Host name or address ranks on other hosts dial to report (default: the --listen host)");
  app.add_option("--slurm-poll", o.slurm_poll_s, "Seconds between squeue polls of Slurm jobs")->capture_default_str();
  app.add_option("--worker", o.worker_path, "dsv3-worker binary (default: next to dsv3d)");
  app.add_option("--work-dir", o.work_dir,
                 "Where relative input paths of remote clients resolve (default: the current folder)");
  app.add_option("--tls-cert", o.tls_cert, "PEM certificate (chain) to serve gRPC over TLS");
  app.add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", o.tls_client_ca,
                 "PEM CA: dsv3ctl calls must present a client certificate it signed (mTLS)");
  app.add_option("--tls-ca", o.tls_ca, "PEM CA that signed --tls-cert, for ranks and agents (default: --tls-cert)");
  app.add_flag("--http-tls", o.http_tls,
               "Serve the HTTP port (metrics, dashboard, API) over HTTPS with --tls-cert/--tls-key");
  app.add_option("--chartjs", o.chartjs, "Chart.js file the dashboard draws its curves with (Debian's libjs-chart.js)")
      ->capture_default_str();
  app.add_flag("--insecure", o.insecure, "Allow plaintext gRPC on a non-loopback --listen (warned at every start)");
  app.add_option("--work-root", o.work_root,
                 "Users' folders <work-root>/<user>: their jobs write and read only there (default: <state-dir>/work)");
  app.add_option("--read-root", o.read_roots, "A folder of shared inputs every user's jobs may read (repeatable)");
  app.add_option("--max-jobs-per-user", o.max_jobs_per_user, "Jobs not yet ended per user (0 = no limit)")
      ->capture_default_str();
  app.add_option("--max-slots-per-user", o.max_slots_per_user, "Ranks of those jobs per user (0 = no limit)")
      ->capture_default_str();
  app.add_option("--max-config-bytes", o.max_config_bytes, "Largest config a submit may carry")->capture_default_str();
  app.add_option("--max-log-lines", o.max_log_lines, "Most log lines one logs request may ask for")
      ->capture_default_str();
  app.add_option("--http-timeout", o.http_timeout_s, "Seconds an HTTP client has to send its whole request")
      ->capture_default_str();
  app.add_option("--heartbeat-interval", o.heartbeat_interval_s, "Seconds between rank heartbeats")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", o.heartbeat_timeout_s,
                 "Seconds without a heartbeat before a rank's attempt fails")
      ->capture_default_str();
  app.add_option("--startup-timeout", o.startup_timeout_s, "Seconds a rank may take to register")
      ->capture_default_str();
  app.add_option("--grace-period", o.grace_period_s, "Seconds between SIGTERM and SIGKILL on cancel")
      ->capture_default_str();
  app.add_option("--metrics-retention", o.metrics_retention_h,
                 "Hours after a job ends before its metric points are pruned to each series' last value "
                 "(0 = keep every point)")
      ->capture_default_str();
  app.add_option("--max-rank-log-bytes", o.max_rank_log_bytes,
                 "Local ranks' logs past this size move to <log>.1 and start over (0 = no cap)")
      ->capture_default_str();
  std::string log_level = "info", log_format = "text";
  app.add_option("--log-level", log_level, std::string("Least severe messages logged: ") + dsv3::log::kLevels)
      ->capture_default_str();
  app.add_option("--log-format", log_format,
                 "text (one line per message; under systemd with journald priorities) or json (one object per line)")
      ->capture_default_str();
  int admin_exit = -1;
  std::function<void(absl::StatusOr<std::string>)> run_admin = [&](absl::StatusOr<std::string> r) {
    if (r.ok()) {
      std::cout << *r << std::flush;
      admin_exit = 0;
    } else {
      std::cerr << "dsv3d: " << r.status().message() << std::endl;
      admin_exit = 1;
    }
  };
  AddAdminCommands(app, run_admin, o.state_dir);
  app.set_version_flag("--version", dsv3::VersionLine("dsv3d"),
                       "Print the version, the commit and the build's options");
  app.add_flag_callback("--man", [&app] {
       std::cout << dsv3::cli::ManPage(app, dsv3::GetBuildInfo().version,
                                       "0 after a clean shutdown (SIGTERM, SIGINT) or an administration command; "
                                       "1 when it cannot start (the reason is printed) or a command fails; 2 a bad "
                                       "command line.");
       throw CLI::Success();
     })
      ->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (admin_exit >= 0) return admin_exit;
  if (const std::string problem = dsv3::log::Setup("dsv3d", log_level, log_format); !problem.empty()) {
    std::cerr << "dsv3d: " << problem << std::endl;
    return 2;
  }

  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto daemon = dsv3::server::Daemon::Start(o);
  if (!daemon.ok()) {
    std::cerr << "dsv3d: cannot start: " << daemon.status().message() << std::endl;
    return 1;
  }
  for (const auto& w : (*daemon)->Warnings()) dsv3::log::Warning(w);
  dsv3::log::Info("ready: " + (*daemon)->Summary());
  int sig = 0;
  sigwait(&stop_signals, &sig);
  dsv3::log::Info(std::string(strsignal(sig)) + ": shutting down (running ranks keep running)");
  (*daemon)->Shutdown();
  dsv3::log::Info("stopped");
  return 0;
}
