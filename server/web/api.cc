#include "web/api.h"

#include <chrono>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>
#include <nlohmann/json.hpp>

#include "rpc/auth.h"
#include "web/request_parts.h"

namespace dsv3::server::web {
namespace {

using nlohmann::json;

constexpr auto kCallDeadline = std::chrono::seconds(10);
constexpr const char* kJson = "application/json";

// Seven days: a browser stays logged in for a working week; the token itself lasts until revoked.
constexpr int kCookieSeconds = 7 * 24 * 3600;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    default: return "INTERNAL";
  }
}

HttpResponse JsonResponse(int status, std::string body) {
  HttpResponse r{status, kJson, std::move(body), {}};
  r.headers.emplace_back("Cache-Control", "no-store");
  return r;
}

HttpResponse Error(int status, const std::string& code, const std::string& message) {
  return JsonResponse(status, json{{"code", code}, {"error", message}}.dump() + "\n");
}

HttpResponse Error(const grpc::Status& s) {
  return Error(HttpStatusFor(s.error_code()), CodeName(s.error_code()), s.error_message());
}

HttpResponse Error(const absl::Status& s) {
  const auto code = static_cast<grpc::StatusCode>(s.code());
  return Error(HttpStatusFor(code), CodeName(code), std::string(s.message()));
}

// A message in protobuf's JSON mapping, with zero values printed (a table wants every column).
HttpResponse Message(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(m, &text, o).ok()) {
    return Error(500, "INTERNAL", "cannot map the reply to JSON");
  }
  return JsonResponse(200, text + "\n");
}

HttpResponse Reply(const grpc::Status& s, const google::protobuf::Message& m) { return s.ok() ? Message(m) : Error(s); }

// Job states by the names people type: RUNNING, running or JOB_STATE_RUNNING.
absl::StatusOr<v1::JobState> StateNamed(std::string name) {
  for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (name.rfind("JOB_STATE_", 0) != 0) name = "JOB_STATE_" + name;
  v1::JobState s{};
  if (!v1::JobState_Parse(name, &s) || s == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError("query parameter 'state': '" + name +
                                      "' is not a job state (QUEUED, STARTING, RUNNING, RESTARTING, COMPLETED, "
                                      "FAILED, CANCELED)");
  }
  return s;
}

std::string Last(const Query& q, const std::string& name) {
  auto it = q.find(name);
  return it == q.end() || it->second.empty() ? "" : it->second.back();
}

std::string Cookie(const std::string& value, int max_age, bool secure) {
  return std::string(kTokenCookie) + "=" + value + "; Path=/; HttpOnly; SameSite=Strict; Max-Age=" +
         std::to_string(max_age) + (secure ? "; Secure" : "");
}

}  // namespace

int HttpStatusFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: return 400;
    case grpc::StatusCode::UNAUTHENTICATED: return 401;
    case grpc::StatusCode::PERMISSION_DENIED: return 403;
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED: return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 429;
    case grpc::StatusCode::UNIMPLEMENTED: return 501;
    case grpc::StatusCode::UNAVAILABLE: return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return 504;
    default: return 500;
  }
}

Api::Api(std::shared_ptr<grpc::Channel> controller, const WebOptions& options)
    : stub_(v1::Controller::NewStub(std::move(controller))), options_(options) {}

HttpResponse Api::Handle(const HttpRequest& request) const {
  const std::string path = PathOf(request.target);
  // A browser sends a custom header only when our own script asks it to, never for a form or
  // a link on another site: POSTs without it are refused (CSRF).
  if (request.method == "POST" && request.csrf.empty()) {
    return Error(403, "PERMISSION_DENIED", "a POST to /api/v1 needs the header X-Dsv3-Request: 1");
  }
  if (request.method == "POST" && path == "/api/v1/login") return Login(request);
  if (request.method == "POST" && path == "/api/v1/logout") {
    HttpResponse r = JsonResponse(200, "{}\n");
    r.headers.emplace_back("Set-Cookie", Cookie("", 0, options_.https));
    return r;
  }
  auto token = TokenOf(request.authorization, request.cookie);
  if (!token.ok()) return Error(token.status());
  if (!token->has_value() && !options_.pass_untokened) {
    return Error(401, "UNAUTHENTICATED",
                 "no token: log in at /login, or send 'Authorization: Bearer TOKEN' (a token from `dsv3d token "
                 "create NAME` on the controller host)");
  }
  grpc::ClientContext ctx;
  Prepare(ctx, *token);
  return request.method == "POST" ? Post(path, request, ctx) : Get(path, request, ctx);
}

void Api::Prepare(grpc::ClientContext& ctx, const std::optional<std::string>& token) const {
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  if (token) ctx.AddMetadata("authorization", "Bearer " + *token);
  if (!options_.in_process_secret.empty()) ctx.AddMetadata(Authenticator::kInProcessKey, options_.in_process_secret);
}

