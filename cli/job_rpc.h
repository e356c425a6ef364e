// What the job verbs share to talk to dsv3d: the connection and output options every verb
// has, one unary call with the verbs' deadline, and the one place where a gRPC status
// becomes an exit code and a message (CONVENTIONS: convert once at the edge).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "config_commands.h"
#include "connection.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "output.h"

namespace dsv3::cli {

inline constexpr auto kCallDeadline = std::chrono::seconds(30);

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

inline void SetDeadline(grpc::ClientContext& ctx) { ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline); }

// The one place a gRPC status becomes an exit code and a message: sets ctx.exit_code
// (kExitUnreachable or kExitFailed), writes the message, and returns the code.
int ReportRpcError(const grpc::Status& s, const Common& c, CliContext& ctx);

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

// GetJob; nullopt (reported) when it fails.
std::optional<v1::Job> FetchJob(v1::Controller::Stub& stub, int64_t id, const Common& c, CliContext& ctx);

// What a logs stream asks for, and how its lines are printed.
struct LogRequest {
  std::optional<int> rank;   // unset: every rank
  bool follow = false;
  int tail = 0;              // 0: from the beginning
  int64_t since_unix_ms = 0; // 0: every line
  bool prefix_rank = false;  // "[r] " before each line
  bool timestamps = false;   // each line's time first (UTC, as the rank's logger wrote it)
};
v1::StreamLogsRequest ToStreamLogsRequest(int64_t id, const LogRequest& r);

// Streams logs to `os`; returns the RPC status (OK when the stream ended normally).
grpc::Status StreamLogs(v1::Controller::Stub& stub, const Common& c, int64_t id, const LogRequest& r, std::ostream& os);

// `logs --since`: "90s", "10m", "2h" or "1d" before `now_ms`, or a UTC time
// "2026-12-02T19:00:00Z" (milliseconds optional). nullopt when it is neither.
std::optional<int64_t> ParseSince(const std::string& text, int64_t now_ms);

}  // namespace dsv3::cli
