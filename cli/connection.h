// How dsv3ctl reaches a controller: the address, TLS (a CA file, the system store, a client
// certificate for mTLS) and the user's bearer token, from flags, the environment
// (DSV3_CONTROLLER, DSV3_TLS_CA, DSV3_TOKEN) or what `dsv3ctl login` saved in
// $XDG_CONFIG_HOME/dsv3/credentials.json (else ~/.config/dsv3), in that order.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace dsv3::cli {

struct ConnectionFlags {
  std::string controller, token, tls_ca, tls_cert, tls_key;
  bool tls = false;
  void Add(CLI::App& verb);
};

struct Connection {
  std::string address;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string token;  // "" = none (a loopback controller without users trusts its host)
  bool tls = false;
};

// What `dsv3ctl login` keeps per controller address.
struct SavedLogin {
  std::string controller, token, tls_ca;
  bool tls = false;
};

// Resolves flags, environment and saved logins; fails naming a file that cannot be read.
absl::StatusOr<Connection> Connect(const ConnectionFlags& flags);
// Adds the token, when there is one, as `authorization: Bearer ...` metadata.
void Authorize(grpc::ClientContext& rpc, const Connection& c);

std::string CredentialsPath();
std::optional<SavedLogin> LoadLogin(const std::string& controller);  // nullopt: none saved
std::optional<SavedLogin> LoadDefaultLogin();                        // the last login
// Saves (replacing one for the same address) and makes it the default; the file is 0600.
absl::Status SaveLogin(const SavedLogin& login);

}  // namespace dsv3::cli