HttpResponse Api::Login(const HttpRequest& request) const {
  const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object() || !body.contains("token") || !body["token"].is_string()) {
    return Error(400, "INVALID_ARGUMENT", "the body must be {\"token\": \"...\"}");
  }
  const std::string given = body["token"];
  auto token = TokenOf("Bearer " + given, "");
  if (!token.ok()) return Error(token.status());
  if (!token->has_value()) return Error(400, "INVALID_ARGUMENT", "the token is empty");
  grpc::ClientContext ctx;
  Prepare(ctx, *token);
  v1::WhoAmIResponse who;
  const grpc::Status s = stub_->WhoAmI(&ctx, v1::WhoAmIRequest(), &who);
  if (!s.ok()) return Error(s);
  HttpResponse r = Message(who);
  r.headers.emplace_back("Set-Cookie", Cookie(**token, kCookieSeconds, options_.https));
  return r;
}

HttpResponse Api::Get(const std::string& path, const HttpRequest& request, grpc::ClientContext& ctx) const {
  const Query q = ParseQuery(request.target);
  if (path == "/api/v1/whoami") {
    v1::WhoAmIResponse resp;
    return Reply(stub_->WhoAmI(&ctx, v1::WhoAmIRequest(), &resp), resp);
  }
  if (path == "/api/v1/nodes") {
    v1::ListNodesResponse resp;
    return Reply(stub_->ListNodes(&ctx, v1::ListNodesRequest(), &resp), resp);
  }
  if (path == "/api/v1/jobs") {
    v1::ListJobsRequest req;
    if (auto it = q.find("state"); it != q.end()) {
      for (const auto& name : it->second) {
        auto s = StateNamed(name);
        if (!s.ok()) return Error(s.status());
        req.add_states(*s);
      }
    }
    req.set_owner(Last(q, "owner"));
    req.set_name_contains(Last(q, "name"));
    auto limit = IntParam(q, "limit", 100, 1, 10000);
    if (!limit.ok()) return Error(limit.status());
    req.set_limit(static_cast<int32_t>(*limit));
    v1::ListJobsResponse resp;
    return Reply(stub_->ListJobs(&ctx, req, &resp), resp);
  }
  const auto job = ParseJobPath(path, "/api/v1/jobs/");
  if (!job) return Error(404, "NOT_FOUND", "no such API path: " + path + " (see /api/v1/ in the README)");
  if (job->rest.empty()) {
    v1::GetJobRequest req;
    req.set_job_id(job->id);
    req.set_include_config(true);
    v1::Job resp;
    return Reply(stub_->GetJob(&ctx, req, &resp), resp);
  }
  if (job->rest == "metrics") {
    v1::GetMetricsRequest req;
    req.set_job_id(job->id);
    if (auto it = q.find("name"); it != q.end()) {
      for (const auto& n : it->second) req.add_names(n);
    }
    auto since = IntParam(q, "since_step", -1, -1, INT64_MAX);
    if (!since.ok()) return Error(since.status());
    auto max_points = IntParam(q, "max_points", 0, 0, 100000);
    if (!max_points.ok()) return Error(max_points.status());
    req.set_since_step(*since);
    req.set_max_points(static_cast<int32_t>(*max_points));
    v1::GetMetricsResponse resp;
    return Reply(stub_->GetMetrics(&ctx, req, &resp), resp);
  }
  if (job->rest == "checkpoints") {
    v1::ListCheckpointsRequest req;
    req.set_job_id(job->id);
    v1::ListCheckpointsResponse resp;
    return Reply(stub_->ListCheckpoints(&ctx, req, &resp), resp);
  }
  if (job->rest == "logs") {
    v1::StreamLogsRequest req;
    req.set_job_id(job->id);
    auto tail = IntParam(q, "tail", 200, 1, 10000);
    if (!tail.ok()) return Error(tail.status());
    req.set_tail_lines(static_cast<int32_t>(*tail));
    auto since = IntParam(q, "since_unix_ms", 0, 0, INT64_MAX);
    if (!since.ok()) return Error(since.status());
    req.set_since_unix_ms(*since);
    if (q.count("rank") != 0) {
      auto rank = IntParam(q, "rank", 0, 0, INT32_MAX);
      if (!rank.ok()) return Error(rank.status());
      req.set_rank(static_cast<int32_t>(*rank));
    }
    // One snapshot of the tail (no follow): the page polls for more.
    auto reader = stub_->StreamLogs(&ctx, req);
    v1::LogChunk all, chunk;
    while (reader->Read(&chunk)) all.mutable_lines()->MergeFrom(chunk.lines());
    return Reply(reader->Finish(), all);
  }
  return Error(404, "NOT_FOUND", "no such API path: " + path);
}

HttpResponse Api::Post(const std::string& path, const HttpRequest& request, grpc::ClientContext& ctx) const {
  const auto job = ParseJobPath(path, "/api/v1/jobs/");
  if (!job || job->rest != "cancel") return Error(404, "NOT_FOUND", "no such API path for POST: " + path);
  v1::CancelJobRequest req;
  req.set_job_id(job->id);
  req.set_reason("from the web dashboard");
  if (!request.body.empty()) {
    const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object() || (body.contains("reason") && !body["reason"].is_string())) {
      return Error(400, "INVALID_ARGUMENT", "the body must be empty or {\"reason\": \"...\"}");
    }
    if (body.contains("reason")) req.set_reason(body["reason"].get<std::string>());
  }
  v1::CancelJobResponse resp;
  return Reply(stub_->CancelJob(&ctx, req, &resp), resp);
}

}  // namespace dsv3::server::web
