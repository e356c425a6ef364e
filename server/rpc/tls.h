// dsv3d's TLS: the gRPC server credentials from --tls-cert/--tls-key (and --tls-client-ca
// for client certificates), checked at start so a bad file stops the daemon with its name.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"

namespace dsv3::server {

struct TlsFiles {
  std::string cert, key, client_ca;  // paths; client_ca "" = no client certificates asked
};

// Parses the certificate chain and the key, checks that they belong together and that the
// client CA parses. With a client CA, clients are asked for a certificate and one that is
// presented must verify; whether one is required is the auth interceptor's decision
// (ranks and agents have controller-issued credentials instead).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerTls(const TlsFiles& files);

}  // namespace dsv3::server
