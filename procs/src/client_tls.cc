#include "dsv3/procs/client_tls.h"

#include <grpcpp/security/credentials.h>

namespace dsv3::procs {

bool WantsTls(const ClientTlsFiles& files) { return files.tls || !files.ca.empty() || !files.cert.empty(); }

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeClientCredentials(const ClientTlsFiles& files) {
  if (files.cert.empty() != files.key.empty()) return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  if (!WantsTls(files)) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions o;  // empty roots: the system's CA store
  if (!files.ca.empty()) {
    auto ca = ReadPemFile("--tls-ca", files.ca);
    if (!ca.ok()) return ca.status();
    o.pem_root_certs = *ca;
  }
  if (!files.cert.empty()) {
    auto cert = ReadPemFile("--tls-cert", files.cert);
    if (!cert.ok()) return cert.status();
    auto key = ReadPemFile("--tls-key", files.key);
    if (!key.ok()) return key.status();
    o.pem_cert_chain = *cert;
    o.pem_private_key = *key;
  }
  return grpc::SslCredentials(o);
}

}  // namespace dsv3::procs
