#include "rpc/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <grpcpp/security/server_credentials.h>

#include "dsv3/procs/client_tls.h"

namespace dsv3::server {
namespace {

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "not PEM";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioFree> Bio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerTls(const TlsFiles& files) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together (a certificate and its private key)");
  }
  auto cert = procs::ReadPemFile("--tls-cert", files.cert);
  if (!cert.ok()) return cert.status();
  auto key = procs::ReadPemFile("--tls-key", files.key);
  if (!key.ok()) return key.status();
  std::unique_ptr<X509, X509Free> x509(PEM_read_bio_X509(Bio(*cert).get(), nullptr, nullptr, nullptr));
  if (!x509) return absl::InvalidArgumentError("--tls-cert: " + files.cert + ": " + OpenSslError());
  std::unique_ptr<EVP_PKEY, KeyFree> pkey(PEM_read_bio_PrivateKey(Bio(*key).get(), nullptr, nullptr, nullptr));
  if (!pkey) return absl::InvalidArgumentError("--tls-key: " + files.key + ": " + OpenSslError());
  if (X509_check_private_key(x509.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("--tls-key: " + files.key + " is not the private key of --tls-cert " + files.cert);
  }
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!files.client_ca.empty()) {
    auto ca = procs::ReadPemFile("--tls-client-ca", files.client_ca);
    if (!ca.ok()) return ca.status();
    std::unique_ptr<X509, X509Free> ca_x509(PEM_read_bio_X509(Bio(*ca).get(), nullptr, nullptr, nullptr));
    if (!ca_x509) return absl::InvalidArgumentError("--tls-client-ca: " + files.client_ca + ": " + OpenSslError());
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace dsv3::server
