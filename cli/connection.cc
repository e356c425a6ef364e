#include "connection.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dsv3/common/env.h"
#include "dsv3/procs/client_tls.h"

namespace dsv3::cli {
namespace {

namespace fs = std::filesystem;
constexpr const char* kDefaultController = "localhost:50051";

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

nlohmann::json LoadAll() {
  std::ifstream f(CredentialsPath());
  if (!f) return nlohmann::json::object();
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    return j.is_object() ? j : nlohmann::json::object();
  } catch (const std::exception&) {
    return nlohmann::json::object();
  }
}

std::optional<SavedLogin> FromJson(const nlohmann::json& all, const std::string& controller) {
  if (!all.contains("controllers") || !all["controllers"].is_object() || !all["controllers"].contains(controller)) {
    return std::nullopt;
  }
  const auto& c = all["controllers"][controller];
  SavedLogin l;
  l.controller = controller;
  l.token = c.value("token", "");
  l.tls_ca = c.value("tls_ca", "");
  l.tls = c.value("tls", false);
  return l;
}

}  // namespace

void ConnectionFlags::Add(CLI::App& verb) {
  verb.add_option("--controller", controller,
                  "dsv3d address HOST:PORT (default: $DSV3_CONTROLLER, else the last `dsv3ctl login`, else "
                  "localhost:50051)");
  verb.add_option("--token", token, "Bearer token (default: $DSV3_TOKEN, else the one `dsv3ctl login` saved)");
  verb.add_option("--tls-ca", tls_ca, "PEM CA that verifies the controller (default: $DSV3_TLS_CA); implies TLS");
  verb.add_flag("--tls", tls, "TLS verified against the system's CA store");
  verb.add_option("--tls-cert", tls_cert, "PEM client certificate, for a controller that asks for one (mTLS)");
  verb.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
}

std::string CredentialsPath() {
  std::string base = Env(env::kXdgConfigHome);
  if (base.empty()) base = Env(env::kHome).empty() ? "." : Env(env::kHome) + "/.config";
  return base + "/dsv3/credentials.json";
}

std::optional<SavedLogin> LoadLogin(const std::string& controller) { return FromJson(LoadAll(), controller); }

std::optional<SavedLogin> LoadDefaultLogin() {
  const nlohmann::json all = LoadAll();
  if (!all.contains("default") || !all["default"].is_string()) return std::nullopt;
  return FromJson(all, all["default"].get<std::string>());
}

absl::Status SaveLogin(const SavedLogin& login) {
  nlohmann::json all = LoadAll();
  all["controllers"][login.controller] = {{"token", login.token}, {"tls_ca", login.tls_ca}, {"tls", login.tls}};
  all["default"] = login.controller;
  const std::string path = CredentialsPath();
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return absl::UnavailableError("cannot create " + fs::path(path).parent_path().string() + ": " + ec.message());
  fs::permissions(fs::path(path).parent_path(), fs::perms::owner_all, fs::perm_options::replace, ec);
  // Written whole under a temporary name created 0600, then renamed: the token is never
  // readable by others, not even for a moment.
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError("cannot write " + tmp);
  const std::string text = all.dump(2) + "\n";
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  fchmod(fd, 0600);
  close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::UnavailableError("cannot write " + path);
  }
  return absl::OkStatus();
}

absl::StatusOr<Connection> Connect(const ConnectionFlags& f) {
  Connection c;
  std::optional<SavedLogin> saved;
  c.address = !f.controller.empty() ? f.controller : Env(env::kController);
  if (c.address.empty()) {
    saved = LoadDefaultLogin();
    c.address = saved ? saved->controller : kDefaultController;
  } else {
    saved = LoadLogin(c.address);
  }
  c.token = !f.token.empty() ? f.token : !Env(env::kToken).empty() ? Env(env::kToken) : saved ? saved->token : "";
  procs::ClientTlsFiles tls;
  tls.ca = !f.tls_ca.empty() ? f.tls_ca : Env(env::kTlsCa);
  tls.tls = f.tls;
  tls.cert = f.tls_cert;
  tls.key = f.tls_key;
  if (!procs::WantsTls(tls) && saved) {  // what login saved for this controller
    tls.ca = saved->tls_ca;
    tls.tls = saved->tls;
  }
  auto credentials = procs::MakeClientCredentials(tls);
  if (!credentials.ok()) return credentials.status();
  c.credentials = *credentials;
  c.tls = procs::WantsTls(tls);
  return c;
}

void Authorize(grpc::ClientContext& rpc, const Connection& c) {
  if (!c.token.empty()) rpc.AddMetadata("authorization", "Bearer " + c.token);
}

}  // namespace dsv3::cli
