// The web face of dsv3d on its HTTP port: the dashboard (jobs, a job, nodes, login) and the
// read-mostly JSON API under /api/v1 that feeds it.
//
// Every API request becomes a dsv3.v1.Controller call on an in-process channel that carries
// the caller's token (a bearer header or the login cookie), so the gRPC service's own
// authentication and ownership rules answer it: what a user cannot see over gRPC, they cannot
// see here. Messages are mapped with protobuf's JSON mapping.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/channel.h>

#include "http/http_types.h"

namespace dsv3::server::web {

struct WebOptions {
  // The HTTP endpoint listens on loopback only: a request without a token goes on as the
  // local caller, and the gRPC rules decide (trusted only on a loopback dsv3d without users).
  // Otherwise a request without a token is refused here.
  bool pass_untokened = false;
  bool https = false;        // the login cookie is then Secure
  // Set when the HTTPS endpoint verifies client certificates (dsv3d --tls-client-ca with
  // --http-tls): sent with every call, it tells the gRPC service that mTLS was done here
  // (Authenticator::in_process_secret). Empty otherwise, and mTLS then refuses the API.
  std::string in_process_secret;
  std::string chartjs_path;  // Chart.js (Debian's libjs-chart.js), served as /static/chart.js
};

class WebFrontend {
 public:
  // `controller`: an in-process channel to dsv3d's own gRPC server.
  WebFrontend(std::shared_ptr<grpc::Channel> controller, WebOptions options);
  ~WebFrontend();

  // The answer to a dashboard or /api/v1 request; nullopt for any other path.
  std::optional<HttpResponse> Handle(const HttpRequest& request) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::server::web
