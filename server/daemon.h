// dsv3d wired together: the job store, the allocator, the JobManager, the gRPC services
// (with reflection) and the HTTP metrics endpoint. The main() only parses flags and waits
// for a signal.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv3::server {

struct DaemonOptions {
  std::string listen = "127.0.0.1:50051";     // gRPC
  std::string http_listen = "127.0.0.1:9400";  // /metrics, /healthz, the dashboard and /api/v1
  std::string state_dir = "./var/dsv3";        // dsv3.db and jobs/<id>/
  std::string allocator = "local";             // local | static | slurm
  int slots = 0;                               // 0: the number of CPU cores (local)
  std::string hosts_file;                      // static: the agents allowed to join ("" = any with the token)
  std::string advertise;                       // HOST ranks and agents on other hosts dial ("" = the listen host)
  double slurm_poll_s = 1;                     // seconds between squeue polls
  std::string worker_path;                     // "": dsv3-worker next to dsv3d
  std::string work_dir;                        // "": the current folder; base of remote clients' relative inputs
  // Security (README "Shared controllers"). Without TLS only loopback may be listened on,
  // unless `insecure`.
  std::string tls_cert, tls_key;               // PEM: the server's certificate chain and key
  std::string tls_client_ca;                   // PEM: CA of client certificates dsv3ctl must present
  std::string tls_ca;                          // PEM ranks and agents trust ("" = tls_cert itself)
  bool insecure = false;                       // plaintext beyond loopback, warned about at every start
  bool http_tls = false;                       // the HTTP port over HTTPS with tls_cert/tls_key
  std::string chartjs = "/usr/share/javascript/chart.js/chart.min.js";  // the dashboard's charts (libjs-chart.js)
  std::string work_root;                       // users' folders <work_root>/<user> ("" = <state-dir>/work)
  std::vector<std::string> read_roots;         // shared inputs users' jobs may read
  int max_jobs_per_user = 0;                   // jobs not yet ended per user (0 = no limit)
  int max_slots_per_user = 0;                  // ranks of those jobs per user (0 = no limit)
  int64_t max_config_bytes = 4 << 20;
  int max_log_lines = 100000;                  // per StreamLogs request (tail)
  double http_timeout_s = 10;                  // a whole HTTP request must arrive within this
  double heartbeat_interval_s = 2;
  double heartbeat_timeout_s = 60;
  double startup_timeout_s = 600;
  double grace_period_s = 60;
  int metrics_retention_h = 24 * 30;           // ended jobs' metric points kept this long (0 = forever)
  int64_t max_rank_log_bytes = int64_t{1} << 30;  // local ranks' logs rotate to <log>.1 past this (0 = never)
};

class Daemon {
 public:
  // Starts everything or nothing: returns an error naming the part that failed (store,
  // migrations, a port that cannot be bound, a missing worker binary, a second dsv3d on the
  // same state dir). Blocks only while starting.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();

  int grpc_port() const;
  int http_port() const;
  std::string Summary() const;  // one line per endpoint, for the start-up log
  std::vector<std::string> Warnings() const;  // to log at every start (plaintext beyond loopback)

  // Graceful: stops accepting, ends log follows, waits up to 5 s for calls in flight and
  // stops supervising. Ranks keep running; a restarted dsv3d adopts them.
  void Shutdown();

 private:
  struct Parts;
  explicit Daemon(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> p_;
};

}  // namespace dsv3::server
