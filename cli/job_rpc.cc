#include "job_rpc.h"

#include <chrono>
#include <regex>

#include <google/protobuf/util/json_util.h>

#include "dsv3/common/message_log.h"

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

v1::StreamLogsRequest ToStreamLogsRequest(int64_t id, const LogRequest& r) {
  v1::StreamLogsRequest req;
  req.set_job_id(id);
  if (r.rank) req.set_rank(*r.rank);
  req.set_follow(r.follow);
  req.set_tail_lines(r.tail);
  req.set_since_unix_ms(r.since_unix_ms);
  return req;
}

grpc::Status StreamLogs(v1::Controller::Stub& stub, const Common& c, int64_t id, const LogRequest& r, std::ostream& os) {
  grpc::ClientContext rpc;
  c.Prepare(rpc);
  auto reader = stub.StreamLogs(&rpc, ToStreamLogsRequest(id, r));
  v1::LogChunk chunk;
  while (reader->Read(&chunk)) {
    for (const auto& l : chunk.lines()) {
      if (r.timestamps) {
        os << (l.time_unix_ms() > 0 ? msg::LogStamp(std::chrono::system_clock::time_point(
                                          std::chrono::milliseconds(l.time_unix_ms())))
                                    : std::string(24, '-'))
           << " ";
      }
      if (r.prefix_rank) os << "[" << l.rank() << "] ";
      os << l.text() << "\n";
    }
    os.flush();
  }
  return reader->Finish();
}

std::optional<int64_t> ParseSince(const std::string& text, int64_t now_ms) {
  static const std::regex duration(R"(^(\d{1,9})([smhd])$)");
  std::smatch m;
  if (std::regex_match(text, m, duration)) {
    const int64_t unit = m[2] == "s" ? 1000 : m[2] == "m" ? 60000 : m[2] == "h" ? 3600000 : 86400000;
    return now_ms - std::stoll(m[1]) * unit;
  }
  // The stamp form ranks write, with the milliseconds made optional.
  std::string stamp = text;
  if (stamp.size() == 20 && stamp.back() == 'Z') stamp.insert(19, ".000");
  const msg::StampedLine parsed = msg::SplitLogStamp(stamp + " ");
  if (stamp.size() == 24 && parsed.unix_ms) return *parsed.unix_ms;
  return std::nullopt;
}

}  // namespace dsv3::cli
