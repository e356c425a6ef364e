#include "job_rpc.h"

#include <google/protobuf/util/json_util.h>

namespace dsv3::cli {

int ReportRpcError(const grpc::Status& s, const Common& c, CliContext& ctx) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE && s.error_message().find("andshake") != std::string::npos) {
    ctx.err << "dsv3ctl: the TLS handshake with " << c.Address() << " failed: " << s.error_message() << "\n"
            << "Check that --tls-ca (or DSV3_TLS_CA) is the CA that signed the controller's certificate, that the "
               "certificate names the host you dial, and, for a controller with --tls-client-ca, your --tls-cert.\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    if (!c.Conn().tls && s.error_message().find("Socket closed") != std::string::npos) {
      ctx.err << "dsv3ctl: the controller at " << c.Address() << " closed the connection: if it serves TLS, pass "
              << "--tls-ca FILE (or --tls for a certificate of a public CA)\n";
      return ctx.exit_code = kExitUnreachable;
    }
    ctx.err << "dsv3ctl: cannot reach the controller at " << c.Address() << ": " << s.error_message() << "\n"
            << "Start one with `dsv3d --state-dir ./var/dsv3` (build/server/dsv3d in a build tree), or point "
               "--controller / DSV3_CONTROLLER at a running one.\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    ctx.err << "dsv3ctl: the controller at " << c.Address() << " did not accept you: " << s.error_message() << "\n";
    return ctx.exit_code = kExitFailed;
  }
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    ctx.err << "dsv3ctl: the controller at " << c.Address() << " did not answer in time\n";
    return ctx.exit_code = kExitUnreachable;
  }
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && !s.error_details().empty()) {
    v1::ValidateConfigResponse details;
    if (details.ParseFromString(s.error_details())) {
      if (c.format == OutputFormat::kJson) {
        std::string text;
        (void)google::protobuf::util::MessageToJsonString(details, &text);
        ctx.out << text << "\n";
      } else {
        for (const auto& e : details.errors()) ctx.err << e.path() << ": " << e.message() << "\n";
        ctx.err << "dsv3ctl: the controller refused the job (" << details.errors_size()
                << (details.errors_size() == 1 ? " error)\n" : " errors)\n");
      }
      return ctx.exit_code = kExitFailed;
    }
  }
  ctx.err << "dsv3ctl: " << s.error_message() << "\n";
  return ctx.exit_code = kExitFailed;
}

std::optional<v1::Job> FetchJob(v1::Controller::Stub& stub, int64_t id, const Common& c, CliContext& ctx) {
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  SetDeadline(rpc);
  v1::GetJobRequest req;
  req.set_job_id(id);
  v1::Job job;
  const grpc::Status s = stub.GetJob(&rpc, req, &job);
  if (!s.ok()) {
    ReportRpcError(s, c, ctx);
    return std::nullopt;
  }
  return job;
}

grpc::Status StreamLogs(v1::Controller::Stub& stub, const Common& c, int64_t id, std::optional<int> rank, bool follow,
                        int tail, bool prefix_rank, std::ostream& os) {
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  v1::StreamLogsRequest req;
  req.set_job_id(id);
  if (rank) req.set_rank(*rank);
  req.set_follow(follow);
  req.set_tail_lines(tail);
  auto reader = stub.StreamLogs(&rpc, req);
  v1::LogChunk chunk;
  while (reader->Read(&chunk)) {
    for (const auto& l : chunk.lines()) {
      if (prefix_rank) os << "[" << l.rank() << "] ";
      os << l.text() << "\n";
    }
    os.flush();
  }
  return reader->Finish();
}

}  // namespace dsv3::cli
