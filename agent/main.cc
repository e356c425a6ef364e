// dsv3-agent: the node agent of a static host list (agent.h says what it does). This file
// reads its flags and credential and runs it until SIGTERM or SIGINT.
//
//   dsv3-agent --controller HOST:PORT --name NAME --slots N [--advertise HOST]
//              [--token-file FILE | env DSV3_AGENT_TOKEN] [--work-dir DIR]
//              [--tls-ca FILE [--tls-cert FILE --tls-key FILE]]
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "agent.h"
#include "cli_docs.h"
#include "dsv3/common/build_info.h"
#include "dsv3/common/env.h"
#include "dsv3/procs/client_tls.h"
#include "dsv3/procs/host.h"
#include "dsv3/procs/log.h"

namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_stop{false};
void OnStop(int) { g_stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  std::string controller, name, advertise, token_file, work_dir, tls_ca, tls_cert, tls_key;
  int slots = 0;
  CLI::App app{"dsv3-agent: runs dsv3 ranks on this host for a dsv3d with --allocator static", "dsv3-agent"};
  app.set_config("--config", "", "TOML file with any of these options as keys (controller = \"host:50051\")");
  app.add_option("--controller", controller, "dsv3d's gRPC address HOST:PORT")->required();
  app.add_option("--name", name, "This host's name among the controller's agents (default: the hostname)");
  app.add_option("--slots", slots, "Ranks this host may run at once (GPUs, or CPU processes)")->required();
  app.add_option("--advertise", advertise, "Address other hosts reach this one at (default: the hostname)");
  app.add_option("--token-file", token_file,
                 "File whose last word is this agent's credential (the output of `dsv3d agent add NAME` on the "
                 "controller host); or set DSV3_AGENT_TOKEN");
  app.set_version_flag("--version", dsv3::VersionLine("dsv3-agent"),
                       "Print the version, the commit and the build's options");
  app.add_flag_callback("--man", [&app] {
       std::cout << dsv3::cli::ManPage(app, dsv3::GetBuildInfo().version,
                                       "0 when stopped by SIGTERM or SIGINT; 1 when the controller refuses this agent; "
                                       "2 a bad command line or credential.");
       throw CLI::Success();
     })
      ->group("");
  app.add_option("--tls-ca", tls_ca, "PEM CA that verifies a TLS controller (its ranks here use it too)");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate, for a controller that asks for one");
  app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
  app.add_option("--work-dir", work_dir, "Where rank output is spooled (default: /tmp/dsv3-agent-NAME)");
  int64_t max_rank_log_bytes = int64_t{1} << 30;
  app.add_option("--max-rank-log-bytes", max_rank_log_bytes,
                 "Ranks' logs past this size move to <log>.1 and start over (0 = no cap)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  std::string log_level = "info", log_format = "text";
  app.add_option("--log-level", log_level, std::string("Least severe messages logged: ") + dsv3::log::kLevels)
      ->capture_default_str();
  app.add_option("--log-format", log_format, "text (one line per message) or json (one object per line)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (const std::string problem = dsv3::log::Setup("dsv3-agent", log_level, log_format); !problem.empty()) {
    std::cerr << "dsv3-agent: " << problem << std::endl;
    return 2;
  }
  if (name.empty()) name = dsv3::procs::HostName();
  if (advertise.empty()) advertise = dsv3::procs::HostName();
  if (slots < 1) {
    std::cerr << "dsv3-agent: --slots " << slots << " must be >= 1" << std::endl;
    return 2;
  }
  std::string token;
  if (!token_file.empty()) {
    std::ifstream f(token_file);
    for (std::string word; f >> word;) token = word;
    if (token.empty()) {
      std::cerr << "dsv3-agent: --token-file: cannot read a credential from " << token_file << std::endl;
      return 2;
    }
  } else if (const char* t = std::getenv(dsv3::env::kAgentToken); t != nullptr && *t != '\0') {
    token = t;
  } else {
    std::cerr << "dsv3-agent: no credential: on the controller host run `dsv3d agent add " << name
              << "` and give its output to --token-file (or set DSV3_AGENT_TOKEN)" << std::endl;
    return 2;
  }
  auto credentials = dsv3::procs::MakeClientCredentials({tls_ca, tls_cert, tls_key, false});
  if (!credentials.ok()) {
    std::cerr << "dsv3-agent: " << credentials.status().message() << std::endl;
    return 2;
  }
  if (!tls_ca.empty()) tls_ca = fs::absolute(tls_ca).string();
  if (work_dir.empty()) work_dir = "/tmp/dsv3-agent-" + name;
  std::error_code ec;
  fs::create_directories(work_dir + "/logs", ec);
  if (ec) {
    std::cerr << "dsv3-agent: --work-dir: cannot create " << work_dir << "/logs: " << ec.message() << std::endl;
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int status = dsv3::agent::RunAgent(
      {controller, name, slots, advertise, token, work_dir, *credentials, tls_ca, max_rank_log_bytes}, g_stop);
  dsv3::log::Info(name + " stopped");
  return status;
}
