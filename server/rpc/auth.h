// Who is calling: bearer tokens of users (checked by one server interceptor for every
// dsv3.v1.Controller call) and the rule that keeps the local quickstart two commands (a
// loopback-only dsv3d with no users trusts its caller as the local user).
//
// The interceptor authenticates once when a call's metadata arrives and records the
// outcome in a CallRegistry; handlers read it with CallRegistry::Find(ctx), which fails
// UNAUTHENTICATED for a call the interceptor refused. The worker and agent services are not
// user calls: they present the per-job and per-agent credentials the controller issued.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>

#include "absl/status/statusor.h"
#include "store/job_store.h"

namespace dsv3::server {

struct Caller {
  std::string user;
  bool admin = false;
  bool trusted_local = false;  // no token: the loopback quickstart's local user
  int max_jobs = 0, max_slots = 0;  // the user's own limits (0: the daemon's)
};

// Lowercase hex SHA-256 (what the store keeps of a token).
std::string Sha256Hex(const std::string& text);
// A fresh random token: "dsv3u_" (user) or "dsv3a_" (agent) and 48 hex digits.
std::string NewToken(const std::string& kind);

class Authenticator {
 public:
  // `trust_local`: dsv3d listens on loopback only, so with no users defined its callers are
  // this host's users. `require_client_cert`: TLS with --tls-client-ca.
  Authenticator(const JobStore& store, std::string local_user, bool trust_local, bool require_client_cert);
  // Thread-safe; reads the store (a token lookup) on each call.
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& ctx) const;
  absl::StatusOr<Caller> AuthenticateToken(const std::string& token) const;

  // The metadata by which dsv3d's own web API, on its in-process channel, says that the HTTPS
  // endpoint has already verified the browser's client certificate (mTLS): a random secret made
  // at start that never leaves the process. The caller's token is still required as usual.
  static constexpr const char* kInProcessKey = "x-dsv3-in-process";
  const std::string& in_process_secret() const { return in_process_secret_; }

 private:
  const JobStore& store_;
  const std::string local_user_;
  const bool trust_local_, require_client_cert_;
  const std::string in_process_secret_;
};

// The outcome of authentication for each call in flight. Thread-safe.
class CallRegistry {
 public:
  void Set(const grpc::ServerContextBase* ctx, absl::StatusOr<Caller> caller);
  void Erase(const grpc::ServerContextBase* ctx);
  // UNAUTHENTICATED when the interceptor refused the call or never saw it.
  absl::StatusOr<dsv3::server::Caller> Find(const grpc::ServerContextBase* ctx) const;

 private:
  mutable std::mutex mu_;
  std::map<const grpc::ServerContextBase*, absl::StatusOr<Caller>> calls_;
};

// One interceptor per call: authenticates every dsv3.v1.Controller call when its metadata
// arrives, and turns gRPC's bare INTERNAL for an unparsable request into INVALID_ARGUMENT
// that says so. Both referents outlive the server.
class AuthInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  AuthInterceptorFactory(const Authenticator& auth, CallRegistry& registry) : auth_(auth), registry_(registry) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  const Authenticator& auth_;
  CallRegistry& registry_;
};

}  // namespace dsv3::server
