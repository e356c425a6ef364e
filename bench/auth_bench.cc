// What security costs a dsv3ctl call, against a real dsv3d on loopback in four setups:
//   trusted   loopback, no users (the quickstart): no token, plaintext
//   token     loopback with users: a bearer token on every call (a SHA-256 and a store lookup)
//   tls       TLS (deploy/gen-certs.sh certificates) and a token
//   mtls      TLS with a client certificate and a token
// For each: the latency of WhoAmI and of GetJob for a job that is not the caller's
// (PERMISSION_DENIED, the ownership check included) on one warm connection, p50/p99 over
// --calls sequential calls, and the time to open a new connection and make its first call
// (the TLS handshake), median of --connects. Prints figures only.
//
//   auth_bench [--calls 2000] [--connects 50]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "dsv3/procs/command.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = dsv3::v1;
using dsv3::test::Child;
using dsv3::test::ReadFile;
using dsv3::test::WaitFor;
using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point start) { return std::chrono::duration<double, std::milli>(Clock::now() - start).count(); }

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

std::string LastWord(const std::string& text) {
  const auto end = text.find_last_not_of(" \n");
  const auto start = text.find_last_of(" \n", end);
  return text.substr(start + 1, end - start);
}

struct Setup {
  std::string name;
  std::vector<std::string> flags;
  bool token = false, tls = false, client_cert = false;
};

}  // namespace

int main(int argc, char** argv) {
  int calls = 2000, connects = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--calls") calls = std::stoi(v);
    else if (k == "--connects") connects = std::stoi(v);
    else {
      std::cerr << "usage: auth_bench [--calls 2000] [--connects 50]\n";
      return 2;
    }
  }
  const fs::path root = fs::temp_directory_path() / ("dsv3-auth-bench-" + std::to_string(getpid()));
  const fs::path pki = root / "pki";
  fs::create_directories(root);
  const auto made = dsv3::procs::RunCommand(
      {std::string(DSV3_SOURCE_DIR) + "/deploy/gen-certs.sh", pki.string(), "--client", "bench"},
      std::chrono::seconds(60));
  if (!made.ok()) {
    std::cerr << made.Describe("gen-certs.sh") << "\n";
    return 1;
  }
  const std::vector<std::string> tls = {"--tls-cert", (pki / "server.pem").string(), "--tls-key",
                                        (pki / "server.key").string()};
  std::vector<std::string> mtls = tls;
  mtls.insert(mtls.end(), {"--tls-client-ca", (pki / "ca.pem").string()});
  const std::vector<Setup> setups = {{"trusted", {}, false, false, false},
                                     {"token", {}, true, false, false},
                                     {"tls", tls, true, true, false},
                                     {"mtls", mtls, true, true, true}};
  std::printf("%-8s %11s %11s %13s %13s %14s\n", "setup", "whoami p50", "whoami p99", "denied p50", "denied p99",
              "new conn p50");
  for (const Setup& s : setups) {
    const fs::path state = root / s.name;
    fs::create_directories(state);
    std::string token;
    if (s.token) {
      dsv3::procs::RunCommand({DSV3D_PATH, "user", "add", "bench", "--state-dir", state.string()},
                               std::chrono::seconds(30));
      token = LastWord(dsv3::procs::RunCommand({DSV3D_PATH, "token", "create", "bench", "--state-dir", state.string()},
                                                std::chrono::seconds(30))
                           .out);
    }
    std::vector<std::string> args = {DSV3D_PATH, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                                     "--state-dir", state.string(), "--worker", DSV3_WORKER_PATH};
    args.insert(args.end(), s.flags.begin(), s.flags.end());
    Child d(args, state / "dsv3d.log");
    if (!WaitFor([&] { return !ReadFile(state / "dsv3d.json").empty(); }, std::chrono::seconds(30))) {
      std::printf("%-8s dsv3d did not start: %s\n", s.name.c_str(), ReadFile(state / "dsv3d.log").c_str());
      continue;
    }
    const std::string address = nlohmann::json::parse(ReadFile(state / "dsv3d.json"))["grpc"];
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (s.tls) {
      grpc::SslCredentialsOptions o;
      o.pem_root_certs = ReadFile(pki / "ca.pem");
      if (s.client_cert) {
        o.pem_cert_chain = ReadFile(pki / "bench.pem");
        o.pem_private_key = ReadFile(pki / "bench.key");
      }
      creds = grpc::SslCredentials(o);
    }
    // Each channel its own connection, so a new channel pays the whole handshake.
    const auto channel = [&](int id) {
      grpc::ChannelArguments a;
      a.SetInt("dsv3.bench.connection", id);
      return v1::Controller::NewStub(grpc::CreateCustomChannel(address, creds, a));
    };
    const auto who = [&](v1::Controller::Stub& stub) {
      grpc::ClientContext ctx;
      if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
      v1::WhoAmIResponse r;
      return stub.WhoAmI(&ctx, v1::WhoAmIRequest{}, &r);
    };
    auto stub = channel(0);
    if (grpc::Status st = who(*stub); !st.ok()) {
      std::printf("%-8s WhoAmI failed: %s\n", s.name.c_str(), st.error_message().c_str());
      continue;
    }
    std::vector<double> whoami, denied, connect;
    for (int i = 0; i < calls; ++i) {
      const auto t = Clock::now();
      who(*stub);
      whoami.push_back(Ms(t));
    }
    for (int i = 0; i < calls; ++i) {
      grpc::ClientContext ctx;
      if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
      v1::GetJobRequest req;
      req.set_job_id(1000000 + i);
      v1::Job job;
      const auto t = Clock::now();
      stub->GetJob(&ctx, req, &job);
      denied.push_back(Ms(t));
    }
    for (int i = 0; i < connects; ++i) {
      const auto t = Clock::now();
      auto fresh = channel(i + 1);
      who(*fresh);
      connect.push_back(Ms(t));
    }
    std::printf("%-8s %8.3f ms %8.3f ms %10.3f ms %10.3f ms %11.3f ms\n", s.name.c_str(), Quantile(whoami, 0.5),
                Quantile(whoami, 0.99), Quantile(denied, 0.5), Quantile(denied, 0.99), Quantile(connect, 0.5));
  }
  fs::remove_all(root);
  return 0;
}
