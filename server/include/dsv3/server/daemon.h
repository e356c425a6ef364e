// dsv3d wired together: the job store, the allocator, the JobManager, the gRPC services
// (with reflection) and the HTTP metrics endpoint. The main() only parses flags and waits
// for a signal.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace dsv3::server {

struct DaemonOptions {
  std::string listen = "127.0.0.1:50051";     // gRPC
  std::string http_listen = "127.0.0.1:9400";  // /metrics, /healthz
  std::string state_dir = "./var/dsv3";        // dsv3.db and jobs/<id>/
  std::string allocator = "local";             // local | static | slurm
  int slots = 0;                               // 0: the number of CPU cores (local)
  std::string hosts_file;                      // static: the agents allowed to join ("" = any with the token)
  std::string agent_token_file;                // static: "" = <state-dir>/agent.token, created once
  std::string advertise;                       // HOST ranks and agents on other hosts dial ("" = the listen host)
  double slurm_poll_s = 1;                     // seconds between squeue polls
  std::string worker_path;                     // "": dsv3-worker next to dsv3d
  std::string work_dir;                        // "": the current folder; base of remote clients' relative inputs
  double heartbeat_interval_s = 2;
  double heartbeat_timeout_s = 60;
  double startup_timeout_s = 600;
  double grace_period_s = 60;
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

  // Graceful: stops accepting, ends log follows, waits up to 5 s for calls in flight and
  // stops supervising. Ranks keep running; a restarted dsv3d adopts them.
  void Shutdown();

 private:
  struct Parts;
  explicit Daemon(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> p_;
};

}  // namespace dsv3::server
