// Channel credentials of a client of dsv3d (dsv3ctl, dsv3-agent) from PEM files: plaintext
// when nothing is named, else TLS verified against a CA file or the system's CA store, with
// an optional client certificate for a controller that asks for one (--tls-client-ca).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>

#include "absl/status/statusor.h"
#include "dsv3/procs/pem.h"

namespace dsv3::procs {

struct ClientTlsFiles {
  std::string ca;          // PEM CA that verifies the controller ("" = the system store)
  std::string cert, key;   // PEM client certificate and key (both or neither)
  bool tls = false;        // TLS even without files (a certificate from a public CA)
};

// Whether these settings ask for TLS at all.
bool WantsTls(const ClientTlsFiles& files);

// Reads the files; an error names the flag (--tls-ca, --tls-cert, --tls-key) and the path.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeClientCredentials(const ClientTlsFiles& files);

}  // namespace dsv3::procs
