// dsv3-agent's node agent, as a function its main calls: one bidirectional gRPC stream to
// dsv3d (proto/dsv3/v1/agent.proto) over which it says hello with its name, address, slots
// and its own credential (`dsv3d agent add NAME`), sends heartbeats, starts and signals ranks
// on dsv3d's command, reports their starts and exits, and ships their output line by line.
// When the stream breaks, the ranks keep running and the agent reconnects, reporting them in
// its next hello. Ranks die with the agent (a lost agent is a lost host to dsv3d).
#pragma once

#include <atomic>
#include <memory>
#include <string>

namespace grpc {
class ChannelCredentials;
}

namespace dsv3::agent {

struct AgentOptions {
  std::string controller;  // dsv3d's gRPC address, HOST:PORT
  std::string name;        // this host among the controller's agents
  int slots = 1;           // ranks it may run at once
  std::string advertise;   // the address other hosts reach this one at (MASTER_ADDR)
  std::string token;       // its credential
  std::string work_dir;    // where rank output is spooled (<work_dir>/logs)
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string rank_ca;     // the CA its ranks verify a TLS controller with ("" = plaintext)
  int64_t max_rank_log_bytes = 0;  // each rank log's cap (procs::RankProcesses::SetLogCap)
};

// Connects, serves and reconnects until `stop` turns true (then kills its ranks), or until
// the controller refuses it. Returns the process's exit status: 0, or 1 when refused.
int RunAgent(AgentOptions options, const std::atomic<bool>& stop);

}  // namespace dsv3::agent
