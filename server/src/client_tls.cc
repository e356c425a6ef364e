#include "dsv3/server/client_tls.h"

#include <fstream>
#include <sstream>

#include <grpcpp/security/credentials.h>

namespace dsv3::server {

absl::StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(flag + ": cannot read " + path);
  std::ostringstream text;
  text << f.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(flag + ": " + path + " is not a PEM file");
  }
  return text.str();
}

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

}  // namespace dsv3::server
