// A small HTTP/1.1 server (Boost.Beast, optionally over TLS) on its own port and thread: /metrics,
// /healthz, the web dashboard and /api/v1. Requests are bounded (HttpLimits: 8 KiB of headers,
// 4 KiB of body, 10 s to send a request, 64 connections), so a slow or hostile client cannot
// hold the endpoint.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "http/http_types.h"

namespace dsv3::server {

class HttpServer {
 public:
  virtual ~HttpServer() = default;
  virtual int port() const = 0;  // the bound port (useful with port 0)
  virtual void Stop() = 0;       // closes the listener and every connection; joins the thread
};

// HTTPS with dsv3d's gRPC certificate (dsv3d --http-tls).
struct HttpTls {
  std::string cert, key;  // PEM paths
  std::string client_ca;  // PEM: clients must present a certificate it signed (mTLS); "" = none asked
};

// Binds `host:port` and starts serving (HTTPS when `tls` is given); fails when the address
// cannot be bound or the certificate not loaded.
absl::StatusOr<std::unique_ptr<HttpServer>> StartHttpServer(const std::string& host, int port, const HttpLimits& limits,
                                                            const std::optional<HttpTls>& tls, HttpHandler handler);

}  // namespace dsv3::server
