// dsv3d: the dsv3 controller. Flags, or a TOML file with the same keys (--config), then
// run until SIGTERM/SIGINT. Exits non-zero with the reason when it cannot start cleanly.
#include <signal.h>

#include <iostream>

#include <CLI/CLI.hpp>

#include "dsv3/server/daemon.h"

int main(int argc, char** argv) {
  dsv3::server::DaemonOptions o;
  CLI::App app{"dsv3d: the dsv3 controller (job queue, store, supervision, metrics)", "dsv3d"};
  app.set_config("--config", "", "TOML file with any of these options as keys (listen = \"0.0.0.0:50051\")");
  app.add_option("--listen", o.listen, "gRPC address HOST:PORT")->capture_default_str();
  app.add_option("--http-listen", o.http_listen, "HTTP address for /metrics and /healthz")->capture_default_str();
  app.add_option("--state-dir", o.state_dir, "Job store (dsv3.db) and job folders")->capture_default_str();
  app.add_option("--allocator", o.allocator,
                 "Where ranks run: local (this machine), static (hosts running dsv3-agent), slurm (sbatch/srun)")
      ->capture_default_str();
  app.add_option("--slots", o.slots, "Ranks that may run at once on this machine (0 = one per CPU core)")
      ->capture_default_str();
  app.add_option("--hosts", o.hosts_file, "static: the agents that may join, one per line: NAME [slots=N]");
  app.add_option("--agent-token-file", o.agent_token_file,
                 "static: the agents' join credential (default: <state-dir>/agent.token, created once)");
  app.add_option("--advertise", o.advertise,
                 "Host name or address ranks on other hosts dial to report (default: the --listen host)");
  app.add_option("--slurm-poll", o.slurm_poll_s, "Seconds between squeue polls of Slurm jobs")->capture_default_str();
  app.add_option("--worker", o.worker_path, "dsv3-worker binary (default: next to dsv3d)");
  app.add_option("--work-dir", o.work_dir,
                 "Where relative input paths of remote clients resolve (default: the current folder)");
  app.add_option("--heartbeat-interval", o.heartbeat_interval_s, "Seconds between rank heartbeats")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", o.heartbeat_timeout_s,
                 "Seconds without a heartbeat before a rank's attempt fails")
      ->capture_default_str();
  app.add_option("--startup-timeout", o.startup_timeout_s, "Seconds a rank may take to register")
      ->capture_default_str();
  app.add_option("--grace-period", o.grace_period_s, "Seconds between SIGTERM and SIGKILL on cancel")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
  std::cout << "dsv3d: ready: " << (*daemon)->Summary() << std::endl;
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::cout << "dsv3d: " << strsignal(sig) << ": shutting down (running ranks keep running)" << std::endl;
  (*daemon)->Shutdown();
  std::cout << "dsv3d: stopped" << std::endl;
  return 0;
}
