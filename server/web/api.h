// The JSON API under /api/v1 (web_frontend.h says how it authenticates).
//
//   GET  /api/v1/whoami
//   GET  /api/v1/jobs?state=RUNNING&owner=U&name=S&limit=N
//   GET  /api/v1/jobs/N                      (with its resolved config)
//   GET  /api/v1/jobs/N/metrics?name=loss&name=lr&since_step=S&max_points=P
//   GET  /api/v1/jobs/N/logs?tail=200&rank=R&since_unix_ms=T
//   GET  /api/v1/jobs/N/checkpoints
//   GET  /api/v1/nodes
//   POST /api/v1/jobs/N/cancel                (header X-Dsv3-Request; body {"reason": "..."} optional)
//   POST /api/v1/login                        (header X-Dsv3-Request; body {"token": "..."}: sets the cookie)
//   POST /api/v1/logout                       (header X-Dsv3-Request: clears the cookie)
//
// Errors are {"code": "PERMISSION_DENIED", "error": "..."} with the HTTP status of the code.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/channel.h>

#include "dsv3/v1/controller.grpc.pb.h"
#include "http/http_types.h"
#include "web/web_frontend.h"

namespace dsv3::server::web {

class Api {
 public:
  Api(std::shared_ptr<grpc::Channel> controller, const WebOptions& options);
  // `request.target` starts with /api/v1/.
  HttpResponse Handle(const HttpRequest& request) const;

 private:
  HttpResponse Get(const std::string& path, const HttpRequest& request, grpc::ClientContext& ctx) const;
  HttpResponse Post(const std::string& path, const HttpRequest& request, grpc::ClientContext& ctx) const;
  HttpResponse Login(const HttpRequest& request) const;
  // A call's deadline, the caller's token and, under mTLS, the word that HTTPS checked the
  // client's certificate.
  void Prepare(grpc::ClientContext& ctx, const std::optional<std::string>& token) const;

  std::unique_ptr<v1::Controller::Stub> stub_;
  const WebOptions options_;
};

// The HTTP status for a gRPC status code (UNAUTHENTICATED 401, PERMISSION_DENIED 403, ...).
int HttpStatusFor(grpc::StatusCode code);

}  // namespace dsv3::server::web
