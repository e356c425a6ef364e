// The `static` allocator: a fixed list of hosts, each running `dsv3-agent`, which connects
// to dsv3d over one bidirectional gRPC stream (proto/dsv3/v1/agent.proto). dsv3d places a
// job's ranks on agents with free slots (fewest hosts first, a host's ranks consecutive,
// rank 0's host is MASTER_ADDR), starts and signals them through the agents, appends the log
// lines the agents ship to the ranks' logs, and treats a closed stream or missed heartbeats
// as the loss of the host and its ranks. After a dsv3d restart the agents reconnect and
// report the ranks still running.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "allocators/allocator.h"

namespace grpc {
class Service;
}

namespace dsv3::server {

struct StaticOptions {
  // Each agent's own credential (dsv3d agent add NAME): returns the agent name a presented
  // token admits, or UNAUTHENTICATED. Called on the agent's connect, from gRPC threads.
  std::function<absl::StatusOr<std::string>(const std::string& token)> agent_of_token;
  // From --hosts FILE: the agents allowed to join, each with an optional slot cap (0 = as the
  // agent says). nullopt: any agent with a credential may join.
  std::optional<std::map<std::string, int>> hosts;
  std::chrono::milliseconds heartbeat_interval{2000};
  std::chrono::milliseconds heartbeat_timeout{10000};  // also how long adopted ranks wait for their agent
};

class StaticAllocator : public Allocator {
 public:
  // The AgentControl service to register with dsv3d's gRPC server.
  virtual grpc::Service* service() = 0;
  // Ends every agent stream (dsv3d shutting down); agents keep their ranks and reconnect.
  virtual void Disconnect() = 0;
};

std::unique_ptr<StaticAllocator> MakeStaticAllocator(StaticOptions options);

// Reads a hosts file: one agent per line, "NAME [slots=N]"; '#' starts a comment.
absl::StatusOr<std::map<std::string, int>> ReadHostsFile(const std::string& path);

}  // namespace dsv3::server
