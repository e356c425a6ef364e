#include "rpc/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cstdio>

#include "dsv3/procs/host.h"

namespace dsv3::server {
namespace {

constexpr const char* kControllerPrefix = "/dsv3.v1.Controller/";
constexpr const char* kBearer = "Bearer ";

std::string HowToGetAToken() {
  return "log in with `dsv3ctl login --controller HOST:PORT` (a token from `dsv3d token create NAME` on the "
         "controller host) or set DSV3_TOKEN";
}

class AuthInterceptor final : public grpc::experimental::Interceptor {
 public:
  AuthInterceptor(const Authenticator& auth, CallRegistry& registry, const grpc::ServerContextBase* ctx)
      : auth_(auth), registry_(registry), ctx_(ctx) {}
  ~AuthInterceptor() override { registry_.Erase(ctx_); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      registry_.Set(ctx_, auth_.Authenticate(*ctx_));
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      // gRPC answers a request it cannot parse with a bare INTERNAL before any handler runs;
      // every handler of ours names its failures, so an empty INTERNAL is that case.
      const grpc::Status sent = methods->GetSendStatus();
      if (sent.error_code() == grpc::StatusCode::INTERNAL && sent.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            "the request is not a valid message of this method (malformed protobuf, or a string field that is not "
            "UTF-8)"));
      }
    }
    methods->Proceed();
  }

 private:
  const Authenticator& auth_;
  CallRegistry& registry_;
  const grpc::ServerContextBase* ctx_;
};

}  // namespace

std::string Sha256Hex(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string out;
  char buf[3];
  for (unsigned char b : digest) {
    std::snprintf(buf, sizeof(buf), "%02x", b);
    out += buf;
  }
  return out;
}

std::string NewToken(const std::string& kind) { return (kind == "agent" ? "dsv3a_" : "dsv3u_") + procs::RandomHex(24); }

Authenticator::Authenticator(const JobStore& store, std::string local_user, bool trust_local, bool require_client_cert)
    : store_(store),
      local_user_(std::move(local_user)),
      trust_local_(trust_local),
      require_client_cert_(require_client_cert),
      in_process_secret_(procs::RandomHex(32)) {}

absl::StatusOr<Caller> Authenticator::AuthenticateToken(const std::string& token) const {
  const auto rec = store_.FindToken(Sha256Hex(token));
  if (!rec || rec->kind != "user") {
    return absl::UnauthenticatedError("the token is not valid (unknown or revoked); " + HowToGetAToken());
  }
  const auto user = store_.GetUser(rec->subject);
  if (!user) return absl::UnauthenticatedError("the token's user '" + rec->subject + "' no longer exists");
  return Caller{user->name, user->admin, false, user->max_jobs, user->max_slots};
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::ServerContextBase& ctx) const {
  const auto& md = ctx.client_metadata();
  if (require_client_cert_) {
    const auto auth = ctx.auth_context();
    const auto in_process = md.find(kInProcessKey);
    const bool verified_by_https =
        in_process != md.end() && in_process->second.size() == in_process_secret_.size() &&
        CRYPTO_memcmp(in_process->second.data(), in_process_secret_.data(), in_process_secret_.size()) == 0;
    if (!verified_by_https && (!auth || !auth->IsPeerAuthenticated())) {
      return absl::UnauthenticatedError(
          "this controller requires a client certificate signed by its --tls-client-ca (dsv3ctl --tls-cert FILE "
          "--tls-key FILE)");
    }
  }
  std::string token;
  if (auto it = md.find("authorization"); it != md.end()) {
    token.assign(it->second.data(), it->second.size());
    if (token.rfind(kBearer, 0) != 0) {
      return absl::UnauthenticatedError("authorization metadata must be 'Bearer TOKEN'");
    }
    token.erase(0, std::string(kBearer).size());
  }
  if (!token.empty()) return AuthenticateToken(token);
  const int64_t users = store_.CountUsers();
  if (trust_local_ && users == 0) return Caller{local_user_, true, true, 0, 0};
  if (users == 0) {
    return absl::UnauthenticatedError(
        "no token, and this controller listens beyond loopback, where it trusts nobody without one; it has no users "
        "yet: on its host run `dsv3d user add NAME` and `dsv3d token create NAME`");
  }
  return absl::UnauthenticatedError("no token: " + HowToGetAToken());
}

void CallRegistry::Set(const grpc::ServerContextBase* ctx, absl::StatusOr<Caller> caller) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.insert_or_assign(ctx, std::move(caller));
}

void CallRegistry::Erase(const grpc::ServerContextBase* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.erase(ctx);
}

absl::StatusOr<Caller> CallRegistry::Find(const grpc::ServerContextBase* ctx) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = calls_.find(ctx);
  if (it == calls_.end()) return absl::UnauthenticatedError("the call was not authenticated");
  return it->second;
}

grpc::experimental::Interceptor* AuthInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const std::string method = info->method() != nullptr ? info->method() : "";
  if (method.rfind(kControllerPrefix, 0) != 0) return nullptr;
  return new AuthInterceptor(auth_, registry_, info->server_context());
}

}  // namespace dsv3::server
